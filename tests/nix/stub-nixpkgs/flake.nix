# A small stand-in for nixpkgs, for offline tests of the speedrun flake only (see default.nix).
# The tests pass it with `--override-input nixpkgs path:<this folder>`; nothing else uses it.
{
  description = "stub nixpkgs for the speedrun flake's offline tests (not nixpkgs)";
  outputs = { self }: {
    lib = import ./lib.nix;
  };
}
