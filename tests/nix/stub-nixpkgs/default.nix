# A stub of nixpkgs for offline tests of the speedrun flake. It is NOT nixpkgs and builds nothing real:
# the real nixpkgs cannot be fetched here, and current nixpkgs needs Nix >= 2.18 to evaluate.
#
# It keeps nixpkgs' interface for exactly what the flake uses, and is honest about what it was given:
#   - `import stub { system; config; }` records the config; `pkgs.config` reads it back, every python
#     environment bakes it in, and the CUDA torch refuses to evaluate without allowUnfree, as in nixpkgs;
#   - python3.withPackages gives a `python` that records its argv, environment and working folder
#     (python.sh), so a test can see the exact command an app ends in;
#   - buildPythonPackage copies the package's sources, so a source filter that drops them fails;
#   - writeShellApplication writes the same script nixpkgs writes (errexit, nounset, pipefail,
#     runtimeInputs on PATH) and runs shellcheck on it when the host has shellcheck, as nixpkgs does.
# Builds run the host's /bin/sh and tools: the tests run Nix with `sandbox = false`.
{ system ? builtins.currentSystem, config ? { }, overlays ? [ ], ... }:

let
  lib = import ./lib.nix;

  # nixpkgs' defaults for the two settings the flake must turn on.
  effectiveConfig = { cudaSupport = false; allowUnfree = false; } // config;

  hostPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

  build = name: script: attrs:
    derivation ({
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" script ];
      PATH = hostPath;
    } // attrs);

  # Tools of the host, linked into a store path, standing in for nixpkgs packages of the same name.
  hostTools = name: tools:
    build name ''
      set -e
      mkdir -p "$out/bin"
      for tool in ${toString tools}; do
        if p="$(command -v "$tool")"; then ln -s "$p" "$out/bin/$tool"; fi
      done
    '' { };

  refuseUnfree = pname:
    throw ("stub nixpkgs: Package ‘${pname}’ has an unfree license (‘CUDA EULA’), refusing to evaluate."
      + " (set config.allowUnfree = true, as in nixpkgs)");

  # One python package: a store path that names itself and the CUDA setting it was built with.
  pythonPackage = pname: { unfree ? false }:
    if unfree && !effectiveConfig.allowUnfree then refuseUnfree pname else
    (build "python3.13-${pname}-stub" ''
      set -e
      mkdir -p "$out/stub"
      printf '%s' "$pname" > "$out/stub/pname"
      printf '%s' "$cudaSupport" > "$out/stub/cudaSupport"
    '' {
      inherit pname;
      cudaSupport = if effectiveConfig.cudaSupport then "1" else "0";
    }) // {
      inherit pname;
      cudaSupport = effectiveConfig.cudaSupport;
    };

  python3Packages = {
    # CUDA torch depends on the unfree CUDA libraries: nixpkgs refuses it without allowUnfree.
    torch = pythonPackage "torch" { unfree = effectiveConfig.cudaSupport; };
    triton = pythonPackage "triton" { };
    scipy = pythonPackage "scipy" { };
    numpy = pythonPackage "numpy" { };
    rich = pythonPackage "rich" { };
    nvidia-ml-py = pythonPackage "nvidia-ml-py" { };
    matplotlib = pythonPackage "matplotlib" { };
    huggingface-hub = pythonPackage "huggingface-hub" { };
    pytest = pythonPackage "pytest" { };
    pytest-benchmark = pythonPackage "pytest-benchmark" { };
    setuptools = pythonPackage "setuptools" { };

    buildPythonPackage = { pname, version, src, dependencies ? [ ], build-system ? [ ], ... }@args:
      (build "python3.13-${pname}-${version}" ''
        set -e
        test -f "$src/pyproject.toml" || { echo "stub buildPythonPackage: no pyproject.toml in $src" >&2; exit 1; }
        mkdir -p "$out/stub"
        for module in $modules; do
          test -d "$src/$module" || { echo "stub buildPythonPackage: $module/ missing from $src" >&2; exit 1; }
          cp -r "$src/$module" "$out/stub/"
        done
        printf '%s' "$pname" > "$out/stub/pname"
      '' {
        inherit pname version src;
        modules = toString (args.pythonImportsCheck or [ ]);
        deps = map (d: d.pname) dependencies;
      }) // { inherit pname version dependencies; };
  };

  python3 = {
    pkgs = python3Packages;
    withPackages = choose:
      let
        chosen = choose python3Packages;
        names = map (p: p.pname) chosen;
      in
      (build "python3-3.13-env" ''
        set -e
        mkdir -p "$out/bin"
        {
          echo '#!/bin/sh'
          printf "STUB_PACKAGES='%s'\n" "$packageNames"
          printf "STUB_CONFIG='%s'\n" "$nixpkgsConfig"
          echo ". $body"
        } > "$out/bin/python"
        chmod +x "$out/bin/python"
        ln -s python "$out/bin/python3"
      '' {
        packageNames = toString names;
        nixpkgsConfig = builtins.toJSON effectiveConfig;
        body = ./python.sh;
      }) // {
        packages = names;
        config = effectiveConfig;
      };
  };

  writeShellApplication = { name, text, runtimeInputs ? [ ], ... }:
    build name ''
      set -e
      mkdir -p "$out/bin"
      {
        echo '#!/bin/bash'
        echo 'set -o errexit'
        echo 'set -o nounset'
        echo 'set -o pipefail'
        if [ -n "$binPath" ]; then
          printf 'export PATH="%s:$PATH"\n' "$binPath"
        fi
        cat "$textPath"
      } > "$out/bin/$name"
      chmod +x "$out/bin/$name"
      if command -v shellcheck >/dev/null; then
        shellcheck "$out/bin/$name"
      fi
    '' {
      inherit text;
      passAsFile = [ "text" ];
      binPath = lib.makeBinPath runtimeInputs;
    };

  coreutils = hostTools "coreutils-stub" [
    "basename" "cat" "cut" "dirname" "env" "id" "ln" "mkdir" "mktemp" "mv" "readlink" "rm"
    "sha256sum" "uname" "ls" "find" "sort" "wc" "date" "tee" "head" "tail" "tr"
  ];

  ccStub = hostTools "gcc-wrapper-stub" [ "cc" "gcc" "c++" "g++" ];

  pkgs = {
    inherit lib system python3 python3Packages writeShellApplication coreutils;
    config = effectiveConfig;
    bashInteractive = hostTools "bash-stub" [ "bash" ];
    gnugrep = hostTools "gnugrep-stub" [ "grep" ];
    cudaPackages.backendStdenv.cc = ccStub;
    stdenv.cc = ccStub;

    runCommand = name: env: script: build name script env;

    mkShell = { packages ? [ ], shellHook ? "", ... }@args:
      build "nix-shell" ''
        set -e
        mkdir -p "$out"
        printf '%s' "$shellHook" > "$out/shellHook"
      '' { inherit shellHook; packageNames = toString (map (p: p.name) packages); };
  };
in
pkgs
