# NixOS module for a node that runs speedrun campaigns (e.g. a rented 8×H100 SXM node installed with NixOS).
#
# It pins the NVIDIA datacenter driver to the version the tracks' [pins] name (tracks/*/track.toml), so
# a campaign's environment fingerprint matches the record environment, and turns on what a headless
# multi-GPU node needs: the persistence daemon (keeps the driver loaded between runs, so the first run
# of a campaign is not slower), the fabric manager (NVSwitch on SXM nodes), /run/opengl-driver/lib
# (where nixpkgs' CUDA programs find libcuda), and the CUDA binary cache.
#
# Use (flake-based system):  modules = [ speedrun.nixosModules.gpu-node ];
{ driverVersion }:

{ config, lib, ... }:

let
  cfg = config.speedrun.gpuNode;
  nvidiaPackages = config.boot.kernelPackages.nvidiaPackages;
  # nixpkgs keeps one datacenter driver per branch: dc_570, dc_580, ...
  branch = "dc_${lib.versions.major cfg.driverVersion}";
  pinnedPackage =
    if !(builtins.hasAttr branch nvidiaPackages) then
      throw ("speedrun.gpuNode: the pinned driver ${cfg.driverVersion} needs nvidiaPackages.${branch},"
        + " which this nixpkgs does not have; set speedrun.gpuNode.driverPackage"
        + " (e.g. nvidiaPackages.mkDriver { version = \"${cfg.driverVersion}\"; ... })")
    else if nvidiaPackages.${branch}.version != cfg.driverVersion then
      throw ("speedrun.gpuNode: the pinned driver is ${cfg.driverVersion} but this nixpkgs' ${branch} is"
        + " ${nvidiaPackages.${branch}.version}; pin nixpkgs to a revision with ${cfg.driverVersion},"
        + " or set speedrun.gpuNode.driverPackage (nvidiaPackages.mkDriver)")
    else
      nvidiaPackages.${branch};
in
{
  options.speedrun.gpuNode = {
    driverVersion = lib.mkOption {
      type = lib.types.str;
      default = driverVersion;
      description = "NVIDIA driver version of the record environment (the tracks' [pins] driver).";
    };
    driverPackage = lib.mkOption {
      type = lib.types.package;
      default = pinnedPackage;
      defaultText = lib.literalExpression
        "config.boot.kernelPackages.nvidiaPackages.dc_<major>, checked to be driverVersion";
      description = "The NVIDIA driver package; its version must equal driverVersion.";
    };
  };

  config = {
    assertions = [{
      assertion = cfg.driverPackage.version == cfg.driverVersion;
      message = "speedrun.gpuNode: driverPackage is ${cfg.driverPackage.version}, the pins say ${cfg.driverVersion}";
    }];

    # The driver is unfree.
    nixpkgs.config.allowUnfree = lib.mkDefault true;

    hardware.nvidia = {
      package = cfg.driverPackage;
      # Headless datacenter driver; also runs nvidia-fabricmanager, which NVSwitch (SXM) nodes need.
      datacenter.enable = true;
      nvidiaPersistenced = true;
      # NVIDIA's recommended kernel modules for Hopper; nixpkgs requires a choice for drivers >= 560.
      open = lib.mkDefault true;
    };
    # Provides /run/opengl-driver/lib, where nixpkgs' CUDA torch, Triton and NVML look for the driver.
    hardware.graphics.enable = lib.mkDefault true;

    nix.settings = {
      extra-substituters = [ "https://cache.nixos-cuda.org" ];
      extra-trusted-public-keys = [ "cache.nixos-cuda.org:74DUi4Ye579gUqzH4ziL9IyiJBlDpMRn9MBN8oNan9M=" ];
    };
  };
}
