# The harness as a Python package, and the Python environment every app and the dev shell use.
# `pkgs` is nixpkgs imported with config.cudaSupport and config.allowUnfree (see flake.nix), so torch
# and triton here are the CUDA builds, served by the CUDA binary cache named in flake.nix's nixConfig.
{ pkgs, src }:

let
  ps = pkgs.python3Packages;
  pyproject = builtins.fromTOML (builtins.readFile (src + "/pyproject.toml"));

  harness = ps.buildPythonPackage {
    pname = "speedrun-harness";
    version = pyproject.project.version;
    inherit src;
    pyproject = true;
    build-system = [ ps.setuptools ];
    # pyproject.toml's [project] dependencies
    dependencies = [ ps.torch ps.scipy ps.rich ps.nvidia-ml-py ps.matplotlib ps.huggingface-hub ];
    pythonImportsCheck = [ "harness" ];
    # the test suite runs from the checkout (make test / flake check `driver-wrapper`), not at build time
    doCheck = false;
  };
in
{
  inherit harness;

  # What the harness, the tracks (torch.compile, Triton kernels, NVML telemetry) and the tests import.
  pythonEnv = pkgs.python3.withPackages (p: [
    harness
    p.torch
    p.triton
    p.scipy
    p.numpy
    p.rich
    p.nvidia-ml-py
    p.matplotlib
    p.huggingface-hub
    p.pytest
    p.pytest-benchmark
  ]);
}
