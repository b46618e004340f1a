{
  description = "speedrun: reproducible, verifiable benchmark harness for the NanoGPT speedrun";

  # CUDA builds of torch and triton come from the CUDA maintainers' cache, not from cache.nixos.org.
  nixConfig = {
    extra-substituters = [ "https://cache.nixos-cuda.org" ];
    extra-trusted-public-keys = [ "cache.nixos-cuda.org:74DUi4Ye579gUqzH4ziL9IyiJBlDpMRn9MBN8oNan9M=" ];
  };

  # nixos-26.05, the revision the CUDA maintainers' infrastructure builds (and caches) CUDA packages for.
  # rev and narHash are repeated in flake.lock; tests/test_nix.py checks that they agree.
  inputs.nixpkgs = {
    type = "github";
    owner = "NixOS";
    repo = "nixpkgs";
    rev = "44b530598435148b317ff8ddad91cd138108929f";
    narHash = "sha256-DnjLEsXUYn23wzY4FgLRApfDGkQs/Ek4iDuvFV1d9vg=";
  };

  outputs = { self, nixpkgs }:
    let
      # H100 nodes are x86_64; nixpkgs' CUDA packages are built for it.
      system = "x86_64-linux";

      # The two settings CUDA torch needs: build with CUDA, and accept the CUDA (unfree) licence.
      nixpkgsConfig = { cudaSupport = true; allowUnfree = true; };
      pkgs = import nixpkgs { inherit system; config = nixpkgsConfig; };

      root = toString ./.;
      # What the Python package and the checks need from this repository (not results/, .venv, ...).
      src = builtins.path {
        name = "speedrun-source";
        path = ./.;
        filter = path: type:
          let
            rel = builtins.substring (builtins.stringLength root + 1) (builtins.stringLength (toString path)) (toString path);
            top = builtins.head (builtins.split "/" rel);
            base = baseNameOf (toString path);
          in
          builtins.elem top [ "harness" "tracks" "scripts" "tests" "nix" "pyproject.toml" "README.md" ]
          && base != "__pycache__" && base != ".pytest_cache" && builtins.match ".*\\.pyc" base == null;
      };

      tracks = import ./nix/tracks.nix { tracksDir = ./tracks; };
      inherit (import ./nix/package.nix { inherit pkgs src; }) harness pythonEnv;

      # A compiler for Triton's launcher stubs and torch.compile, when the host has none.
      cc = pkgs.cudaPackages.backendStdenv.cc;

      # An app: expose the host's NVIDIA driver (non-NixOS hosts), find the checkout, run the harness.
      # driver: "required" (GPU tracks: no driver is an error) or "optional".
      # fallback: a folder to use when not started inside a checkout ("" for none).
      mkApp = { name, description, driver, fallback ? "", body }:
        let
          script = pkgs.writeShellApplication {
            name = "speedrun-${name}";
            runtimeInputs = [ pkgs.coreutils ];
            text = ''
              # shellcheck source=/dev/null
              source ${./nix/host-driver-libs.sh}
              # shellcheck source=/dev/null
              source ${./nix/checkout-root.sh}
              speedrun_expose_host_driver ${driver} || exit 1
              root="$(speedrun_checkout_root ${pkgs.lib.escapeShellArg fallback})" || exit 1
              # The checkout's harness comes first on the path: results are written next to it.
              export PYTHONPATH="$root''${PYTHONPATH:+:$PYTHONPATH}"
              export CC="''${CC:-${cc}/bin/cc}"
              ${body}
            '';
          };
        in
        { type = "app"; program = "${script}/bin/speedrun-${name}"; meta.description = description; };

      harnessCommand = args: ''exec ${pythonEnv}/bin/python -m harness ${pkgs.lib.escapeShellArgs args} "$@"'';

      trackApps = builtins.listToAttrs (map
        (name: {
          inherit name;
          value = mkApp {
            inherit name;
            description = "speedrun run ${name}: a campaign of the ${name} track";
            driver = if tracks.usesGpu name then "required" else "optional";
            body = harnessCommand [ "run" name ];
          };
        })
        tracks.names);
    in
    {
      packages.${system} = {
        default = pythonEnv;
        inherit harness pythonEnv;
      };

      # The configured nixpkgs (CUDA, unfree): `nix build .#legacyPackages.x86_64-linux.python3Packages.torch`.
      legacyPackages.${system} = pkgs;

      # `nix run .#<track> -- --runs 8` for every tracks/<name>/, plus verification and CI.
      apps.${system} = trackApps // rec {
        verify-record = mkApp {
          name = "verify-record";
          description = "speedrun verify PATH: recompute a record's claims from its logs";
          driver = "optional";
          fallback = "${src}";
          body = harnessCommand [ "verify" ];
        };
        speedrun = mkApp {
          name = "speedrun";
          description = "speedrun: the harness CLI";
          driver = "optional";
          body = harnessCommand [ ];
        };
        default = speedrun;
        # GPU tests with kernel benchmarks, then a short smoke campaign of the short track.
        ci-gpu = mkApp {
          name = "ci-gpu";
          description = "GPU CI: GPU tests, kernel benchmarks, smoke campaign of the short track";
          driver = "required";
          body = ''
            cd "$root"
            export PYTHON=${pythonEnv}/bin/python
            exec bash scripts/ci-gpu.sh "$@"
          '';
        };
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = [ pythonEnv pkgs.coreutils ];
        shellHook = ''
          source ${./nix/host-driver-libs.sh}
          speedrun_expose_host_driver optional
          export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
          export CC="''${CC:-${cc}/bin/cc}"
        '';
      };

      nixosModules.gpu-node = import ./nix/gpu-node.nix { inherit (tracks) driverVersion; };

      checks.${system} = {
        # The environment imports everything the harness and the tracks use.
        python-env = pkgs.runCommand "speedrun-python-env-check" { } ''
          ${pythonEnv}/bin/python -c "import harness, torch, triton, scipy, rich, pynvml, huggingface_hub, pytest_benchmark"
          mkdir -p $out
        '';
        # The driver wrapper's tests, against fake driver folders (no GPU needed).
        driver-wrapper = pkgs.runCommand "speedrun-driver-wrapper-check" { } ''
          cd ${src}
          HOME=$TMPDIR ${pythonEnv}/bin/python -m pytest -q -p no:cacheprovider tests/test_driver_wrapper.py
          mkdir -p $out
        '';
      };
    };
}
