"""nix/host-driver-libs.sh: the Nix apps' wrapper that exposes the host's NVIDIA driver on non-NixOS hosts.

Each test builds a fake host under tmp_path (SPEEDRUN_HOST_ROOT) with a driver folder holding NVIDIA
libraries next to system libraries, then runs the wrapper in bash and reads back what it exported.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "nix" / "host-driver-libs.sh"
DRIVER = "580.159.04"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

NVIDIA_LIBS = ["libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
               "libcudadebugger.so"]
SYSTEM_LIBS = ["libc.so.6", "libstdc++.so.6", "libz.so.1", "libm.so.6"]


def make_driver_folder(folder: Path, version: str = DRIVER, with_unversioned_cuda: bool = False) -> Path:
    """A driver folder as the NVIDIA installer leaves it: lib.so.<version> files, lib.so.1 links, and the
    distribution's own libraries next to them."""
    folder.mkdir(parents=True, exist_ok=True)
    for lib in NVIDIA_LIBS:
        real = folder / f"{lib}.{version}"
        real.write_text(f"fake {lib} {version}\n")
        link = folder / f"{lib}.1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(real.name)
    if with_unversioned_cuda:
        (folder / "libcuda.so").symlink_to("libcuda.so.1")
    for lib in SYSTEM_LIBS:
        (folder / lib).write_text("a system library the wrapper must not expose\n")
    return folder


def run_wrapper(tmp_path: Path, mode: str = "required", **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    script = (
        f"source {WRAPPER}\n"
        f"speedrun_expose_host_driver {mode}\n"
        "rc=$?\n"
        'printf "LD_LIBRARY_PATH=%s\\n" "${LD_LIBRARY_PATH-<unset>}"\n'
        'printf "TRITON_LIBCUDA_PATH=%s\\n" "${TRITON_LIBCUDA_PATH-<unset>}"\n'
        "exit $rc\n"
    )
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SPEEDRUN_HOST_ROOT": str(tmp_path / "host"),
        "SPEEDRUN_LDCONFIG": "none",
        "SPEEDRUN_DRIVER_LINKS": str(tmp_path / "links"),
        "LD_LIBRARY_PATH": "/previous/path",
    }
    full_env.update(env)
    proc = subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=30)
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return proc, values


def fake_ldconfig(tmp_path: Path, lines: list[str]) -> Path:
    tool = tmp_path / "fake-ldconfig"
    body = "".join(f"printf '%s\\n' '{line}'\n" for line in lines)
    tool.write_text("#!/bin/sh\n" + 'test "$1" = -p || exit 1\n' + f"echo '{len(lines)} libs found in cache'\n" + body)
    tool.chmod(0o755)
    return tool


def arch_tag() -> str:
    return {"x86_64": "libc6,x86-64", "aarch64": "libc6,AArch64"}.get(platform.machine(), "libc6")


def test_exposes_only_the_driver_libraries_of_the_usual_folder(tmp_path):
    driver = make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu")
    proc, env = run_wrapper(tmp_path)
    assert proc.returncode == 0, proc.stderr
    links = Path(env["TRITON_LIBCUDA_PATH"])
    assert links.parent == tmp_path / "links"
    assert env["LD_LIBRARY_PATH"] == f"{links}:/previous/path"
    names = sorted(p.name for p in links.iterdir())
    expected = sorted([f"{lib}{suffix}" for lib in NVIDIA_LIBS for suffix in (".1", f".{DRIVER}")]
                      + ["libcuda.so", "libnvidia-ml.so"])
    assert names == expected
    assert not set(SYSTEM_LIBS) & set(names)
    # Triton links with -lcuda: the unversioned name must reach the real driver library.
    assert (links / "libcuda.so").resolve() == (driver / f"libcuda.so.{DRIVER}").resolve()
    assert (links / "libnvidia-ml.so.1").resolve() == (driver / f"libnvidia-ml.so.{DRIVER}").resolve()


