"""Profile steps of an unmodified training script from outside it (`speedrun profile`).

Python imports `sitecustomize` at start-up from the first folder of PYTHONPATH that has one; `speedrun profile`
puts this folder there for one run. In the process of rank 0 it watches what the script prints for the
competition's step lines (`step:N/M train_time:...`, printed once step N has finished): after step
SPEEDRUN_PROFILE_STEP it starts the PyTorch profiler, after SPEEDRUN_PROFILE_STEPS more steps it stops it and
writes, into SPEEDRUN_PROFILE_DIR (default ./profile, the run's folder):
  kernels.json   every GPU kernel (or, without a GPU, every CPU op) of the window: calls, total microseconds
  table.txt      the profiler's own table of the window, by device time
  trace.json.gz  the window's Chrome trace (chrome://tracing, ui.perfetto.dev)
Other processes (torchrun's launcher, other ranks, compile workers) only pass their output through: torch is
imported when the window opens, never before, so a process that prints no step line pays nothing.
"""

import atexit
import gzip
import json
import os
import re
import shutil
import sys
import time

STEP_LINE = re.compile(r"step:(\d+)/(\d+) train_time:")
# set by harness/commands/profile.py, which names them again: this module runs without the harness on its path
START_VAR, STEPS_VAR, DIR_VAR = "SPEEDRUN_PROFILE_STEP", "SPEEDRUN_PROFILE_STEPS", "SPEEDRUN_PROFILE_DIR"
TOP_KERNELS = 300  # kernels.json keeps the longest ones; the rest are summed into one line


class StepWatch:
    """Wraps the script's stdout: passes everything through and acts on whole step lines."""

    def __init__(self, stream, start: int, steps: int, out_dir: str):
        self._stream, self._start, self._stop = stream, start, start + steps
        self._out_dir, self._pending = out_dir, ""
        self._profiler, self._opened = None, None
        self.done = False

    def write(self, text):
        n = self._stream.write(text)
        if not self.done and isinstance(text, str):
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            self._pending = self._pending[-4096:]  # a script printing without newlines keeps little here
            for line in lines:
                m = STEP_LINE.search(line)
                if m:
                    self._on_step(int(m.group(1)))
        return n

    def __getattr__(self, name):  # flush, fileno, isatty, encoding, ...: the real stream's
        return getattr(self._stream, name)

    def _on_step(self, step: int):
        if self._profiler is None and step == self._start:
            self._open(step)
        elif self._profiler is not None and step >= self._stop:
            self.close(step)

    def _open(self, step: int):
        import torch  # deferred: heavy, and only the process that reaches the step needs it
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()  # the window holds the kernels of the steps after this one, not its tail
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()
        self._opened = (step, time.perf_counter())

    def close(self, step: int | None = None):
        """End the window (at the last step line, or at exit if the run ends inside it) and write the files."""
        if self._profiler is None or self.done:
            return
        self.done = True
        import torch  # deferred: already imported by the script and by _open
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._profiler.__exit__(None, None, None)
        first, t0 = self._opened
        window_s = time.perf_counter() - t0
        write_profile(self._profiler, self._out_dir, first_step=first + 1, last_step=step,
                      window_s=window_s, cuda=torch.cuda.is_available())


def kernel_totals(events, cuda: bool) -> list[dict]:
    """(name, calls, total_us) of the window, longest first: the GPU kernels where there is a GPU, else the
    CPU ops' self time."""
    totals: dict[str, list] = {}
    for e in events:
        on_device = getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
        if cuda != on_device:
            continue
        us = float(e.time_range.elapsed_us() if cuda else e.self_cpu_time_total)
        entry = totals.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += us
    rows = [{"name": k, "calls": v[0], "total_us": round(v[1], 3)} for k, v in totals.items()]
    rows.sort(key=lambda r: -r["total_us"])
    return rows


def write_profile(prof, out_dir: str, *, first_step: int, last_step: int | None, window_s: float, cuda: bool):
    os.makedirs(out_dir, exist_ok=True)
    rows = kernel_totals(prof.events(), cuda)
    rest = rows[TOP_KERNELS:]
    kept = rows[:TOP_KERNELS]
    if rest:
        kept.append({"name": f"(other {len(rest)} kernels)", "calls": sum(r["calls"] for r in rest),
                     "total_us": round(sum(r["total_us"] for r in rest), 3)})
    steps = (last_step - first_step + 1) if last_step is not None else None
    doc = {"format": 1, "device": "cuda" if cuda else "cpu", "first_step": first_step, "last_step": last_step,
           "steps": steps, "window_s": round(window_s, 6), "kernels": kept}
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    _atomic_text(os.path.join(out_dir, "table.txt"), prof.key_averages().table(sort_by=sort_by, row_limit=60))
    raw = os.path.join(out_dir, "trace.json")
    prof.export_chrome_trace(raw)
    with open(raw, "rb") as src, gzip.open(raw + ".gz.tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(raw + ".gz.tmp", raw + ".gz")
    os.remove(raw)
    _atomic_text(os.path.join(out_dir, "kernels.json"), json.dumps(doc, indent=1) + "\n")  # last: marks done


def _atomic_text(path: str, text: str):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def install(environ=os.environ):
    """Wrap sys.stdout in rank 0 of a run that asks for a profile; anything else is left as it is."""
    if START_VAR not in environ or environ.get("RANK", "0") != "0":
        return None
    try:
        start, steps = int(environ[START_VAR]), int(environ.get(STEPS_VAR, "1"))
    except ValueError:
        return None  # `speedrun profile` checked both; a hand-set bad value must not break the script
    if start < 0 or steps < 1:
        return None
    watch = StepWatch(sys.stdout, start, steps, environ.get(DIR_VAR, os.path.join(os.getcwd(), "profile")))
    sys.stdout = watch
    atexit.register(watch.close)
    return watch


install()
