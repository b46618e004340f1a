"""One owner per campaign folder: an exclusive lock held for the whole campaign.

Two harnesses on one folder overwrite each other's run.json and campaign.json, and a `--resume` beside a live
owner would move its running run aside. The lock is flock(2) on `campaign.lock` in the folder: the kernel
drops it when the owner exits in any way (kill -9 included), so a dead owner never blocks a resume, and the
file's content (pid, host, start time, command) only serves to name the owner in the refusal. The lock's
file descriptor is not inherited by the runs (close-on-exec), so a run left running does not hold it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from harness.errors import HarnessError

LOCK_NAME = "campaign.lock"


def _owner_text(raw: bytes) -> str:
    try:
        owner = json.loads(raw.decode("utf-8"))
        return f"pid {int(owner['pid'])} on {owner['host']!s} since {owner['started']!s}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "a process that has not said who it is yet"


def _refusal(folder: Path, fd: int) -> HarnessError:
    return HarnessError(f"{folder} is in use by another speedrun ({_owner_text(os.pread(fd, 4096, 0))}): wait for "
                        f"it to finish, or stop it and then 'speedrun run --resume {folder}'")


def refuse_if_owned(folder: str | os.PathLike) -> None:
    """Raise campaign_lock's refusal when a live process owns folder; nothing (and nothing written) if none."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(Path(folder), fd) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def campaign_lock(folder: str | os.PathLike) -> Iterator[dict]:
    """Hold the folder's lock for the body, or raise HarnessError naming the process that holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise HarnessError(f"{path}: cannot open the campaign lock ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(folder, fd) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": sys.argv}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same; only the owner's name is missing
        yield owner
    finally:
        os.close(fd)  # releases the lock
