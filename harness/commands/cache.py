"""`speedrun cache list | export | import`: the harness's compile cache (harness/compile_cache.py) moved
between nodes as one xz archive (or its parts), and listed."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from harness.compile_cache import (PART_MAGIC, TRITON_INTERMEDIATES, archive_bytes, build_archive, cache_root,
                                   count_entries, export_note, extract_archive, folder_bytes, list_folders,
                                   node_identity, parse_size, part_path, split_parts)
from harness.errors import HarnessError
from harness.fsio import write_bytes_atomic


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_cache_list(cache_dir: str | None = None) -> int:
    root = _root_for_command(cache_dir)
    identity = node_identity()
    folders = list_folders(root)
    print(f"compile cache root: {root}")
    if not folders:
        print("(empty: a campaign fills it)")
        return 0
    for f in folders:
        bad = f.mismatches(identity)
        key = f.key or {}
        script = Path(str(f.about.get("script", "?"))).name
        print(f"{f.path.name}  {f.entries} files, {_mib(f.bytes)}  {script!r} nproc={key.get('nproc')}  "
              f"torch {key.get('torch')}, triton {key.get('triton')}, {key.get('gpu')}  "
              + ("this node" if not bad else "other environment: " + "; ".join(bad)))
        parts = _parts_of(f.path)
        if parts:
            print("    " + ", ".join(f"{name} {_mib(n)}" for name, n in parts))
    total = sum(f.bytes for f in folders)
    print(f"total: {len(folders)} folders, {_mib(total)}")
    return 0


def _parts_of(folder: Path) -> list[tuple[str, int]]:
    """Bytes per cache (inductor, triton, ...), and the share of Triton's intermediate IR (`export --lean`)."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out.append((sub.name, folder_bytes(sub)))
        if sub.name == "triton":
            ir = sum(p.stat().st_size for p in sub.rglob("*") if p.suffix in TRITON_INTERMEDIATES and p.is_file())
            out.append(("(of which Triton IR)", ir))
    return out


def _root_for_command(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    return cache_root({**os.environ, "SPEEDRUN_NO_CACHE": ""})


def cmd_cache_export(out: str | None = None, part_size: str | None = None, cache_dir: str | None = None,
                     lean: bool = False, only: list[str] | None = None) -> int:
    size = parse_size(part_size) if part_size else None
    root = _root_for_command(cache_dir)
    identity = node_identity()
    found = list_folders(root)
    if only:  # one archive per script: pick folders by key (a prefix of the name `cache list` prints)
        picked = set(_pick_keys([f.path.name for f in found], only, f"no cache folder under {root} has that key "
                                                                     f"(`speedrun cache list` names them)"))
        found = [f for f in found if f.path.name in picked]
    folders, skipped = [], []
    for f in found:
        bad = f.mismatches(identity)
        if bad:
            skipped.append(f"{f.path.name} ({'; '.join(bad)})")
        elif f.entries:
            folders.append(f)
    if not folders:
        raise HarnessError(f"no filled compile cache for this node under {root}"
                           f"{' with the keys given' if only else ''} (a campaign fills it)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = Path(out) if out else Path.cwd() / f"speedrun-compile-cache-{stamp}.tar.xz"
    archive, n_files, raw = build_archive(folders, identity, lean=lean)
    if size is None:
        write_bytes_atomic(out_path, archive)
        written = [out_path]
    else:
        parts = split_parts(archive, size)
        written = [write_bytes_atomic(part_path(out_path, k + 1), p) for k, p in enumerate(parts)]
        _remove_stale_parts(out_path, len(parts))
    for s in skipped:
        print(f"skipped {s}")
    for f in folders:
        note = export_note(f.path)
        if note:
            print(note)
    print(f"exported {len(folders)} cache folder(s), {n_files} files, {_mib(raw)} -> {_mib(len(archive))} (xz)")
    for p in written:
        print(f"  {p}  {_mib(p.stat().st_size)}")
    return 0


def _pick_keys(digests: list[str], only: list[str], missing: str) -> list[str]:
    """The digests that one of the keys in `only` starts; a key that starts none (or "", which would start all)
    is an error naming it, before anything is written."""
    for key in only:
        if not key or not any(d.startswith(key) for d in digests):
            raise HarnessError(f"--only {key}: {missing}")
    return [d for d in digests if any(d.startswith(key) for key in only)]


def _remove_stale_parts(out_path: Path, n: int) -> None:
    """Parts beyond n left by an earlier, larger export of the same name would make the next import refuse."""
    k = n + 1
    while part_path(out_path, k).is_file():
        p = part_path(out_path, k)
        with open(p, "rb") as fh:
            if fh.read(len(PART_MAGIC)) != PART_MAGIC:
                break
        p.unlink()
        k += 1


# ---------------------------------------------------------------------------------------------------------
# Import


def cmd_cache_import(files: list[str], cache_dir: str | None = None, only: list[str] | None = None) -> int:
    root = _root_for_command(cache_dir)
    identity = node_identity()
    archive = archive_bytes([Path(f) for f in files])
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".import-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        entries = extract_archive(archive, staging, identity)
        if only:  # e.g. the previous record's folder alone, so that the candidate's own compile stays cold
            keep = set(_pick_keys(sorted(entries), only, "no folder of the archive has that key "
                                                         f"(it holds {', '.join(sorted(entries))})"))
            entries = {d: e for d, e in entries.items() if d in keep}
        for digest, entry in sorted(entries.items()):
            added = _merge_into(staging / digest, root / digest)
            script = Path(str((entry.get("about") or {}).get("script", "?"))).name
            print(f"imported {digest} ({script!r}, nproc={entry['key'].get('nproc')}): {added} new files")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"compile cache root: {root}")
    return 0


def _merge_into(src: Path, dest: Path) -> int:
    """Move src into dest: the whole folder when dest is new, else only the files dest lacks (kept files win:
    a cache entry is named by its content's hash, so a file of the same name holds the same thing)."""
    if not dest.exists():
        n = count_entries(src)
        os.replace(src, dest)
        return n
    added = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dest / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        added += 1
    return added