def test_unset_library_path_gets_no_trailing_separator(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib64")
    script_env = {"LD_LIBRARY_PATH": ""}
    proc, env = run_wrapper(tmp_path, **script_env)
    assert proc.returncode == 0, proc.stderr
    assert env["LD_LIBRARY_PATH"] == env["TRITON_LIBCUDA_PATH"]


def test_existing_unversioned_libcuda_is_kept(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu", with_unversioned_cuda=True)
    proc, env = run_wrapper(tmp_path)
    assert proc.returncode == 0, proc.stderr
    link = Path(env["TRITON_LIBCUDA_PATH"]) / "libcuda.so"
    assert link.is_symlink() and link.resolve().name == f"libcuda.so.{DRIVER}"


def test_ldconfig_cache_finds_a_driver_outside_the_usual_folders(tmp_path):
    driver = make_driver_folder(tmp_path / "opt" / "nvidia-580" / "lib")
    i386 = make_driver_folder(tmp_path / "opt" / "nvidia-580" / "lib32")
    tool = fake_ldconfig(tmp_path, [
        f"\tlibz.so.1 ({arch_tag()}) => /usr/lib/x86_64-linux-gnu/libz.so.1",
        # a 32-bit driver listed first must not be taken
        f"\tlibcuda.so.1 (libc6) => {i386}/libcuda.so.1",
        # tags may carry spaces
        f"\tlibcuda.so.1 ({arch_tag()}, OS ABI: Linux 3.2.0) => {driver}/libcuda.so.1",
    ])
    proc, env = run_wrapper(tmp_path, SPEEDRUN_LDCONFIG=str(tool))
    assert proc.returncode == 0, proc.stderr
    links = Path(env["TRITON_LIBCUDA_PATH"])
    assert (links / "libcuda.so.1").resolve() == (driver / f"libcuda.so.{DRIVER}").resolve()


def test_ldconfig_entry_whose_file_is_gone_falls_back_to_usual_folders(tmp_path):
    driver = make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu")
    tool = fake_ldconfig(tmp_path, [f"\tlibcuda.so.1 ({arch_tag()}) => {tmp_path}/stale/libcuda.so.1"])
    proc, env = run_wrapper(tmp_path, SPEEDRUN_LDCONFIG=str(tool))
    assert proc.returncode == 0, proc.stderr
    assert (Path(env["TRITON_LIBCUDA_PATH"]) / "libcuda.so.1").resolve().parent == driver.resolve()


def test_explicit_driver_dir_wins(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu", version="570.1.1")
    chosen = make_driver_folder(tmp_path / "mine")
    proc, env = run_wrapper(tmp_path, SPEEDRUN_HOST_DRIVER_DIR=str(chosen))
    assert proc.returncode == 0, proc.stderr
    assert (Path(env["TRITON_LIBCUDA_PATH"]) / "libcuda.so.1").resolve() == (chosen / f"libcuda.so.{DRIVER}").resolve()


def test_explicit_driver_dir_without_libcuda_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc, env = run_wrapper(tmp_path, SPEEDRUN_HOST_DRIVER_DIR=str(tmp_path / "empty"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: SPEEDRUN_HOST_DRIVER_DIR={tmp_path / 'empty'} has no libcuda.so.1"
    assert env["TRITON_LIBCUDA_PATH"] == "<unset>"


def test_no_driver_is_one_line_error_when_required(tmp_path):
    (tmp_path / "host").mkdir()
    proc, env = run_wrapper(tmp_path, "required")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no NVIDIA driver found on this host")
    assert "SPEEDRUN_HOST_DRIVER_DIR" in lines[0]
    assert env == {"LD_LIBRARY_PATH": "/previous/path", "TRITON_LIBCUDA_PATH": "<unset>"}


def test_no_driver_is_fine_when_optional(tmp_path):
    (tmp_path / "host").mkdir()
    proc, env = run_wrapper(tmp_path, "optional")
    assert proc.returncode == 0 and proc.stderr == ""
    assert env == {"LD_LIBRARY_PATH": "/previous/path", "TRITON_LIBCUDA_PATH": "<unset>"}


def test_nixos_is_left_alone(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu")
    (tmp_path / "host" / "etc").mkdir(parents=True)
    (tmp_path / "host" / "etc" / "NIXOS").write_text("")
    proc, env = run_wrapper(tmp_path, "required")
    assert proc.returncode == 0, proc.stderr
    assert env == {"LD_LIBRARY_PATH": "/previous/path", "TRITON_LIBCUDA_PATH": "<unset>"}
    assert not (tmp_path / "links").exists()


def test_links_folder_is_reused_and_changes_with_the_driver(tmp_path):
    folder = tmp_path / "host" / "usr/lib/x86_64-linux-gnu"
    make_driver_folder(folder)
    _, first = run_wrapper(tmp_path)
    _, second = run_wrapper(tmp_path)
    assert first["TRITON_LIBCUDA_PATH"] == second["TRITON_LIBCUDA_PATH"]
    # a driver update replaces the libraries: a new folder, the old one untouched
    for p in folder.glob(f"*.{DRIVER}"):
        p.unlink()
    make_driver_folder(folder, version="580.200.01")
    _, third = run_wrapper(tmp_path)
    assert third["TRITON_LIBCUDA_PATH"] != first["TRITON_LIBCUDA_PATH"]
    assert (Path(third["TRITON_LIBCUDA_PATH"]) / "libcuda.so.1").resolve().name == "libcuda.so.580.200.01"
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == sorted(
        [Path(first["TRITON_LIBCUDA_PATH"]).name, Path(third["TRITON_LIBCUDA_PATH"]).name])


def test_concurrent_starts_share_one_complete_folder(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu")
    script = f"source {WRAPPER}; speedrun_expose_host_driver required && echo $TRITON_LIBCUDA_PATH"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SPEEDRUN_HOST_ROOT": str(tmp_path / "host"),
           "SPEEDRUN_LDCONFIG": "none", "SPEEDRUN_DRIVER_LINKS": str(tmp_path / "links")}
    procs = [subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    folders = {o.strip() for o, _ in outs}
    assert len(folders) == 1
    # no temporary folders left behind, and the published one is complete
    assert [p.name for p in (tmp_path / "links").iterdir()] == [Path(folders.pop()).name]
    published = next((tmp_path / "links").iterdir())
    assert len(list(published.iterdir())) == 2 * len(NVIDIA_LIBS) + 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shell_scripts_pass_shellcheck():
    # nixpkgs' writeShellApplication runs shellcheck on the apps; catch findings before a real build does.
    scripts = [WRAPPER, REPO / "nix" / "checkout-root.sh", REPO / "scripts" / "ci-gpu.sh"]
    proc = subprocess.run(["shellcheck", "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_links_folder_that_cannot_be_made_is_one_error_and_nothing_is_exported(tmp_path):
    make_driver_folder(tmp_path / "host" / "usr/lib/x86_64-linux-gnu")
    (tmp_path / "a-file").write_text("not a folder\n")  # mkdir under a file fails for root too
    proc, env = run_wrapper(tmp_path, SPEEDRUN_DRIVER_LINKS=str(tmp_path / "a-file" / "links"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot create the driver links folder under {tmp_path / 'a-file' / 'links'} "
        "(set SPEEDRUN_DRIVER_LINKS to a writable folder)"]
    assert env == {"LD_LIBRARY_PATH": "/previous/path", "TRITON_LIBCUDA_PATH": "<unset>"}
