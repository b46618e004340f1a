"""Environment fingerprint and pins, against the fingerprint recorded on the H100 machine
(tests/fixtures/telemetry/h100_fingerprint.json) and this machine's own (no NVIDIA driver in CI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.commands.env import cmd_env
from harness.fingerprint import campaign_env, check_pins, env_markdown, fingerprint, version_matches
from harness.errors import HarnessError
from harness.fsio import sha256_file
from harness.tracks import track_from_dict

H100_FP = json.loads((Path(__file__).parent / "fixtures" / "telemetry" / "h100_fingerprint.json").read_text())
RECORD_PINS = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "cuda": "13.0", "torch": "2.11.0",
               "triton": "3.6.0"}


def make_track(tmp_path: Path, pins: dict, nproc: int = 1, frozen_ok: bool = True, uses_gpu: bool = True):
    folder = tmp_path / "trk"
    folder.mkdir(exist_ok=True)
    script = folder / "train_gpt.py"
    script.write_text("print('hello')\n")
    digest = sha256_file(script) if frozen_ok else "0" * 64
    pin_lines = "".join(f'{k} = "{v}"\n' for k, v in pins.items())
    (folder / "track.toml").write_text(
        f'name = "trk"\nscript = "train_gpt.py"\nnproc = {nproc}\ntarget = 3.28\nuses_gpu = {str(uses_gpu).lower()}\n'
        f'[frozen]\n"train_gpt.py" = "{digest}"\n[pins]\n{pin_lines}'
    )
    raw = {"name": "trk", "script": "train_gpt.py", "nproc": nproc, "target": 3.28, "uses_gpu": uses_gpu,
           "frozen": {"train_gpt.py": digest}, "pins": pins}
    return track_from_dict(raw, folder), folder


def test_recorded_h100_is_record_grade(tmp_path):
    track, _ = make_track(tmp_path, RECORD_PINS)
    assert check_pins(track, H100_FP) == []
    env = campaign_env(track, H100_FP)
    assert env["record_grade"] is True and env["pins"] == RECORD_PINS


def test_version_mismatches_listed(tmp_path):
    track, _ = make_track(tmp_path, {**RECORD_PINS, "torch": "2.10.0", "driver": "575.51.03"})
    assert check_pins(track, H100_FP) == ["driver: 580.159.04 != pinned 575.51.03",
                                          "torch: 2.11.0+cu130 != pinned 2.10.0"]


def test_version_matching_rules():
    assert version_matches("2.11.0+cu130", "2.11.0")
    assert version_matches("3.6.0", "3.6.0")
    assert not version_matches("2.11.1", "2.11.0")
    assert not version_matches("2.11.0", "2.11")  # a pin names one release, not a family


def test_gpu_model_and_count(tmp_path):
    track, _ = make_track(tmp_path, {"gpu": "NVIDIA H200"}, nproc=8)
    assert check_pins(track, H100_FP) == ["gpu: NVIDIA H100 80GB HBM3 != pinned NVIDIA H200",
                                          "gpu_count: 1 < the track's nproc 8"]


def test_unknown_pin_key_is_a_mismatch(tmp_path):
    track, _ = make_track(tmp_path, {"cudnn": "9.1"})
    assert check_pins(track, H100_FP) == ["cudnn: unknown pin in track.toml (known: driver, cuda_driver, cuda, "
                                          "torch, triton, nccl, python, gpu, gpu_count)"]


def test_modified_frozen_file_is_not_record_grade(tmp_path):
    track, _ = make_track(tmp_path, RECORD_PINS, frozen_ok=False)
    assert check_pins(track, H100_FP) == ["frozen file train_gpt.py: sha256 differs from track.toml"]


def test_no_driver_fingerprint_and_pins(tmp_path):
    fp = fingerprint()
    nv = fp["nvidia"]
    if nv["available"]:
        pytest.skip("this machine has an NVIDIA driver")
    assert isinstance(nv["reason"], str) and "\n" not in nv["reason"]
    assert fp["software"]["python"] == ".".join(map(str, sys.version_info[:3]))
    track, _ = make_track(tmp_path, {"gpu": "NVIDIA H100 80GB HBM3"})
    assert check_pins(track, fp) == ["gpu: none (no NVIDIA GPU visible) != pinned NVIDIA H100 80GB HBM3"]
    # A CPU track with no pins is record-grade anywhere (the tiny track).
    cpu_track, _ = make_track(tmp_path, {}, uses_gpu=False)
    assert check_pins(cpu_track, fp) == []


def test_env_markdown(tmp_path):
    track, _ = make_track(tmp_path, {**RECORD_PINS, "triton": "3.5.0"})
    md = env_markdown(campaign_env(track, H100_FP))
    assert "**Not record-grade**" in md and "- triton: 3.6.0 != pinned 3.5.0" in md
    assert "| GPU | 1 × NVIDIA H100 80GB HBM3 |" in md and "| driver | 580.159.04 |" in md
    assert "| GPU 0 | GPU-cd18098d-1b50-a09f-887a-38094a439f65 (00000000:00:06.0) |" in md


def test_cmd_env_table_and_check(tmp_path, capsys):
    assert cmd_env(None, False) == 0
    out = capsys.readouterr().out
    assert "PyTorch" in out and "Python" in out
    _, folder = make_track(tmp_path, {"python": "2.7.18"})
    assert cmd_env(str(folder), False) == 1
    out = capsys.readouterr().out
    assert "not record-grade" in out and "python:" in out and "!= pinned 2.7.18" in out


def test_cmd_env_json(tmp_path, capsys):
    _, folder = make_track(tmp_path, {}, uses_gpu=False)
    assert cmd_env(str(folder), True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["record_grade"] is True and data["mismatches"] == []
    assert set(data["fingerprint"]) == {"nvidia", "software"}


def test_cmd_env_unknown_track():
    with pytest.raises(HarnessError, match="unknown track"):
        cmd_env("no-such-track", False)
