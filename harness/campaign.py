"""Campaigns: N runs of one or more arms (a track's script, or any script against a track's target),
one after another on this node, each in its own process group, with everything kept on disk.

The campaign folder's layout is results.py's (the one reader and writer of campaign.json and run.json);
record.md and plots/ are written by the command that runs the campaign, through run_campaign's on_finish.

A run whose process fails, hangs, never reaches its final val_loss line or reports a non-finite loss is
recorded as failed with its reason and the campaign goes on. Ctrl-C stops the current run's whole process
group, marks the campaign interrupted and keeps everything; `--resume` redoes only unfinished runs.
"""

from __future__ import annotations

import datetime as _dt
import errno
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import compile_cache, telemetry
from harness.errors import HarnessError
from harness.extract import is_record_spec, load_record_code, write_code
from harness.fingerprint import campaign_env
from harness.fsio import is_disk_full, release_space, remove_stale_tmp, reserve_space, sha256_file
from harness.lock import campaign_lock, refuse_if_owned
from harness.logs import parse_log
from harness.procs import (RUN_TAG_VAR, campaign_leftovers, end_processes, run_processes, run_tag,
                           signals_held)
from harness.preflight import check_arms
from harness.results import (COMPILE_FIELDS, Campaign, FAILED, FINISHED_FIELDS, FORMAT_VERSION, INTERRUPTED,
                             INTERRUPTED_FIELDS, OK, RUN, Run, finished_runs, is_campaign, load_runs, log_files,
                             read_campaign_json, run_folder, run_log_path, run_of, write_campaign, write_run)
from harness.tracks import REPO_ROOT, Track, load_track, track_from_dict

_STEP_RE = re.compile(r"step:(\d+)/(\d+)\b(?:.*?\bval_loss:\s*(\S+))?")
_TRAIN_TIME_RE = re.compile(r"\btrain_time:(\d+(?:\.\d+)?)ms")
POLL_S = 0.25
# A cold compile can print nothing for longer than any sane hang timeout (the medium record's code, cold, on one
# H200: 925 s of silence in its warm-up while its compile cache grew to 8041 files). A silent run's cache folder
# is counted this often; a new file there is progress, not a hang.
COMPILE_CHECK_S = 15.0
MAX_PENDING_LINE = 1 << 16  # a longer line without a newline is not a step line: only its tail is kept
RESERVE_NAME = ".space-reserve"  # room to mark the campaign interrupted when the disk fills up (fsio.reserve_space)
# Set by the harness for every run; --env must not override them (the seed comes from --seed-base).
HARNESS_ENV = {"SPEEDRUN_SEED": "the harness gives run k the seed seed_base+k: use --seed-base",
               "SPEEDRUN_RUN_INDEX": "the harness numbers the runs",
               "SPEEDRUN_CAMPAIGN_ID": "the harness names the campaign",
               RUN_TAG_VAR: "the harness marks every process of a run with it"}


@dataclass
class Arm:
    """One thing being timed: a script, run against a track's target with nproc processes."""

    name: str
    track: Track
    script: Path
    nproc: int
    env: dict[str, str] = field(default_factory=dict)
    # where the code came from: {"kind": "track" | "script" | "record-log" | "record-folder", ...} (extract.py)
    code: dict = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)  # the environment its record log names (record_pins.py)
    pin_differences: list[str] = field(default_factory=list)  # this node vs pins, from the pre-flight
    downloads: list[dict] = field(default_factory=list)  # run-time downloads and where they come from (prefetch.py)

    def environ(self) -> dict[str, str]:
        """The environment every run of this arm starts from: the harness's own, then the track's, then --env."""
        return {**os.environ, **self.track.env, **self.env}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "track": self.track.to_dict(),
            "script": str(self.script),
            "script_sha256": sha256_file(self.script),
            "nproc": self.nproc,
            "env": self.env,
            "code": self.code,
            "pins": self.pins,
            "pin_differences": self.pin_differences,
            "downloads": self.downloads,
        }

    @staticmethod
    def from_dict(d: dict) -> "Arm":
        t = d["track"]
        track = track_from_dict(t, Path(t["folder"]), source=f"campaign.json arm {d['name']!r}")
        return Arm(name=d["name"], track=track, script=Path(d["script"]), nproc=int(d["nproc"]), env=dict(d["env"]),
                   code=dict(d.get("code") or {}), pins=dict(d.get("pins") or {}),
                   pin_differences=list(d.get("pin_differences") or []), downloads=list(d.get("downloads") or []))


