"""GPU telemetry around a run: a sampler process (sampler.py) writing the CSVs whose columns columns.py
defines, the traces read back by their header (trace.py), per-run summaries (summary.py), campaign outliers
and the record.md table (outliers.py).

Everything here imports without pynvml and without an NVIDIA driver: start_sampler then returns None and
the run goes on with telemetry off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.fsio import read_json_object, write_json_atomic
from harness.telemetry.files import ENERGY_CSV, EXIT_JSON, META_JSON, TELEMETRY_CSV
from harness.telemetry.outliers import campaign_outliers, telemetry_markdown
from harness.telemetry.summary import summarize_run
from harness.telemetry.trace import load_trace

__all__ = [
    "nvml_available",
    "start_sampler",
    "SamplerHandle",
    "summarize_run",
    "load_trace",
    "campaign_outliers",
    "telemetry_markdown",
    "TELEMETRY_CSV",
    "ENERGY_CSV",
    "META_JSON",
]


def nvml_available() -> tuple[bool, str]:
    """(True, "") when NVML initialises and sees at least one GPU; else (False, one-line reason)."""
    try:
        import pynvml  # optional dependency: without it telemetry is off
    except ImportError:
        return False, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return False, f"no NVIDIA driver ({e})"
    try:
        n = pynvml.nvmlDeviceGetCount()
    except Exception as e:
        return False, f"NVML cannot count GPUs ({e})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    if n == 0:
        return False, "NVML sees no GPU"
    return True, ""


class SamplerHandle:
    """The harness's side of a running sampler process."""

    def __init__(self, proc: subprocess.Popen, out_dir: Path, gpu_indices: list[int], hz: float):
        self.proc = proc
        self.out_dir = Path(out_dir)
        self.gpu_indices = list(gpu_indices)
        self.hz = hz
        self.stopped = False  # stop() was called
        self._died_reason: str | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def died_reason(self) -> str | None:
        """Why the sampler ended before stop() asked it to (None while it runs or after a clean stop)."""
        if self._died_reason is not None:
            return self._died_reason
        rc = self.proc.poll()
        if rc is None or (self.stopped and rc == 0):
            return None
        return self._reason_from_files(rc)

    def _reason_from_files(self, rc: int) -> str:
        meta = read_json_object(self.out_dir / META_JSON)
        if meta.get("error"):
            return str(meta["error"])
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exited with code {rc}"

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask for the final energy reading and exit (SIGTERM); kill after grace_s. Never raises."""
        try:
            was_alive = self.alive
            if not was_alive and not self.stopped:
                self._died_reason = self._reason_from_files(self.proc.returncode)
            self.stopped = True
            killed = False
            if was_alive:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=grace_s)
                    killed = True
            if killed:
                self._died_reason = f"did not stop within {grace_s:g} s and was killed"
            elif was_alive and self.proc.returncode != 0:
                self._died_reason = self._reason_from_files(self.proc.returncode)
            self._write_exit(was_alive)
        except Exception as e:  # stop() runs in finally blocks: it must never raise
            self._died_reason = self._died_reason or f"stop failed: {e}"

    def _write_exit(self, was_alive: bool) -> None:
        write_json_atomic(
            self.out_dir / EXIT_JSON,
            {
                "returncode": self.proc.returncode,
                "alive_at_stop": was_alive,
                "died_reason": self._died_reason,
                "stopped_unix": time.time(),
            },
        )


def start_sampler(out_dir: Path, gpu_indices: list[int], hz: float = 10.0) -> SamplerHandle | None:
    """Start the sampler process for these GPUs, writing into out_dir; None when NVML is unavailable.

    Never raises: telemetry must not be able to stop a run. Waits (at most a few seconds) until the sampler
    has opened the GPUs, so that the first samples precede the run's start.
    """
    try:
        ok, _why = nvml_available()
        if not ok or not gpu_indices:
            return None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (TELEMETRY_CSV, ENERGY_CSV, META_JSON, EXIT_JSON):  # a resumed run starts afresh
            (out_dir / name).unlink(missing_ok=True)
        repo_root = Path(__file__).resolve().parent.parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = str(repo_root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [
            sys.executable,
            "-m",
            "harness.telemetry.sampler",
            "--out",
            str(out_dir),
            "--gpus",
            ",".join(str(i) for i in gpu_indices),
            "--hz",
            str(hz),
            "--parent-pid",
            str(os.getpid()),
        ]
        log = open(out_dir / "sampler.log", "wb")
        # Own session: a Ctrl-C aimed at the run does not hit the sampler before it took its last reading.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        handle = SamplerHandle(proc, out_dir, gpu_indices, hz)
        _wait_running(handle, timeout_s=10.0)
        return handle
    except Exception:
        return None


def _wait_running(handle: SamplerHandle, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    meta_path = handle.out_dir / META_JSON
    while time.monotonic() < deadline and handle.alive:
        try:
            if json.loads(meta_path.read_text())["state"] != "starting":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
