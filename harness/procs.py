"""Finding and ending every process of a run, also those a killed harness left behind.

Why not just the process group: a run starts in its own session (a Ctrl-C aimed at the harness reaches it only
through the harness), torchrun may start its ranks in sessions of their own, and after `kill -9` of the
harness nothing that knows the run's pids is left. So every process of a run carries RUN_TAG_VAR in its
environment (torchrun, its ranks and whatever they start inherit it), and a run's processes are found by
reading /proc/<pid>/environ, together with the session and the process tree under the run's leader (for a
process that started with a cleared environment). Ending them is SIGTERM, a grace period, then SIGKILL for
whatever is left, with SIGINT/SIGTERM held off meanwhile so that a second Ctrl-C cannot cut it short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

RUN_TAG_VAR = "SPEEDRUN_RUN_TAG"
KILL_GRACE_S = 10.0
# Tests (and scripts known to shut down slowly or quickly) may change the grace period of SIGTERM.
GRACE_ENV_VAR = "SPEEDRUN_KILL_GRACE_S"
_TAG_PREFIX = RUN_TAG_VAR.encode() + b"="
_PROC = Path("/proc")
_holding = False  # signals_held is active


def kill_grace_s() -> float:
    try:
        value = float(os.environ.get(GRACE_ENV_VAR, KILL_GRACE_S))
    except ValueError:
        return KILL_GRACE_S
    return value if value >= 0 else KILL_GRACE_S


def run_tag(run_dir: str | os.PathLike) -> str:
    """The marker of one run: its folder's absolute path (unique on this node)."""
    return str(Path(run_dir).resolve())


def campaign_tag_prefix(campaign_dir: str | os.PathLike) -> str:
    """Every run of a campaign has a tag starting with this."""
    return str(Path(campaign_dir).resolve() / "runs") + os.sep


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []


def _tag_of(pid: int) -> str | None:
    try:
        data = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    for entry in data.split(b"\0"):
        if entry.startswith(_TAG_PREFIX):
            return entry[len(_TAG_PREFIX):].decode("utf-8", "surrogateescape")
    return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a process, None once it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    try:
        return fields[0], int(fields[1]), int(fields[3])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie holds nothing: it only waits to be reaped


def _protected() -> set[int]:
    """This process and its ancestors: never signalled (a harness started from inside a run keeps living)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        st = _stat(pid)
        pid = st[1] if st else 0
    return out | {1}


def tagged(match: Callable[[str], bool]) -> set[int]:
    """Live processes whose run tag satisfies match."""
    found = set()
    for pid in _pids():
        tag = _tag_of(pid)
        if tag is not None and match(tag) and _alive(pid):
            found.add(pid)
    return found - _protected()


def run_processes(tag: str, leader: int | None = None) -> set[int]:
    """Every live process of one run: tagged with it, or in the leader's session, or below the leader."""
    found = set()
    stats = {}
    for pid in _pids():
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        stats[pid] = st
        if (leader is not None and (pid == leader or st[2] == leader)) or _tag_of(pid) == tag:
            found.add(pid)
    if leader is not None:  # descendants that changed session and cleared their environment
        children: dict[int, list[int]] = {}
        for pid, st in stats.items():
            children.setdefault(st[1], []).append(pid)
        todo = [leader]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found - _protected()


def campaign_leftovers(campaign_dir: str | os.PathLike) -> set[int]:
    """Live processes of any run of this campaign (after a harness died, none should exist)."""
    prefix = campaign_tag_prefix(campaign_dir)
    return tagged(lambda tag: tag.startswith(prefix))


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_processes(find: Callable[[], set[int]], grace_s: float | None = None) -> set[int]:
    """SIGTERM every process find() names, wait up to grace_s for them to exit (looking again for new ones),
    then SIGKILL whatever is left until nothing is. Returns every pid that was signalled."""
    grace_s = kill_grace_s() if grace_s is None else grace_s
    seen = set(find())
    if not seen:
        return seen
    _signal(seen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    live = seen
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        new = find() - seen
        _signal(new, signal.SIGTERM)
        seen |= new
        live = {p for p in seen if _alive(p)} | new
    for _ in range(200):  # SIGKILL cannot be ignored; a few rounds catch children forked meanwhile
        live = {p for p in seen if _alive(p)} | find()
        if not live:
            break
        seen |= live
        _signal(live, signal.SIGKILL)
        time.sleep(0.02)
    return seen


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside are noted, not raised, so clean-up runs to its end; one that
    arrived is raised as KeyboardInterrupt afterwards (unless an exception is already on its way)."""
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield  # nested: the outermost one holds and raises
        return
    pending: list[int] = []

    def note(signum, frame):
        if not pending:
            print("stopping: ending the run's processes first (SIGTERM, then SIGKILL after the grace period)",
                  file=sys.stderr, flush=True)
        pending.append(signum)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if pending:
        raise KeyboardInterrupt
