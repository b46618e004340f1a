"""Opt-in clock locking for rented nodes (`speedrun run TRACK --lock-clocks [MHZ]`).

A locked SM clock removes boost-clock variation between runs (it cannot override the power cap: under a
sustained GEMM an H100 still drops to its cap). It needs root, changes the GPU for everyone on it, and must
be undone: so this module
- refuses unless root, and refuses a GPU another process is computing on (never lock a shared GPU);
- queries the current state first, enables persistence mode only where it was off, locks the SM clock;
- ALWAYS resets the clocks and restores persistence mode in a finally block, also when the run fails.

Every command goes through `runner` (subprocess.run by default), so tests check the exact calls and
`lock_clocks_plan` prints them for a dry run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from harness.errors import HarnessError

QUERY_FIELDS = "index,uuid,persistence_mode,clocks.default_applications.graphics,clocks.max.sm"


@dataclass
class GpuClockState:
    index: int
    uuid: str
    persistence: bool
    default_mhz: int  # default applications (graphics) clock: the target when none is given
    max_mhz: int


def _ids(gpu_indices) -> str:
    return ",".join(str(int(i)) for i in gpu_indices)


def query_cmd(gpu_indices) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={QUERY_FIELDS}", "--format=csv,noheader,nounits", "-i", _ids(gpu_indices)]


def apps_cmd() -> list[str]:
    return ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"]


def apply_cmds(states: list[GpuClockState], target_mhz: int | None) -> list[list[str]]:
    cmds = []
    for s in states:
        if not s.persistence:
            cmds.append(["nvidia-smi", "-i", str(s.index), "-pm", "1"])
        t = target_mhz or s.default_mhz
        cmds.append(["nvidia-smi", "-i", str(s.index), "-lgc", f"{t},{t}"])
    return cmds


def restore_cmds(states: list[GpuClockState]) -> list[list[str]]:
    cmds = [["nvidia-smi", "-i", str(s.index), "-rgc"] for s in states]
    cmds += [["nvidia-smi", "-i", str(s.index), "-pm", "0"] for s in states if not s.persistence]
    return cmds


def parse_query(text: str, gpu_indices) -> list[GpuClockState]:
    """Parse `nvidia-smi --query-gpu=QUERY_FIELDS --format=csv,noheader,nounits`."""
    states = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            raise HarnessError(f"--lock-clocks: cannot parse nvidia-smi output line {line!r}")
        try:
            states.append(GpuClockState(int(parts[0]), parts[1], parts[2].lower() == "enabled",
                                        int(float(parts[3])), int(float(parts[4]))))
        except ValueError:
            raise HarnessError(f"--lock-clocks: cannot parse nvidia-smi output line {line!r}") from None
    want = sorted(int(i) for i in gpu_indices)
    if sorted(s.index for s in states) != want:
        raise HarnessError(f"--lock-clocks: nvidia-smi reported GPUs {[s.index for s in states]}, expected {want}")
    return states


def _run(runner, cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        r = runner(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise HarnessError(f"--lock-clocks: {' '.join(cmd)} failed: {e}") from None
    if r.returncode != 0:
        msg = (r.stderr or r.stdout or "").strip().splitlines()
        raise HarnessError(f"--lock-clocks: {' '.join(cmd)} exited {r.returncode}: {msg[-1] if msg else ''}")
    return r


def read_state(gpu_indices, runner=subprocess.run) -> list[GpuClockState]:
    return parse_query(_run(runner, query_cmd(gpu_indices)).stdout, gpu_indices)


def lock_clocks_plan(gpu_indices, target_mhz: int | None = None, runner=None,
                     states: list[GpuClockState] | None = None) -> list[list[str]]:
    """The exact nvidia-smi calls locked_clocks makes, in order: two read-only queries, the changes, the
    restore. With `runner` (or `states`) the current state is read, so persistence-mode calls and the default
    target are exact; without, persistence is assumed off and the target shows as <default-app-clock>."""
    if states is None and runner is not None:
        states = read_state(gpu_indices, runner)
    if states is None:
        states = [GpuClockState(int(i), "?", False, 0, 0) for i in gpu_indices]
        apply = apply_cmds(states, target_mhz)
        if target_mhz is None:
            apply = [c[:-1] + ["<default-app-clock>,<default-app-clock>"] if "-lgc" in c else c for c in apply]
    else:
        apply = apply_cmds(states, target_mhz)
    return [query_cmd(gpu_indices), apps_cmd()] + apply + restore_cmds(states)


def _check_not_shared(states: list[GpuClockState], apps_csv: str) -> None:
    ours = {s.uuid: s.index for s in states}
    busy = []
    for line in apps_csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1] in ours:
            busy.append(f"GPU {ours[parts[1]]} (pid {parts[0]})")
    if busy:
        raise HarnessError("--lock-clocks: refusing to change clocks of a GPU in use by another process: "
                           + ", ".join(busy))


@contextmanager
def locked_clocks(gpu_indices, target_mhz: int | None = None, runner=subprocess.run):
    """Lock the SM clock of these GPUs for the duration of the block; always restore afterwards.

    Yields the list of GpuClockState read before any change.
    """
    if not gpu_indices:
        raise HarnessError("--lock-clocks: no GPU to lock")
    if os.geteuid() != 0:
        raise HarnessError("--lock-clocks needs root (nvidia-smi -lgc and -pm are root-only); run without it")
    states = read_state(gpu_indices, runner)
    _check_not_shared(states, _run(runner, apps_cmd()).stdout)
    for s in states:
        t = target_mhz or s.default_mhz
        if not (0 < t <= s.max_mhz):
            raise HarnessError(f"--lock-clocks: {t} MHz is outside GPU {s.index}'s range (max {s.max_mhz} MHz)")
    touched: list[GpuClockState] = []  # GPUs whose state we may have changed: restored in finally
    try:
        for s in states:
            touched.append(s)
            for cmd in apply_cmds([s], target_mhz):
                _run(runner, cmd)
        yield states
    finally:
        failures = []
        for cmd in restore_cmds(touched):
            try:
                _run(runner, cmd)
            except HarnessError as e:  # keep restoring the others
                failures.append(str(e))
        if failures:
            msg = "--lock-clocks: could not restore GPU state: " + "; ".join(failures)
            if sys.exc_info()[0] is None:
                raise HarnessError(msg)
            print(f"error: {msg}", file=sys.stderr)  # do not mask the exception already in flight
