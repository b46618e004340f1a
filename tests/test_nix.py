"""The Nix flake, checked offline with Nix (Debian's nix-bin 2.8 in CI) against the stub nixpkgs in tests/nix.

What runs here: every .nix file parses; flake.nix and flake.lock pin the same nixpkgs; the lock is consistent
without fetching; `nix flake check` passes; the apps follow tracks/ and end in the right harness command with
CUDA and unfree on; the driver wrapper and checkout search work inside the built apps; the NixOS module pins
the driver the tracks name. What needs a machine with internet (the real nixpkgs, its CUDA cache, the driver
download) is listed in README.md "With Nix".

Skipped when `nix` is not installed (`apt-get install nix-bin`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STUB = REPO / "tests" / "nix" / "stub-nixpkgs"
SYSTEM = "x86_64-linux"
CUDA_CACHE = "https://cache.nixos-cuda.org"
CUDA_CACHE_KEY = "cache.nixos-cuda.org:74DUi4Ye579gUqzH4ziL9IyiJBlDpMRn9MBN8oNan9M="
NEW_TRACK = "zz-new-track"  # added to the copy: a new folder under tracks/ must become an app by itself
NEW_CPU_TRACK = "zz-new-cpu-track"  # added too, with uses_gpu = false (like tiny)



def _nix_unusable() -> str | None:
    """Why Nix cannot build here, or None. Root (CI) owns the single-user store; others need the daemon."""
    if shutil.which("nix") is None:
        return "nix not installed (apt-get install nix-bin)"
    store_writable = os.access("/nix/store", os.W_OK) or (not Path("/nix/store").exists() and os.geteuid() == 0)
    if not store_writable and not Path("/nix/var/nix/daemon-socket/socket").exists():
        return "nix installed, but /nix/store is not writable here and no nix-daemon runs (run as root)"
    return None


pytestmark = pytest.mark.skipif(_nix_unusable() is not None, reason=str(_nix_unusable()))

NIX_CONFIG = "\n".join([
    "experimental-features = nix-command flakes",
    "sandbox = false",
    "build-users-group =",
    "substituters =",
    "flake-registry =",
    "accept-flake-config = false",
    "download-attempts = 1",
    "connect-timeout = 2",
])


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("nix-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPEEDRUN_", "STUB_", "NIX_"))}
    env.update({"NIX_CONFIG": NIX_CONFIG, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")})
    env.pop("LD_LIBRARY_PATH", None)
    env.pop("TRITON_LIBCUDA_PATH", None)
    env.pop("PYTHONPATH", None)
    return env


def _ignore(_dir, names):
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")]


@pytest.fixture(scope="module")
def flake(tmp_path_factory) -> Path:
    """A copy of the flake's files (the repository minus results, venvs, data) plus one new track folder.

    A copy because a flake in a git checkout sees only committed files, and `path:` copies the whole folder.
    """
    dst = tmp_path_factory.mktemp("flake") / "speedrun"
    dst.mkdir()
    for name in ["flake.nix", "flake.lock", "pyproject.toml"]:
        shutil.copy2(REPO / name, dst / name)
    (dst / "README.md").write_text((REPO / "README.md").read_text() if (REPO / "README.md").exists() else "x\n")
    for name in ["nix", "harness", "scripts", "tracks"]:
        shutil.copytree(REPO / name, dst / name, ignore=_ignore)
    (dst / "tests").mkdir()
    shutil.copy2(REPO / "tests" / "test_driver_wrapper.py", dst / "tests" / "test_driver_wrapper.py")
    pins = sorted(driver_pins(dst))
    new = dst / "tracks" / NEW_TRACK
    new.mkdir()
    (new / "track.toml").write_text(
        f'name = "{NEW_TRACK}"\nscript = "train_gpt.py"\nnproc = 8\ntarget = 3.28\n'
        f'[pins]\ndriver = "{pins[0] if pins else "580.159.04"}"\n')
    cpu = dst / "tracks" / NEW_CPU_TRACK
    cpu.mkdir()
    (cpu / "track.toml").write_text(
        f'name = "{NEW_CPU_TRACK}"\nscript = "train_gpt.py"\nnproc = 1\ntarget = 5.0\nuses_gpu = false\n')
    (dst / "tracks" / "not-a-track").mkdir()  # a folder without track.toml is not an app
    return dst


def driver_pins(flake_dir: Path) -> set[str]:
    pins = set()
    for toml in (flake_dir / "tracks").glob("*/track.toml"):
        driver = tomllib.loads(toml.read_text()).get("pins", {}).get("driver")
        if driver:
            pins.add(driver)
    return pins


def nix(args: list[str], env: dict, cwd: Path | None = None, check: bool = True, timeout: int = 120,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    full = dict(env)
    full.update(extra_env or {})
    proc = subprocess.run(["nix", *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"nix {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def stub_args() -> list[str]:
    return ["--override-input", "nixpkgs", f"path:{STUB}", "--no-write-lock-file"]


def nix_eval_json(flake_dir: Path, attr: str, env: dict, apply: str | None = None):
    args = ["eval", "--json", f"path:{flake_dir}#{attr}", *stub_args()]
    if apply:
        args += ["--apply", apply]
    return json.loads(nix(args, env).stdout)


def read_calls(log_dir: Path) -> list[dict]:
    """What the stub python recorded: one dict per call (argv, env, cwd, packages, config, interpreter)."""
    calls = []
    if not log_dir.exists():
        return calls
    for call in sorted(log_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        argv = (call / "argv").read_bytes().split(b"\0")[:-1]
        env_entries = (call / "env").read_bytes().split(b"\0")[:-1]
        calls.append({
            "argv": [a.decode() for a in argv],
            "env": dict(e.decode().split("=", 1) for e in env_entries),
            "cwd": (call / "cwd").read_text(),
            "packages": (call / "packages").read_text().split(),
            "config": json.loads((call / "config").read_text()),
            "interpreter": (call / "interpreter").read_text(),
        })
    return calls


def fake_driver(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for lib in ["libcuda.so", "libnvidia-ml.so"]:
        (folder / f"{lib}.580.159.04").write_text("fake\n")
        (folder / f"{lib}.1").symlink_to(f"{lib}.580.159.04")
    (folder / "libc.so.6").write_text("host libc: must not be exposed\n")
    return folder


def run_app(flake_dir: Path, app: str, args: list[str], env: dict, tmp_path: Path, cwd: Path,
            driver: Path | None = None, host_root: Path | None = None, extra: dict | None = None):
    """`nix run path:<flake>#app -- args` with the stub python recording its calls into tmp_path/calls."""
    log = tmp_path / "calls"
    host = host_root or (tmp_path / "host")
    host.mkdir(exist_ok=True)
    extra_env = {"STUB_PYTHON_LOG": str(log), "SPEEDRUN_HOST_ROOT": str(host), "SPEEDRUN_LDCONFIG": "none",
                 "SPEEDRUN_DRIVER_LINKS": str(tmp_path / "links")}
    if driver is not None:
        extra_env["SPEEDRUN_HOST_DRIVER_DIR"] = str(driver)
    extra_env.update(extra or {})
    proc = nix(["run", f"path:{flake_dir}#{app}", *stub_args(), "--", *args], env, cwd=cwd, check=False,
               extra_env=extra_env)
    return proc, read_calls(log)


# ---- files and pins (plain Nix evaluation, no flake machinery) ----

def test_every_nix_file_parses(nix_env):
    files = [REPO / "flake.nix", *sorted((REPO / "nix").glob("*.nix")), *sorted((REPO / "tests" / "nix").rglob("*.nix"))]
    assert len(files) >= 7
    for f in files:
        proc = subprocess.run(["nix-instantiate", "--parse", str(f)], env=nix_env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{f}: {proc.stderr}"


def flake_attr(expr: str, env: dict):
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"({expr}) (import {REPO}/flake.nix)"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_flake_nix_and_lock_pin_the_same_nixpkgs(nix_env):
    pin = flake_attr("f: f.inputs.nixpkgs", nix_env)
    assert pin["type"] == "github" and (pin["owner"], pin["repo"]) == ("NixOS", "nixpkgs")
    assert re.fullmatch(r"[0-9a-f]{40}", pin["rev"])
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", pin["narHash"])
    lock = json.loads((REPO / "flake.lock").read_text())
    node = lock["nodes"][lock["nodes"][lock["root"]]["inputs"]["nixpkgs"]]
    for key in ("rev", "narHash", "owner", "repo", "type"):
        assert node["locked"][key] == pin[key], key
        assert node["original"][key] == pin[key], key


def test_nix_config_names_the_cuda_cache(nix_env):
    cfg = flake_attr("f: f.nixConfig", nix_env)
    assert CUDA_CACHE in cfg["extra-substituters"]
    assert CUDA_CACHE_KEY in cfg["extra-trusted-public-keys"]


def test_lock_is_consistent_without_fetching(flake, nix_env):
    # Nix would have to fetch nixpkgs (impossible offline) if flake.lock did not match flake.nix.
    meta = json.loads(nix(["flake", "metadata", "--json", f"path:{flake}", "--no-update-lock-file"], nix_env).stdout)
    locked = meta["locks"]["nodes"]["nixpkgs"]["locked"]
    assert locked["rev"] == flake_attr("f: f.inputs.nixpkgs.rev", nix_env)


def test_a_lock_that_disagrees_with_flake_nix_is_caught(flake, nix_env, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(flake, bad)
    text = (bad / "flake.nix").read_text()
    rev = flake_attr("f: f.inputs.nixpkgs.rev", nix_env)
    (bad / "flake.nix").write_text(text.replace(rev, "0" * 40))
    proc = nix(["flake", "metadata", "--json", f"path:{bad}", "--no-update-lock-file"], nix_env, check=False)
    assert proc.returncode != 0


# ---- the flake's outputs, against the stub nixpkgs ----

def test_flake_check_passes(flake, nix_env):
    nix(["flake", "check", f"path:{flake}", *stub_args()], nix_env, timeout=300)


def test_apps_follow_the_tracks_folder(flake, nix_env):
    apps = nix_eval_json(flake, f"apps.{SYSTEM}", nix_env, apply="builtins.attrNames")
    tracks = sorted(p.parent.name for p in (flake / "tracks").glob("*/track.toml"))
    assert NEW_TRACK in tracks and NEW_CPU_TRACK in tracks and "not-a-track" not in apps
    assert sorted(apps) == sorted(tracks + ["verify-record", "ci-gpu", "speedrun", "default"])
    for app in apps:
        entry = nix_eval_json(flake, f"apps.{SYSTEM}.{app}", nix_env)
        assert entry["type"] == "app" and entry["program"].startswith("/nix/store/")


def test_nixpkgs_is_imported_with_cuda_and_unfree(flake, nix_env):
    config = nix_eval_json(flake, f"legacyPackages.{SYSTEM}.config", nix_env)
    assert config["cudaSupport"] is True and config["allowUnfree"] is True
    torch_cuda = nix_eval_json(flake, f"legacyPackages.{SYSTEM}.python3Packages.torch.cudaSupport", nix_env)
    assert torch_cuda is True


def test_python_environment_has_the_project_and_its_tools(flake, nix_env):
    packages = nix_eval_json(flake, f"packages.{SYSTEM}.default.packages", nix_env)
    for name in ["speedrun-harness", "torch", "triton", "scipy", "rich", "nvidia-ml-py", "huggingface-hub",
                 "pytest-benchmark"]:
        assert name in packages
    deps = nix_eval_json(flake, f"packages.{SYSTEM}.harness.dependencies", nix_env,
                         apply="map (d: d.pname)")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(deps) == sorted(re.split(r"[<>=!~ \[]", d)[0] for d in declared)


def test_track_app_runs_a_campaign_of_its_track(flake, nix_env, tmp_path):
    driver = fake_driver(tmp_path / "driver")
    cwd = flake / "tracks"  # anywhere inside the checkout
    proc, calls = run_app(flake, "short", ["--runs", "8"], nix_env, tmp_path, cwd, driver=driver)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1
    call = calls[0]
    assert call["argv"] == ["-m", "harness", "run", "short", "--runs", "8"]
    assert call["interpreter"].startswith("/nix/store/") and call["interpreter"].endswith("/bin/python")
    assert call["config"] == {"cudaSupport": True, "allowUnfree": True}
    assert call["env"]["PYTHONPATH"].split(":")[0] == str(flake)
    assert call["cwd"] == str(cwd)
    links = Path(call["env"]["TRITON_LIBCUDA_PATH"])
    assert call["env"]["LD_LIBRARY_PATH"].split(":")[0] == str(links)
    assert sorted(p.name for p in links.iterdir()) == sorted(
        ["libcuda.so", "libcuda.so.1", "libcuda.so.580.159.04", "libnvidia-ml.so", "libnvidia-ml.so.1",
         "libnvidia-ml.so.580.159.04"])
    assert call["env"]["CC"].startswith("/nix/store/")


def test_new_track_folder_gets_a_working_app(flake, nix_env, tmp_path):
    proc, calls = run_app(flake, NEW_TRACK, ["--runs", "3", "--nproc", "1"], nix_env, tmp_path, flake,
                          driver=fake_driver(tmp_path / "driver"))
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"] for c in calls] == [["-m", "harness", "run", NEW_TRACK, "--runs", "3", "--nproc", "1"]]


def test_gpu_track_without_driver_stops_with_one_line(flake, nix_env, tmp_path):
    proc, calls = run_app(flake, "short", ["--runs", "8"], nix_env, tmp_path, flake)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[-1].startswith("error: no NVIDIA driver found on this host")
    assert calls == []


def test_cpu_track_runs_without_driver(flake, nix_env, tmp_path):
    cpu_tracks = sorted(p.parent.name for p in (flake / "tracks").glob("*/track.toml")
                        if tomllib.loads(p.read_text()).get("uses_gpu", True) is False)
    assert NEW_CPU_TRACK in cpu_tracks
    name = cpu_tracks[0]  # tiny, once it lands
    proc, calls = run_app(flake, name, ["--runs", "2"], nix_env, tmp_path, flake)
    assert proc.returncode == 0, proc.stderr
    assert calls[0]["argv"] == ["-m", "harness", "run", name, "--runs", "2"]
    assert "TRITON_LIBCUDA_PATH" not in calls[0]["env"]


def test_nixos_host_is_left_alone(flake, nix_env, tmp_path):
    host = tmp_path / "nixos"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "NIXOS").write_text("")
    proc, calls = run_app(flake, "short", [], nix_env, tmp_path, flake, host_root=host)
    assert proc.returncode == 0, proc.stderr
    assert "TRITON_LIBCUDA_PATH" not in calls[0]["env"]
    assert "LD_LIBRARY_PATH" not in calls[0]["env"]


def test_track_app_outside_a_checkout_says_where_to_run(flake, nix_env, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc, calls = run_app(flake, "short", [], nix_env, tmp_path, outside, driver=fake_driver(tmp_path / "driver"))
    assert proc.returncode != 0
    assert "error: run this inside a checkout of the speedrun repository" in proc.stderr
    assert calls == []


def test_verify_record_passes_the_path_and_works_anywhere(flake, nix_env, tmp_path):
    proc, calls = run_app(flake, "verify-record", ["results/short/rec"], nix_env, tmp_path, flake)
    assert proc.returncode == 0, proc.stderr
    assert calls[-1]["argv"] == ["-m", "harness", "verify", "results/short/rec"]
    assert calls[-1]["cwd"] == str(flake)  # relative paths stay relative to where the user is
    assert calls[-1]["env"]["PYTHONPATH"].split(":")[0] == str(flake)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc, calls = run_app(flake, "verify-record", ["/some/record"], nix_env, tmp_path, outside)
    assert proc.returncode == 0, proc.stderr
    root = calls[-1]["env"]["PYTHONPATH"].split(":")[0]
    assert root.startswith("/nix/store/") and root.endswith("-speedrun-source")  # the pinned sources


def test_ci_gpu_app_runs_the_ci_script_in_the_checkout(flake, nix_env, tmp_path):
    proc, calls = run_app(flake, "ci-gpu", ["--no-telemetry"], nix_env, tmp_path, flake / "tracks",
                          driver=fake_driver(tmp_path / "driver"), extra={"CI_NPROC": "2"})
    # The stub python runs nothing, so the smoke campaign writes no folder: the script must say so.
    assert proc.returncode != 0
    assert "error: the smoke campaign wrote no folder under results/short/" in proc.stderr
    assert [c["cwd"] for c in calls] == [str(flake)] * 2
    pytest_call, campaign_call = calls
    assert pytest_call["argv"][:4] == ["-m", "pytest", "tests/gpu", "-q"]
    assert any(a.startswith("--benchmark-json=results/ci/") for a in pytest_call["argv"])
    argv = campaign_call["argv"]
    assert argv[:8] == ["-m", "harness", "run", "short", "--runs", "1", "--nproc", "2"]
    assert "SPEEDRUN_NUM_ITERATIONS=100" in argv and argv[-1] == "--no-telemetry"
    assert campaign_call["interpreter"].startswith("/nix/store/")


def test_dev_shell_is_a_derivation_with_the_driver_hook(flake, nix_env):
    hook = nix_eval_json(flake, f"devShells.{SYSTEM}.default.shellHook", nix_env)
    assert "speedrun_expose_host_driver optional" in hook


# ---- the NixOS module ----

def eval_module(flake_dir: Path, env: dict, nvidia_packages: str, driver_version: str | None = None,
                attr: str = "config"):
    """Evaluate nixosModules.gpu-node the way the module system would: options' defaults feed `config`."""
    override = f'"{driver_version}"' if driver_version else "opts.driverVersion.default"
    expr = f"""
      let
        flake = builtins.getFlake "path:{flake_dir}";
        lib = import {STUB}/lib.nix;
        module = flake.nixosModules.gpu-node;
        result = module {{
          inherit lib;
          pkgs = {{ }};
          config = {{
            boot.kernelPackages.nvidiaPackages = {nvidia_packages};
            speedrun.gpuNode = {{
              driverVersion = {override};
              driverPackage = opts.driverPackage.default;
            }};
          }};
        }};
        opts = result.options.speedrun.gpuNode;
      in result.{attr}
    """
    return nix(["eval", "--impure", "--json", "--expr", expr], env, check=False)


