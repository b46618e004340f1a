# The few nixpkgs `lib` functions the speedrun flake and its NixOS module use, with nixpkgs' meaning.
# Options and module priorities are plain attribute sets here, so that tests can read them back.
rec {
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  filterAttrs = pred: set:
    builtins.listToAttrs (builtins.concatMap
      (name: if pred name set.${name} then [{ inherit name; value = set.${name}; }] else [ ])
      (builtins.attrNames set));
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: set: if cond then set else { };
  makeBinPath = pkgs: builtins.concatStringsSep ":" (map (p: "${p}/bin") pkgs);
  escapeShellArg = s: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  versions.major = v: builtins.head (builtins.splitVersion v);

  # module system pieces (nixpkgs: lib/options.nix, lib/modules.nix)
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption { default = false; description = "Whether to enable ${name}."; type = types.bool; };
  mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
  mkForce = content: { _type = "override"; priority = 50; inherit content; };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };
  types = {
    bool = "bool";
    str = "str";
    package = "package";
    nullOr = t: "null or ${t}";
  };
}
