"""Record folders in the competition's exact formats, built from values of our own (no record is copied).

A log is the 2025+ print0 layout: the script's source, a line of 100 '=', the `Running ...` header and an
nvidia-smi row, another separator, the standard banner lines, step lines whose step_avg is train_time/step
(2 decimals), the final `step:N/N val_loss:` line and the peak-memory line.
"""

from __future__ import annotations

import uuid
from pathlib import Path

SEP = "=" * 100
STEPS = 1490


def source(variant: str = "pr") -> str:
    return (f"# Placeholder training script ({variant}) written for the tests; not a competition script.\n"
            "import os\n"
            f"WINDOW = {7 if variant == 'pr' else 5}\n"
            "def log_step(step, total, loss, ms):\n"
            "    print(f\"step:{step}/{total} val_loss:{loss:.4f} train_time:{ms:.0f}ms step_avg:{ms/max(step, 1):.2f}ms\")\n")


def log_text(loss: str, time_s: str, *, code: str | None = None, seed: int = 0, steps: int = STEPS) -> str:
    """One run's log; loss as printed (4 decimals), time_s the final train_time in seconds (3 decimals)."""
    final_ms = round(float(time_s) * 1000)
    lines = [code if code is not None else source(), SEP,
             "Running Python 3.12.9 (main, Feb  4 2026, 10:11:12) [GCC 13.2.0]",
             "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8",
             "Running Triton version 3.6.0",
             "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |",
             SEP,
             "Compiling model and warming up kernels (~7 minutes on first execution)",
             "Sampling steps [0, 1, 2, 497, 498, 499, 993, 994,",
             " 995, 1489] for warmup",
             "Resetting Model",
             f"step:0/{steps} val_loss:10.8{300 + seed % 90:03d} train_time:0ms step_avg:0.04ms"]
    for step in (250, 500, 750, 1000, steps - 1):
        ms = round(final_ms * step / steps) - 3
        val = f" val_loss:{4.6 - step / 1000 - seed * 1e-4:.4f}" if step % 250 == 0 else ""
        lines.append(f"step:{step}/{steps}{val} train_time:{ms}ms step_avg:{ms / step:.2f}ms")
    lines.append(f"step:{steps}/{steps} val_loss:{loss} train_time:{final_ms}ms step_avg:{final_ms / steps:.2f}ms")
    lines.append("peak memory allocated: 29876 MiB reserved: 41234 MiB")
    return "\n".join(lines) + "\n"


def write_logs(folder: Path, losses: list[str], times: list[str], *, code: str | None = None,
               seed0: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (loss, t) in enumerate(zip(losses, times)):
        p = folder / f"{uuid.UUID(int=(seed0 + k + 1) * 7919):}.txt"
        p.write_text(log_text(loss, t, code=code, seed=seed0 + k))
        out.append(p)
    return out


# Our own numbers: a PR arm that beats 3.28 and a baseline arm.
PR_LOSSES = ["3.2771", "3.2785", "3.2779", "3.2768", "3.2790", "3.2776"]
PR_TIMES = ["88.412", "88.377", "88.455", "88.401", "88.390", "88.436"]
BASE_LOSSES = ["3.2789", "3.2801", "3.2776", "3.2795", "3.2783"]
BASE_TIMES = ["89.214", "89.180", "89.262", "89.231", "89.199"]


def block(losses: list[str], times: list[str], *, p: str | None = None, name: str = "losses") -> str:
    text = (f"import scipy.stats\nimport torch\n\n{name} = [{', '.join(losses)}]\ntimes = [{', '.join(times)}]\n\n")
    if p is not None:
        text += (f"print(\"p=%.4f\" % scipy.stats.ttest_1samp({name}, 3.28, alternative=\"less\").pvalue)\n"
                 f"# p={p}\n")
    return text