def unwrap(value):
    """lib.mkDefault wraps a value; the module system would take the content."""
    if isinstance(value, dict) and value.get("_type") == "override":
        return value["content"]
    return value


def test_gpu_node_module_pins_the_tracks_driver(flake, nix_env):
    pins = driver_pins(flake)
    assert len(pins) == 1
    pinned = pins.pop()
    packages = f'{{ dc_570 = {{ version = "570.172.08"; }}; dc_{pinned.split(".")[0]} = {{ version = "{pinned}"; }}; }}'
    proc = eval_module(flake, nix_env, packages)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    nvidia = cfg["hardware"]["nvidia"]
    assert nvidia["package"]["version"] == pinned
    assert nvidia["nvidiaPersistenced"] is True
    assert nvidia["datacenter"]["enable"] is True
    assert unwrap(nvidia["open"]) is True
    assert unwrap(cfg["hardware"]["graphics"]["enable"]) is True
    assert unwrap(cfg["nixpkgs"]["config"]["allowUnfree"]) is True
    assert CUDA_CACHE in cfg["nix"]["settings"]["extra-substituters"]
    assert CUDA_CACHE_KEY in cfg["nix"]["settings"]["extra-trusted-public-keys"]
    assert all(a["assertion"] for a in cfg["assertions"])