def is_code_spec(spec: str) -> bool:
    """A command-line argument that names code rather than a track: a script, a record log or record folder."""
    return Path(spec).suffix == ".py" or is_record_spec(spec)


def make_arm(spec: str, *, name: str, default_track: Track | None = None, nproc: int | None = None,
             env: dict[str, str] | None = None, code_dir: str | Path | None = None,
             add_files: list[str] | None = None) -> Arm:
    """An arm from a track name (`tiny`), a script path, or a record log / record folder (both run against
    `default_track`'s target). Record code is extracted into code_dir, hashed and run unmodified, with the
    add_files (modules the log does not embed) placed beside it."""
    p = Path(spec)
    pins: dict[str, str] = {}
    if p.suffix == ".py":
        if not p.is_file():
            raise HarnessError(f"script {spec} not found")
        if default_track is None:
            raise HarnessError(f"script {spec} needs a track whose target it is run against")
        track, script = default_track, p.resolve()
        code = {"kind": "script", "from": str(script)}
    elif is_code_spec(spec):
        if default_track is None:
            raise HarnessError(f"record code {spec} needs a track whose target it is run against")
        if code_dir is None:
            raise HarnessError(f"record code {spec}: no folder to extract it into")
        record = load_record_code(p)
        code = write_code(record, code_dir, extra_files=add_files)
        track, script, pins = default_track, Path(code["dir"]) / record.script_name, dict(record.pins)
    else:
        track = load_track(spec)
        script = track.script
        code = {"kind": "track", "track": track.name, "from": str(script)}
    if not script.is_file():
        raise HarnessError(f"track {track.name}: script {script} not found")
    k = nproc if nproc is not None else track.nproc
    if k < 1:
        raise HarnessError(f"--nproc must be at least 1, got {k}")
    return Arm(name=name, track=track, script=script, nproc=k, env=dict(env or {}), code=code, pins=pins)


