"""Record the real telemetry traces that the CPU tests use (tests/fixtures/telemetry/).

    python tests/gpu/record_telemetry_fixtures.py OUT_DIR

Run on an H100 (any NVIDIA GPU works). Each sub-folder of OUT_DIR is laid out like a campaign's runs/<k>/:
the sampler's files plus a run.json with "timed_window_unix" (the loaded phase) and, for the training-like
runs, a "val_curve" of real losses of that loop. See tests/fixtures/telemetry/README.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.telemetry import start_sampler  # noqa: E402
from harness.telemetry.bench import TrainLike, matmul_load  # noqa: E402

HZ = 10.0


def record(out: Path, name: str, idle_before: float, load, idle_after: float, kill_after: float | None = None):
    run_dir = out / name
    handle = start_sampler(run_dir, [0], HZ)
    assert handle is not None, "NVML unavailable"
    time.sleep(idle_before)
    t0 = time.time()
    if kill_after is not None:
        # Kill the sampler from a timer while the load runs: a real "sampler died" trace.
        import threading

        threading.Timer(kill_after, lambda: os.kill(handle.proc.pid, signal.SIGKILL)).start()
    extra = load()
    t1 = time.time()
    time.sleep(idle_after)
    handle.stop()
    run = {"name": name, "timed_window_unix": [t0, t1], "phases": {"idle_before_s": idle_before,
           "idle_after_s": idle_after}, "sampler_died_reason": handle.died_reason}
    if isinstance(extra, list):
        run["val_curve"] = extra
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    (run_dir / "sampler.log").unlink(missing_ok=True)
    print(f"{name}: window {t1 - t0:.1f} s, died_reason={handle.died_reason}", flush=True)


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    model = TrainLike()
    model.run(10)  # allocate and warm up before any trace starts
    record(out, "matmul", 2.0, lambda: matmul_load(6.0), 2.0)
    for i, seed_name in enumerate(["train_a", "train_b", "train_c"]):
        record(out, seed_name, 1.0, lambda: model.run_for(6.0, loss_every=10), 1.0)
    record(out, "killed", 1.0, lambda: model.run_for(4.0, loss_every=10), 1.0, kill_after=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