def test_gpu_node_module_refuses_a_different_driver(flake, nix_env):
    pinned = sorted(driver_pins(flake))[0]
    branch = f"dc_{pinned.split('.')[0]}"
    proc = eval_module(flake, nix_env, f'{{ {branch} = {{ version = "{branch[3:]}.1.1"; }}; }}')
    assert proc.returncode != 0
    assert f"the pinned driver is {pinned} but this nixpkgs' {branch} is {branch[3:]}.1.1" in proc.stderr
    proc = eval_module(flake, nix_env, '{ dc_535 = { version = "535.1.1"; }; }')
    assert proc.returncode != 0
    assert f"needs nvidiaPackages.{branch}, which this nixpkgs does not have" in proc.stderr


def test_tracks_that_pin_different_drivers_are_an_error(flake, nix_env, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(flake, bad)
    other = bad / "tracks" / "zz-other-track"
    other.mkdir()
    (other / "track.toml").write_text('name = "zz-other-track"\nscript = "t.py"\nnproc = 1\ntarget = 1.0\n'
                                      '[pins]\ndriver = "999.1.1"\n')
    proc = eval_module(bad, nix_env, "{ }", attr="options.speedrun.gpuNode.driverVersion.default")
    assert proc.returncode != 0
    assert "the tracks pin different drivers" in proc.stderr
