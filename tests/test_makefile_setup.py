"""`make setup`: the torch and Triton the short track pins on a GPU node, the quick CPU torch (and the pinned Triton,
for its interpreter) elsewhere, one error line when the pinned build cannot be installed. The interpreter and
nvidia-smi are recorders here."""

import os
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None,
                                reason="needs make and bash")

# `python -m venv DIR` makes DIR/bin/python a copy of this recorder; every other call is logged, and a call
# naming $FAKE_FAIL (a package spec) fails as pip would.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
if [[ "$1" == "-c" ]]; then echo "Python 3.12.3 x86_64"; exit 0; fi
printf '%s\n' "$*" >> "$FAKE_LOG"
for a in "$@"; do [[ -n "${FAKE_FAIL:-}" && "$a" == "$FAKE_FAIL" ]] && { echo "ERROR: No matching distribution" >&2; exit 1; }; done
exit 0
"""


def make_setup(tmp_path, nvidia_smi_rc: int, **env):
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\nexit {nvidia_smi_rc}\n")
    (tools / "nvidia-smi").chmod(0o755)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    full = {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}", "FAKE_LOG": str(log), **env}
    proc = subprocess.run(["make", "--no-print-directory", "setup", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=60)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_gpu_node_installs_the_short_tracks_pinned_torch_and_triton(tmp_path):
    pins = tomllib.loads((REPO / "tracks" / "short" / "track.toml").read_text())["pins"]
    proc, calls = make_setup(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr
    tag = pins["torch"].split("+")[1]  # cu130
    assert calls[0] == (f"-m pip install -q torch=={pins['torch']} --index-url "
                        f"https://download.pytorch.org/whl/{tag}")
    assert calls[1] == f"-m pip install -q triton=={pins['triton']}"
    assert calls[2] == "-m pip install -q -e .[test]"
    assert (tmp_path / "venv" / ".installed").exists()


def test_cpu_node_keeps_the_quick_cpu_torch_and_the_pinned_triton_for_its_interpreter(tmp_path):
    proc, calls = make_setup(tmp_path, 9)  # nvidia-smi present but failing: no usable driver
    assert proc.returncode == 0, proc.stderr
    triton_pin = tomllib.loads((REPO / "tracks" / "short" / "track.toml").read_text())["pins"]["triton"]
    assert calls == [f"-m pip install -q torch==2.13.0 triton=={triton_pin} numpy<2.3", "-m pip install -q -e .[test]"]


def test_a_pinned_build_that_cannot_be_installed_is_one_error_line(tmp_path):
    torch_pin = tomllib.loads((REPO / "tracks" / "short" / "track.toml").read_text())["pins"]["torch"]
    proc, calls = make_setup(tmp_path, 0, FAKE_FAIL=f"torch=={torch_pin}")
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"cannot install torch=={torch_pin}" in errors[0]
    assert "Python 3.12.3 x86_64" in errors[0] and "cannot be record-grade" in errors[0]
    assert not (tmp_path / "venv" / ".installed").exists()
    assert len(calls) == 1  # stopped there: neither triton nor the package