def parse_env_pairs(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise HarnessError(f"--env takes KEY=VALUE, got {item!r}")
        if key in HARNESS_ENV:
            raise HarnessError(f"--env {key}: the harness sets it for every run ({HARNESS_ENV[key]})")
        out[key] = value
    return out


def new_campaign_dir(track_name: str, out: str | Path | None = None) -> Path:
    if out is not None:
        d = Path(out)
        if is_campaign(d):
            refuse_if_owned(d)  # a live campaign: name its owner
            raise HarnessError(f"{d} already holds a campaign: use --resume {d} to finish it, or another --out")
        return d
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return REPO_ROOT / "results" / track_name / f"{stamp}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------------------------------------
# One run


@dataclass
class RunProgress:
    """What the live display shows; updated from the output reader thread."""

    step: int = 0
    total: int | None = None
    last_val_loss: float | None = None
    last_output: float = field(default_factory=time.time)
    first_step_unix: float | None = None
    first_train_time_ms: float | None = None  # train_time on that first step line (the timed part so far)
    final_step_unix: float | None = None
    last_step_unix: float | None = None  # a run that never finishes: its window ends at its last step line
    nonfinite: str | None = None
    log_offsets: dict = field(default_factory=dict)  # log file -> bytes already read by _follow_log
    # a script that prints its step lines and also writes them to its log is read from both: the first sighting
    # of a line gives its time (the second comes up to a log poll later and would stretch the timed window)
    seen_step_lines: set = field(default_factory=set)
    write_error: OSError | None = None  # output.txt could not be written (a full disk): the run is stopped
    compile_files: int | None = None  # files in the run's compile cache folder at the last count
    last_compile_unix: float | None = None  # when that count last grew
    compile_checked_unix: float = 0.0

    def last_activity(self) -> float:
        """The last sign of life: a line of output (console or log file) or a new compile-cache file."""
        return max(self.last_output, self.last_compile_unix or 0.0)

    def watch_compile(self, cache_dir: Path | None, now: float) -> None:
        """Count the compile cache folder's files, at most every COMPILE_CHECK_S and only while the run is silent
        (a busy run needs no second sign of life, and counting a large cache is not free)."""
        if cache_dir is None or min(now - self.last_output, now - self.compile_checked_unix) < COMPILE_CHECK_S:
            return
        self.compile_checked_unix = now
        n = compile_cache.count_entries(cache_dir)  # a folder not made yet counts 0 (os.walk yields nothing)
        if self.compile_files is not None and n > self.compile_files:
            self.last_compile_unix = now
        self.compile_files = n

    def feed(self, line: str) -> None:
        self.last_output = time.time()
        m = _STEP_RE.search(line)
        if not m or not line.lstrip().startswith("step:"):
            return
        if line.strip() in self.seen_step_lines:
            return
        self.seen_step_lines.add(line.strip())
        step, total = int(m.group(1)), int(m.group(2))
        self.step, self.total = step, total
        if self.first_step_unix is None:
            self.first_step_unix = self.last_output
            timed = _TRAIN_TIME_RE.search(line)
            self.first_train_time_ms = float(timed.group(1)) if timed else None
        self.last_step_unix = self.last_output
        if m.group(3) is not None:
            try:
                loss = float(m.group(3))
            except ValueError:
                loss = math.nan
            self.last_val_loss = loss
            if not math.isfinite(loss):
                self.nonfinite = f"non-finite val_loss ({m.group(3)}) at step {step}/{total}"
            if step == total:
                self.final_step_unix = self.last_output


def arm_environment(arm: Arm) -> dict[str, str]:
    """What every run of the arm gets whatever its seed: what the pre-flight and the clock lock look at."""
    env = arm.environ()
    env["PYTHONUNBUFFERED"] = "1"  # the live display follows the run's output line by line
    if env.get("CUDA_VISIBLE_DEVICES"):
        # NVML numbers GPUs by PCI bus; make CUDA agree so the sampler watches the GPUs the run uses.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    # The competition's layout: DATA_PATH is the folder holding data/fineweb10B/ (--data-path, else the repo
    # root, where `speedrun data` writes); runs start in their own folders, so the scripts' default `.` is wrong.
    env.setdefault("DATA_PATH", str(REPO_ROOT))
    return env


def run_environment(arm: Arm, seed: int, index: int, campaign_id: str) -> dict[str, str]:
    env = arm_environment(arm)
    env["SPEEDRUN_SEED"] = str(seed)
    env["SPEEDRUN_RUN_INDEX"] = str(index)
    env["SPEEDRUN_CAMPAIGN_ID"] = campaign_id
    # The harness's compile cache (Inductor, Triton and its autotune results) for this arm's key, set last:
    # through the environment only, the script and its compile flags stay as they are. Stale state from an
    # outer harness never reaches run.json. Only for a run about to start: it makes the cache folder and counts
    # its entries (cold or warm).
    for name in compile_cache.STATE_VARIABLES:
        env.pop(name, None)
    env.update(compile_cache.environment_for_run(arm, env))
    return env


def launch_command(arm: Arm) -> list[str]:
    """torchrun for every run, one process included: the competition's scripts read RANK, WORLD_SIZE and
    LOCAL_RANK and open a process group unconditionally (their run.sh is torchrun even on one GPU).
    `python -m torch.distributed.run` is torchrun, taken from the same interpreter as the harness."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={arm.nproc}",
            str(arm.script)]


def _end_run(proc: subprocess.Popen, tag: str) -> int:
    """End every process of the run (ranks, their children, whatever left the session) and reap the leader:
    SIGTERM, the grace period, SIGKILL. A second Ctrl-C meanwhile cannot skip the SIGKILL. The leader's exit
    code."""
    with signals_held():
        end_processes(lambda: run_processes(tag, proc.pid))
        return proc.wait()


def execute_run(arm: Arm, run_dir: Path, *, index: int, seed: int, campaign_id: str,
                on_progress: Callable[[RunProgress], None] | None = None, telemetry: bool = True) -> Run:
    """Run one arm once in run_dir; return the Run as run.json holds it (also written). KeyboardInterrupt propagates
    after every process of the run is ended and an 'interrupted' run.json is written; so does an OSError of
    a full disk (output.txt could not be written)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = launch_command(arm)
    env = run_environment(arm, seed, index, campaign_id)
    tag = env[RUN_TAG_VAR] = run_tag(run_dir)  # inherited by every process of the run: procs finds them by it
    progress = RunProgress()
    cache_dir = Path(env["SPEEDRUN_COMPILE_CACHE"]) if env.get("SPEEDRUN_COMPILE_CACHE") else None
    if cache_dir is not None:
        progress.compile_files = int(env.get("SPEEDRUN_COMPILE_CACHE_ENTRIES", "0"))
    sampler = _start_telemetry(run_dir, arm, env) if telemetry else None
    started = time.time()
    status, reason, returncode = OK, None, None
    out_path = run_dir / "output.txt"
    # output.txt holds the run's bytes exactly as written (undecodable and NUL bytes too); readers decode it
    # leniently.
    with open(out_path, "wb", buffering=0) as out:  # unbuffered: nothing is left to fail at close
        _write_all(out, f"# harness: {' '.join(cmd)}  (cwd={run_dir}, SPEEDRUN_SEED={seed})\n".encode())
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        reader = threading.Thread(target=_pump, args=(proc.stdout, out, progress), daemon=True)
        reader.start()
        last_size = -1
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                now = time.time()
                logs = log_files(run_dir)
                size = sum(p.stat().st_size for p in logs)
                if size != last_size:  # a script that logs only to its file is still alive
                    last_size, progress.last_output = size, now
                _follow_log(logs, progress)
                progress.watch_compile(cache_dir, now)
                if on_progress:
                    on_progress(progress)
                if progress.write_error:
                    break
                if progress.nonfinite:
                    status, reason = FAILED, progress.nonfinite
                elif now - started > arm.track.timeout_s:
                    status, reason = FAILED, f"timed out after {arm.track.timeout_s:.0f} s (track timeout_s)"
                elif now - progress.last_activity() > arm.track.hang_timeout_s:
                    status, reason = FAILED, (f"hung: no new output for {arm.track.hang_timeout_s:.0f} s "
                                              + ("and no new compile-cache file " if cache_dir else "")
                                              + f"(last step seen {progress.step}/{progress.total})")
                if status == FAILED:
                    break
        except KeyboardInterrupt:
            with signals_held():
                _end_run(proc, tag)
                reader.join(timeout=5)
                _stop_telemetry(sampler)
                # a run cut short after its compile still tells how long the compile took, and from what
                _write_interrupted(run_dir, arm, index, seed, started, "interrupted (Ctrl-C or SIGTERM)",
                                   compile_warmup_s=compile_cache.compile_warmup_s(
                                       started, progress.first_step_unix, progress.first_train_time_ms),
                                   compile_record=compile_cache.finish_run_record(env))
            raise
        returncode = _end_run(proc, tag)  # also what a finished leader left behind
        reader.join(timeout=5)
    ended = time.time()
    _stop_telemetry(sampler)
    if progress.write_error:
        _write_interrupted(run_dir, arm, index, seed, started, f"{out_path}: {progress.write_error.strerror}")
        raise progress.write_error
    run = _result_from_logs(run_dir, arm, index=index, seed=seed, status=status, reason=reason,
                            returncode=returncode, started=started, ended=ended, progress=progress, env=env)
    if telemetry:
        run.telemetry = _summarize_telemetry(run_dir, run.timed_window_unix)
    return write_run(run_dir, run, FINISHED_FIELDS + (("telemetry",) if telemetry else ()))


def _write_interrupted(run_dir: Path, arm: Arm, index: int, seed: int, started: float, reason: str,
                       compile_warmup_s: float | None = None, compile_record: dict | None = None) -> None:
    """Best effort: a run without run.json is redone by --resume all the same. A run stopped after its
    compile (compile_record given) still tells how long the compile took, and from what cache."""
    run = Run(index=index, arm=arm.name, seed=seed, status=INTERRUPTED, reason=reason, started_unix=started,
              ended_unix=time.time(), compile_warmup_s=compile_warmup_s, compile_cache=compile_record)
    try:
        write_run(run_dir, run, INTERRUPTED_FIELDS + (COMPILE_FIELDS if compile_record is not None else ()))
    except OSError:
        pass


def _write_all(out, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _pump(stream, out, progress: RunProgress) -> None:
    """Copy the run's output to output.txt byte for byte and feed its lines to the progress. A failed write
    (a full disk) is noted for the main loop, which stops the run; the pipe is still drained meanwhile, so
    the run never blocks on it and no false hang is reported."""
    pending = b""
    while chunk := stream.read1(1 << 16):
        progress.last_output = time.time()
        if progress.write_error is None:
            try:
                _write_all(out, chunk)
            except OSError as e:
                progress.write_error = e
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            progress.feed(line.decode("utf-8", errors="replace"))
        pending = pending[-MAX_PENDING_LINE:]
    if pending:
        progress.feed(pending.decode("utf-8", errors="replace"))


def _follow_log(log_files: list[Path], progress: RunProgress) -> None:
    """Scripts that print step lines only to their log file still drive the live display."""
    if not log_files:
        return
    f = log_files[-1]
    pos = progress.log_offsets.get(f, 0)
    try:
        with open(f, "rb") as fh:
            fh.seek(pos)
            chunk = fh.read()
    except OSError:
        return
    # Only whole lines; a partial last line waits for the next poll.
    cut = chunk.rfind(b"\n") + 1
    for line in chunk[:cut].decode("utf-8", errors="replace").splitlines():
        if line.startswith("step:"):
            progress.feed(line)
    progress.log_offsets[f] = pos + cut


def _result_from_logs(run_dir: Path, arm: Arm, *, index, seed, status, reason, returncode, started, ended,
                      progress: RunProgress, env: dict[str, str] | None = None) -> Run:
    log_path = run_log_path(run_dir)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    parsed = parse_log(text)
    if status == OK:
        if returncode != 0:
            status, reason = FAILED, f"exited with code {returncode}: {_failure_line(run_dir / 'output.txt')}"
        elif not parsed.reached_final:
            status, reason = FAILED, (f"never printed its final val_loss line (last step seen "
                                        f"{parsed.steps[-1].step if parsed.steps else 'none'}"
                                        f"/{parsed.total_steps or '?'})")
        elif parsed.final_val_loss is None or not math.isfinite(parsed.final_val_loss):
            status, reason = FAILED, f"non-finite final val_loss ({parsed.final_val_loss})"
    window = None
    if progress.first_step_unix:
        window = [progress.first_step_unix, progress.final_step_unix or progress.last_step_unix]
    expected = arm.track.final_step
    return Run(
        index=index,
        arm=arm.name,
        seed=seed,
        status=status,
        reason=reason,
        returncode=returncode,
        command=launch_command(arm),
        nproc=arm.nproc,
        started_unix=started,
        ended_unix=ended,
        wall_s=round(ended - started, 3),
        log_file=str(log_path.relative_to(run_dir)),
        final_step=parsed.final_step,
        total_steps=parsed.total_steps,
        expected_final_step=expected,
        final_val_loss=parsed.final_val_loss,
        train_time_ms=parsed.final_train_time_ms,
        train_time_s=(parsed.final_train_time_ms / 1000.0) if parsed.final_train_time_ms is not None else None,
        val_curve=[list(p) for p in parsed.val_curve],
        peak_memory_allocated_mib=parsed.peak_memory_allocated_mib,
        peak_memory_reserved_mib=parsed.peak_memory_reserved_mib,
        source_sha256=parsed.source_sha256,
        versions={"python": parsed.python_version, "torch": parsed.torch_version,
                  "cuda": parsed.cuda_version, "triton": parsed.triton_version},
        gpus=parsed.gpus,
        timed_window_unix=window,
        log_problems=parsed.problems,
        # process start -> start of the timed part (compile and warm-up), and the cache it started from
        compile_warmup_s=compile_cache.compile_warmup_s(
            started, progress.first_step_unix, progress.first_train_time_ms),
        compile_cache=compile_cache.finish_run_record(env or {}),
    )


def _failure_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return failure_reason(text)


_RANK_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s?")
_TORCH_LOG_LINE = re.compile(r"^\[?[IWEF]\d{4} \d\d:\d\d:\d\d")  # glog/c10 lines: torchrun's, NCCL's, ...
_BANNER_LINE = re.compile(r"^[=*\-]{3,}$")
_ERROR_LINE = re.compile(r"^(?:(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?|error:.*)$")
_LOADER_FRAME = re.compile(r'^File ".*", line \d+, in (\w*(?:data|loader|shard|batch)\w*)$', re.I)
_ROOT_CAUSE_SIGNAL = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*-\d+.*?\((SIG\w+)\)", re.S)


def failure_reason(output: str) -> str:
    """A failed run's reason from its output: the script's own last error line (the `SomeError: ...` line
    of its traceback, an `error: ...` line, else its last line), never torchrun's failure report or banners.
    The `[rankN]:` prefix torchrun adds to a rank's lines is removed."""
    lines = output.splitlines()
    if lines and lines[0].startswith("# harness:"):
        lines = lines[1:]
    # torchrun's report starts with its "failed (exitcode: ...)" log line, or its own traceback that
    # ends in ChildFailedError: nothing from there on is the script's.
    cut = next((i for i, ln in enumerate(lines) if _TORCH_LOG_LINE.match(ln) and "failed (exitcode" in ln), None)
    if cut is None:
        failed = next((i for i, ln in enumerate(lines) if "ChildFailedError" in ln), None)
        if failed is not None:
            tracebacks = [i for i in range(failed) if lines[i].startswith("Traceback (most recent call last)")]
            cut = tracebacks[-1] if tracebacks else failed
    report, lines = "\n".join(lines[cut:]) if cut is not None else "", lines[:cut]
    own = []
    for ln in lines:
        ln = _RANK_PREFIX.sub("", ln).strip()
        if ln and not _TORCH_LOG_LINE.match(ln) and not _BANNER_LINE.match(ln) \
                and not ln.startswith("Setting OMP_NUM_THREADS environment variable"):
            own.append(ln)
    errors = [ln for ln in own if _ERROR_LINE.match(ln)]
    line = (errors or own or ["(no output)"])[-1][:200]
    if line.endswith("StopIteration"):
        # The competition's loaders are generators over the shard files: a run that needs more tokens than the
        # shards hold (the proxy data's one 5 M-token val shard, say) dies of this, often after a long compile.
        loaders = [m.group(1) for m in map(_LOADER_FRAME.search, own) if m]
        if loaders:
            line += (f" (its data loader {loaders[-1]} ran out of shard files: give it more shards, or more names for"
                     " the same ones)")
    killed = _ROOT_CAUSE_SIGNAL.search(report)
    if killed and not errors:  # a rank killed by a signal (the OOM killer, a kill -9) prints no error itself
        return f"rank {killed.group(1)} was killed by {killed.group(2)}; its last line: {line}"
    return line


# ---------------------------------------------------------------------------------------------------------
# Telemetry: a missing driver or NVML, or a sampler that dies, never stops a run.


def gpu_indices(arm: Arm, env: dict[str, str]) -> list[int]:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        try:
            return [int(x) for x in visible.split(",") if x.strip()][: arm.nproc]
        except ValueError:
            pass
    return list(range(arm.nproc))


def _start_telemetry(run_dir: Path, arm: Arm, env: dict[str, str]):
    return telemetry.start_sampler(run_dir, gpu_indices(arm, env))  # None without NVML


def _stop_telemetry(sampler) -> None:
    if sampler is not None:
        sampler.stop()


def _summarize_telemetry(run_dir: Path, window) -> dict | None:
    # None when nothing was recorded; a sampler that died is reported by the summary itself.
    return telemetry.summarize_run(run_dir, tuple(window) if window else None)


def environment_record(arm: Arm) -> dict:
    """campaign.json's environment: fingerprint, pins, mismatches and the record-grade verdict."""
    return campaign_env(arm.track)


# ---------------------------------------------------------------------------------------------------------
# The campaign


def preflight(arms: list[Arm]) -> None:
    """Before anything is launched: GPUs, CUDA and data, with the environment each arm's runs get."""
    check_arms(arms, [arm_environment(a) for a in arms])


def run_campaign(out_dir: str | Path, arms: list[Arm], schedule: list[str], *,
                 stop_rule: Callable[[list[dict]], str | None] | None = None, telemetry: bool = True,
                 resume: bool = False, kind: str = RUN, seeds: list[int] | None = None,
                 extra: dict | None = None, display=None, on_finish: Callable[[Path], None] | None = None) -> Path:
    """Run `schedule` (arm names, in order) into out_dir, holding the folder's lock throughout. Returns
    out_dir. on_finish(out_dir) is called, still under the lock, once campaign.json says how the campaign
    ended (complete, stopped early or interrupted): the command writes record.md there. display (the command's
    console view, commands/progress.py) is told of every run's start, progress and end. Raises
    KeyboardInterrupt after a clean stop on Ctrl-C (campaign.json then says 'interrupted'),
    and HarnessError when the folder has another owner or the disk fills up (then also 'interrupted')."""
    out_dir = Path(out_dir).resolve()
    by_name = {a.name: a for a in arms}
    unknown = sorted(set(schedule) - set(by_name))
    if unknown:
        raise HarnessError(f"schedule names unknown arms: {', '.join(unknown)}")
    seeds = seeds if seeds is not None else list(range(len(schedule)))
    preflight(arms)  # every command that runs a campaign (run, resume, compare, scaling) checks here
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
    with campaign_lock(out_dir):
        remove_stale_tmp(out_dir)  # of a harness killed mid-write; no other writer exists while we hold the lock
        if resume:
            campaign = read_campaign_json(out_dir)
            if campaign.get("status") == "complete":  # finished while we waited to look
                raise HarnessError(f"{out_dir}: this campaign is already complete")
            _end_leftovers(out_dir)
        else:
            if is_campaign(out_dir):  # another harness made it between our check and our lock
                raise HarnessError(f"{out_dir} already holds a campaign: use --resume {out_dir} to finish it, "
                                   f"or another --out")
            first = arms[0]
            campaign = Campaign(
                format=FORMAT_VERSION,
                kind=kind,
                id=out_dir.name,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                command=sys.argv,
                track=first.track.to_dict(),
                arms={a.name: a.to_dict() for a in arms},
                schedule=schedule,
                seeds=seeds,
                telemetry=telemetry,
                environment=environment_record(first),
                compile_cache=compile_cache.campaign_record(arms),
                **(extra or {}),  # compare, scaling, until_significant
            ).to_json()
        campaign["status"] = "running"
        campaign.pop("stop_reason", None)
        write_campaign(out_dir, campaign)
        reserve = reserve_space(out_dir / RESERVE_NAME)
        try:
            _run_schedule(out_dir, campaign, by_name, schedule, seeds, stop_rule=stop_rule, telemetry=telemetry,
                          display=display or QuietDisplay(), reserve=reserve,
                          on_finish=on_finish or (lambda d: None))
        finally:
            release_space(reserve)
    return out_dir


class QuietDisplay:
    """A campaign's progress, shown nowhere: what run_campaign tells when the command gives no display."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run_start(self, k: int, arm: str) -> None:
        pass

    def run_progress(self, progress: RunProgress) -> None:
        pass

    def run_done(self, k: int, result: Run) -> None:
        pass


def _end_leftovers(out_dir: Path) -> None:
    """Processes of this campaign's runs that a harness killed with -9 (or a lost terminal) left running:
    ended before a resumed run starts beside them."""
    with signals_held():
        ended = end_processes(lambda: campaign_leftovers(out_dir))
    if ended:
        print(f"resume: ended {len(ended)} process(es) an earlier harness of this campaign left running "
              f"(pid {', '.join(map(str, sorted(ended)))})", file=sys.stderr, flush=True)


def _run_schedule(out_dir: Path, campaign: dict, by_name: dict[str, Arm], schedule: list[str], seeds: list[int],
                  *, stop_rule, telemetry: bool, display, reserve: Path | None, on_finish) -> None:
    arms = list(by_name.values())
    completed = finished_runs(load_runs(out_dir))
    done = {r.index for r in completed}
    stop_reason = stop_rule(completed) if (stop_rule and completed) else None
    k, arm = None, None
    try:
        with display:
            for k, arm_name in enumerate(schedule):
                if stop_reason:
                    break
                if k in done:
                    display.run_done(k, run_of(completed, k))
                    continue
                this_run = run_folder(out_dir, k)
                if this_run.exists():  # left by an interrupted attempt: keep it aside, never delete it
                    this_run.rename(this_run.with_name(f"{k}.interrupted-{int(time.time())}"))
                arm = by_name[arm_name]
                display.run_start(k, arm_name)
                result = execute_run(arm, this_run, index=k, seed=seeds[k], campaign_id=campaign["id"],
                                     on_progress=display.run_progress, telemetry=telemetry)
                if result.status == FAILED and _failed_for_disk_space(this_run):
                    # the script itself hit the full disk: not the code's failure, so the run is redone
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(this_run))
                completed.append(result)
                display.run_done(k, result)
                if stop_rule:
                    stop_reason = stop_rule(completed)
        campaign["status"] = "stopped-early" if stop_reason else "complete"
        if stop_reason:
            campaign["stop_reason"] = stop_reason
        campaign["triton_autotune"] = compile_cache.autotune_record(arms)  # the configs runs 2..N used (issue 13)
        write_campaign(out_dir, campaign)
        on_finish(out_dir)
    except KeyboardInterrupt:
        with signals_held():  # a second Ctrl-C must not leave the campaign marked running
            end_processes(lambda: campaign_leftovers(out_dir))  # one interrupted between fork and bookkeeping
            campaign["status"] = INTERRUPTED
            campaign["triton_autotune"] = compile_cache.autotune_record(arms)
            write_campaign(out_dir, campaign)
            on_finish(out_dir)
        raise
    except OSError as e:
        if not is_disk_full(e):
            raise
        with signals_held():
            end_processes(lambda: campaign_leftovers(out_dir))
            release_space(reserve)  # the room to record what happened
            marked = _mark_interrupted_by_disk(out_dir, campaign, k, arm, seeds)
        where = e.filename or out_dir
        raise HarnessError(f"{where}: no space left on device; campaign {out_dir} is "
                           f"{'marked interrupted' if marked else 'left resumable'}, finished runs kept: free some "
                           f"space, then 'speedrun run --resume {out_dir}'") from None


def _failed_for_disk_space(run_dir: Path) -> bool:
    """A run that failed because its disk filled up (the script's own writes got ENOSPC)."""
    try:
        free = os.statvfs(run_dir)
        if free.f_bavail * free.f_frsize < 64 * 1024:
            return True
        with open(run_dir / "output.txt", "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            tail = f.read()
    except OSError:
        return False
    return b"No space left on device" in tail or b"Disk quota exceeded" in tail


def _mark_interrupted_by_disk(out_dir: Path, campaign: dict, k: int | None, arm: Arm | None, seeds) -> bool:
    """campaign.json and the current run's run.json say 'interrupted'; False if even that did not fit."""
    if k is not None and arm is not None and run_folder(out_dir, k).is_dir():
        _write_interrupted(run_folder(out_dir, k), arm, k, seeds[k], time.time(), "no space left on device")
    campaign["status"] = INTERRUPTED
    campaign["stop_reason"] = "no space left on device"
    try:
        write_campaign(out_dir, campaign)
        return True
    except OSError:
        return False
