"""The profiler hook of `speedrun profile` on a GPU (skipped without CUDA): the window holds the GPU kernels of
exactly the asked steps, each kernel once (not also the CPU op that launched it)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from harness.profiles import kind_of, load_profile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SCRIPT = """
import torch
x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
for step in range(1, 6):
    for _ in range(step):  # step k runs k matmuls
        y = x @ x
    torch.cuda.synchronize()
    print(f"step:{step}/5 train_time:{step}ms step_avg:1.00ms", flush=True)
"""


def test_the_window_holds_each_gpu_kernel_of_the_asked_steps_once(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_PROFILE")}
    env.update(PYTHONPATH=str(REPO / "harness" / "profile_hook"), SPEEDRUN_PROFILE_STEP="2",
               SPEEDRUN_PROFILE_STEPS="2", SPEEDRUN_PROFILE_DIR=str(tmp_path / "run" / "profile"))
    r = subprocess.run([sys.executable, str(tmp_path / "s.py")], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    p = load_profile(tmp_path / "run")
    assert p.device == "cuda" and (p.first_step, p.last_step) == (3, 4)
    gemms = [k for k in p.kernels if kind_of(k.name) == "matmul"]
    assert sum(k.calls for k in gemms) == 3 + 4, [(k.name, k.calls) for k in p.kernels]
    doc = json.loads((tmp_path / "run" / "profile" / "kernels.json").read_text())
    assert not any(row["name"].startswith("aten::") for row in doc["kernels"])  # kernels, not CPU ops
