"""The telemetry sampler: a process of its own that polls NVML and writes time series next to a run.

    python -m harness.telemetry.sampler --out RUN_DIR --gpus 0,1 --hz 10 [--parent-pid PID]

Why a separate process: a sampler thread inside the training process stalls on the GIL (gaps of tens of
ms) and steals time from the training loop; as a process it costs the run nothing measurable (docs/DESIGN.md,
"Telemetry").

Files it writes in RUN_DIR (see FILES below):
- telemetry.csv: one row per GPU per tick (10 Hz by default) of the cheap NVML fields (2-30 us a call).
- energy.csv: the total-energy counter (3-4 ms a call, so only at start, at 1 Hz, and at the end).
- telemetry_meta.json: what is read once (name, UUID, power limit, max clocks) and the sampler's state:
  "running" while it runs, then "stopped" (clean end, final energy read) or "died" (with the error).

It stops cleanly on SIGTERM/SIGINT (the harness's SamplerHandle.stop) and also when its parent process is
gone, since it runs in its own session and would otherwise outlive a killed harness.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from harness.fsio import write_json_atomic
from harness.telemetry.columns import ENERGY_HEADER, SAMPLED_COLUMNS, TELEMETRY_HEADER, Column
from harness.telemetry.files import ENERGY_CSV, META_JSON, TELEMETRY_CSV

# A GPU whose every field fails this many ticks in a row is gone (fallen off the bus, driver reset):
# the sampler then records why and exits rather than writing empty rows forever.
MAX_FAILED_TICKS = 50
ENERGY_PERIOD_S = 1.0


def _write_meta(path: Path, meta: dict) -> None:
    # Atomic so that a reader never sees half a file (the sampler may be killed at any point).
    write_json_atomic(path, meta)


class _Stop:
    """Set by SIGTERM/SIGINT; checked every tick."""

    requested = False
    why = ""


def _on_signal(signum, _frame):
    _Stop.requested = True
    _Stop.why = signal.Signals(signum).name


def _parent_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class GpuReader:
    """Reads one GPU's cheap fields; a field NVML says it does not support is left blank from then on."""

    def __init__(self, nvml, index: int):
        self.nvml = nvml
        self.index = index
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.unsupported: set[str] = set()
        self.failed_ticks = 0
        self.last_error = ""
        # Renamed in newer NVML ("throttle" -> "clocks event"); both return the same bitmask.
        self._reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        self._readings = self.readings()

    def _field(self, name: str, fn):
        if name in self.unsupported:
            return None
        try:
            return fn()
        except self.nvml.NVMLError as e:
            if isinstance(e, self.nvml.NVMLError_NotSupported):
                self.unsupported.add(name)
            else:
                self.last_error = f"{name}: {e}"
            return None

    def readings(self) -> dict:
        """How each column of SAMPLED_COLUMNS is read from NVML (run_sampler refuses to start without one)."""
        n, h = self.nvml, self.handle
        return {
            "sm_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "mem_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            "power_w": lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "temp_c": lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "util_pct": lambda: n.nvmlDeviceGetUtilizationRates(h).gpu,
            "mem_used_mib": lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
            "reasons": lambda: self._reasons_fn(h),
        }

    def row(self) -> tuple[float, list]:
        """The time and one value per SAMPLED_COLUMNS column, in the header's order (None: NVML gave none)."""
        t = time.time()
        vals = [self._field(c.name, self._readings[c.name]) for c in SAMPLED_COLUMNS]
        if all(v is None for v in vals):
            self.failed_ticks += 1
        else:
            self.failed_ticks = 0
        return t, vals

    def energy_mj(self) -> int | None:
        return self._field("energy", lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def static_info(self) -> dict:
        n, h = self.nvml, self.handle

        def once(fn):
            try:
                v = fn()
                return v.decode() if isinstance(v, bytes) else v
            except n.NVMLError:
                return None

        limit_mw = once(lambda: n.nvmlDeviceGetEnforcedPowerLimit(h))
        return {
            "index": self.index,
            "name": once(lambda: n.nvmlDeviceGetName(h)),
            "uuid": once(lambda: n.nvmlDeviceGetUUID(h)),
            "power_limit_w": limit_mw / 1000.0 if limit_mw is not None else None,
            "max_sm_mhz": once(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
            "max_mem_mhz": once(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
        }


def _cell(column: Column, v) -> str:
    """One reading as the CSV holds it: blank when NVML gave none, an int column as an integer, a float
    column with at most 3 decimals."""
    if v is None:
        return ""
    if column.type is int:
        return str(round(v))
    return f"{float(v):.3f}".rstrip("0").rstrip(".")


def run_sampler(out_dir: Path, gpu_indices: list[int], hz: float, parent_pid: int | None) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / META_JSON
    meta = {
        "state": "starting",
        "pid": os.getpid(),
        "hz": hz,
        "gpus": gpu_indices,
        "started_unix": time.time(),
        "ended_unix": None,
        "error": None,
        "devices": [],
    }
    _write_meta(meta_path, meta)

    def die(msg: str, code: int) -> int:
        meta.update(state="died", error=msg, ended_unix=time.time())
        _write_meta(meta_path, meta)
        return code

    try:
        import pynvml as nvml  # optional dependency: without it the sampler records why and exits
    except ImportError:
        return die("nvidia-ml-py (pynvml) is not installed", 3)
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError or a missing libnvidia-ml.so
        return die(f"NVML init failed: {e}", 3)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        readers = [GpuReader(nvml, i) for i in gpu_indices]
    except nvml.NVMLError as e:
        nvml.nvmlShutdown()
        return die(f"cannot open GPU(s) {gpu_indices}: {e}", 3)
    unread = [c.name for c in SAMPLED_COLUMNS if readers and c.name not in readers[0].readings()]
    if unread:  # a column added to columns.py without its NVML call: no file with a column that is never filled
        nvml.nvmlShutdown()
        return die(f"no NVML reading for telemetry column(s) {', '.join(unread)}", 3)
    meta["devices"] = [r.static_info() for r in readers]

    period = 1.0 / hz
    try:
        tel = open(out_dir / TELEMETRY_CSV, "w", encoding="utf-8")
        eng = open(out_dir / ENERGY_CSV, "w", encoding="utf-8")
    except OSError as e:
        nvml.nvmlShutdown()
        return die(f"cannot write telemetry files: {e}", 3)
    tel.write(TELEMETRY_HEADER + "\n")
    eng.write(ENERGY_HEADER + "\n")

    def read_energy(kind: str) -> None:
        for r in readers:
            e = r.energy_mj()
            if e is not None:
                eng.write(f"{time.time():.3f},{r.index},{e},{kind}\n")  # ENERGY_COLUMNS' order
        eng.flush()

    code = 0
    try:
        read_energy("start")
        meta["state"] = "running"
        _write_meta(meta_path, meta)
        # Ticks on an absolute schedule so that slow ticks do not make the rate drift; a tick that
        # overruns is skipped rather than followed by a burst.
        t0 = time.monotonic()
        k = 0
        next_energy = t0 + ENERGY_PERIOD_S
        while not _Stop.requested:
            lines = []
            for r in readers:
                t, vals = r.row()
                cells = ",".join(_cell(c, v) for c, v in zip(SAMPLED_COLUMNS, vals))
                lines.append(f"{t:.3f},{r.index},{cells}\n")
            tel.write("".join(lines))
            tel.flush()  # a killed sampler loses at most one tick
            now = time.monotonic()
            if now >= next_energy:
                read_energy("tick")
                next_energy += ENERGY_PERIOD_S * max(1, int((now - next_energy) / ENERGY_PERIOD_S) + 1)
                if not _parent_alive(parent_pid):
                    _Stop.requested, _Stop.why = True, "parent process gone"
            dead = [r for r in readers if r.failed_ticks >= MAX_FAILED_TICKS]
            if dead:
                raise RuntimeError(f"GPU {dead[0].index} stopped answering ({dead[0].last_error})")
            k += 1
            wake = t0 + k * period
            now = time.monotonic()
            if wake < now:  # overran: skip the missed ticks
                k = int((now - t0) / period) + 1
                wake = t0 + k * period
            time.sleep(max(0.0, wake - time.monotonic()))
        read_energy("end")
        meta.update(state="stopped", ended_unix=time.time(), stop_reason=_Stop.why or "stop requested")
    except Exception as e:
        meta.update(state="died", error=f"{type(e).__name__}: {e}", ended_unix=time.time())
        code = 1
    finally:
        tel.close()
        eng.close()
        meta["unsupported_fields"] = sorted(set().union(*(r.unsupported for r in readers)))
        _write_meta(meta_path, meta)
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.telemetry.sampler", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="run folder to write telemetry into")
    p.add_argument("--gpus", required=True, help="comma-separated NVML GPU indices, e.g. 0,1")
    p.add_argument("--hz", type=float, default=10.0, help="samples per second (default 10)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    a = p.parse_args(argv)
    try:
        gpus = [int(x) for x in a.gpus.split(",") if x.strip() != ""]
    except ValueError:
        p.error(f"--gpus must be comma-separated integers, got {a.gpus!r}")
    if not gpus:
        p.error("--gpus is empty")
    if not (0.1 <= a.hz <= 100):
        p.error("--hz must be between 0.1 and 100")
    return run_sampler(a.out, gpus, a.hz, a.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
