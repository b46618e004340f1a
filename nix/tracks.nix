# The tracks, read from tracks/<name>/track.toml at evaluation time: every folder with a track.toml
# becomes an app, so a new track (medium) needs no change here.
{ tracksDir }:

let
  entries = builtins.readDir tracksDir;
  isTrack = name:
    entries.${name} == "directory" && builtins.pathExists (tracksDir + "/${name}/track.toml");
  names = builtins.filter isTrack (builtins.attrNames entries);
  tomls = builtins.listToAttrs (map
    (name: { inherit name; value = builtins.fromTOML (builtins.readFile (tracksDir + "/${name}/track.toml")); })
    names);

  # The NVIDIA driver version the tracks' [pins] name. Tracks run on the same nodes, so they must agree.
  driverPins = builtins.filter (v: v != null)
    (map (name: (tomls.${name}.pins or { }).driver or null) names);
  uniquePins = builtins.foldl' (acc: v: if builtins.elem v acc then acc else acc ++ [ v ]) [ ] driverPins;
in
{
  inherit names tomls;

  # Whether a track's runs need a GPU (track.toml `uses_gpu`, true unless said otherwise).
  usesGpu = name: tomls.${name}.uses_gpu or true;

  driverVersion =
    if uniquePins == [ ] then
      throw "speedrun: no track pins a driver ([pins] driver = \"...\" in tracks/<name>/track.toml)"
    else if builtins.length uniquePins > 1 then
      throw "speedrun: the tracks pin different drivers: ${toString uniquePins}"
    else
      builtins.head uniquePins;
}
