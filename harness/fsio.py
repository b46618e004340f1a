"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the same folder so that os.replace is a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are for everyone on the node to read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# write_bytes_atomic's temporary files: "." + name + "." + mkstemp's 8 random characters + ".tmp"
_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_tmp(folder: str | os.PathLike, subfolders: tuple[str, ...] = ("plots", "runs/*")) -> list[Path]:
    """Remove the temporary files of atomic writes that a killed process left in folder and its subfolders.
    Only for a folder this process owns (a campaign under its lock): elsewhere they may be in flight."""
    folder = Path(folder)
    dirs = [folder] + [d for pattern in subfolders for d in folder.glob(pattern) if d.is_dir()]
    removed = []
    for d in dirs:
        for p in d.iterdir():
            if _TMP_RE.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


RESERVE_BYTES = 1 << 20


def reserve_space(path: str | os.PathLike, size: int = RESERVE_BYTES) -> Path | None:
    """Hold `size` bytes of the disk in a file, so that when the disk fills up, deleting it leaves room to
    record that the campaign was interrupted. None when the space is not there to begin with."""
    path = Path(path)
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * size)  # written, not a sparse hole: the blocks must really be taken
            f.flush()
            os.fsync(f.fileno())
        return path
    except OSError:
        path.unlink(missing_ok=True)
        return None


def release_space(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed one becomes a HarnessError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise HarnessError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror or e})") from None


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object file, or {} when it is missing, unreadable or not an object: for readers that report
    what they can (telemetry summaries, plots) and must never stop a campaign or a report."""
    try:
        data = read_json(path)
    except HarnessError:
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
