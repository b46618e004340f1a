"""`speedrun data fineweb [--shards N] [--track T] [--data-path ROOT] [--from DIR]`: get FineWeb-10B GPT-2 token
shards, with a manifest.

The competition's layout: shards live in `ROOT/data/fineweb10B/`, and runs get DATA_PATH=ROOT (the folder that
holds `data/`; scripts read `$DATA_PATH/data/fineweb10B/fineweb_{train,val}_*.bin`). ROOT defaults to the
repository root, which is also where campaigns look without --data-path. --shards defaults to the track's
`[data] train_shards` (short: 9).

Shards come from the Hugging Face dataset `kjj0/fineweb10B-gpt2` (the competition's source): the validation
shard `fineweb_val_000000.bin` and the train shards `fineweb_train_%06d.bin` for 1..N. Every shard's header is
checked (magic 20240520, version 1, token count matching the file size) and its sha256 recorded in
`manifest.json` in the data folder. A later call verifies the shards against the manifest and downloads only
what is missing. `--from DIR` adopts shards that already exist elsewhere (for example the offline proxy
shards) by copying them in and writing the same manifest. The competition's downloader checks no hashes.
"""

from __future__ import annotations

import shutil
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.fsio import read_json, sha256_file, write_json_atomic
from harness.tracks import REPO_ROOT

HF_REPO = "kjj0/fineweb10B-gpt2"
MAGIC = 20240520
VERSION = 1
HEADER_BYTES = 256 * 4
MAX_TRAIN_SHARDS = 103
DEFAULT_ROOT = REPO_ROOT  # DATA_PATH of runs without --data-path
DEFAULT_TRACK = "short"
MANIFEST = "manifest.json"

VAL_SHARD = "fineweb_val_000000.bin"


def shard_folder(root: str | Path) -> Path:
    """Where the shards of DATA_PATH=root are: root/data/fineweb10B, as the competition's scripts read them."""
    return Path(root) / "data" / "fineweb10B"


def train_shard(i: int) -> str:
    return f"fineweb_train_{i:06d}.bin"


def wanted_shards(shards: int) -> list[str]:
    if not 1 <= shards <= MAX_TRAIN_SHARDS:
        raise HarnessError(f"--shards must be between 1 and {MAX_TRAIN_SHARDS}, got {shards}")
    return [VAL_SHARD] + [train_shard(i) for i in range(1, shards + 1)]


def read_header(path: Path) -> int:
    """Token count of a shard after checking its header and size; HarnessError naming the file otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < HEADER_BYTES:
        raise HarnessError(f"{path}: too short for a shard header ({size} bytes)")
    magic, version, tokens = struct.unpack("<3i", head[:12])
    if magic != MAGIC:
        raise HarnessError(f"{path}: bad magic {magic} (expected {MAGIC}); not a FineWeb token shard")
    if version != VERSION:
        raise HarnessError(f"{path}: unsupported shard version {version} (expected {VERSION})")
    expected = HEADER_BYTES + 2 * tokens
    if tokens < 0 or size != expected:
        raise HarnessError(f"{path}: header says {tokens} tokens ({expected} bytes) but the file has {size} bytes")
    return tokens


def shard_entry(path: Path, source: str) -> dict:
    tokens = read_header(path)
    return {"file": path.name, "tokens": tokens, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "source": source}


def hf_download(filename: str, dest_dir: Path) -> Path:
    """Download one file of the dataset into dest_dir (huggingface_hub, imported only when needed)."""
    try:
        from huggingface_hub import hf_hub_download  # deferred: optional, only for a download
    except ImportError:
        raise HarnessError("downloading FineWeb needs the huggingface_hub package (pip install huggingface_hub), "
                           "or adopt existing shards with --from DIR") from None
    try:
        got = hf_hub_download(repo_id=HF_REPO, filename=filename, repo_type="dataset", local_dir=str(dest_dir))
    except Exception as e:  # network, authentication, missing file: one clear line
        raise HarnessError(f"download of {filename} from {HF_REPO} failed: {type(e).__name__}: {e}") from None
    return Path(got)


def load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return {}
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", []), list):
        raise HarnessError(f"{path}: not a shard manifest (expected an object with a 'shards' list)")
    for e in manifest.get("shards", []):
        if not (isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("tokens"), int)):
            raise HarnessError(f"{path}: a shard entry lacks its file name or token count: {e!r} "
                               f"(delete the manifest to rebuild it from the shards)")
    return manifest


def verify_shard(path: Path, entry: dict) -> None:
    """Check a shard against its manifest entry: header, size, sha256."""
    tokens = read_header(path)
    if tokens != entry.get("tokens"):
        raise HarnessError(f"{path}: {tokens} tokens, manifest says {entry.get('tokens')}")
    if sha256_file(path) != entry.get("sha256"):
        raise HarnessError(f"{path}: sha256 differs from {MANIFEST} (corrupt or replaced; delete it to re-fetch)")


def ensure_shards(folder: Path, names: list[str], fetch: Callable[[str, Path], Path], source: str,
                  log: Callable[[str], None] = print) -> dict:
    """Make folder hold every name, verified; fetch what is missing; rewrite the manifest atomically.

    Shards already in the manifest are verified (a mismatch is an error, never silently replaced); shards
    present but unlisted are validated and added; missing ones are fetched and validated. The manifest is
    written after each new shard, so an interrupted call keeps what it already verified.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(folder)
    entries = {e["file"]: e for e in manifest.get("shards", [])}

    def build() -> dict:
        ordered = sorted(entries.values(), key=lambda e: (not e["file"].startswith("fineweb_val"), e["file"]))
        return {
            "dataset": "fineweb10B-gpt2",
            "format": "256 x int32 LE header [20240520, 1, n_tokens], then n_tokens x uint16 GPT-2 token ids",
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tokens": {"val": sum(e["tokens"] for e in ordered if e["file"].startswith("fineweb_val")),
                       "train": sum(e["tokens"] for e in ordered if e["file"].startswith("fineweb_train"))},
            "shards": ordered,
        }

    for name in names:
        path = folder / name
        if name in entries and path.exists():
            verify_shard(path, entries[name])
            log(f"data: {name} ok (verified)")
            continue
        if not path.exists():
            got = fetch(name, folder)
            if Path(got).resolve() != path.resolve():
                shutil.move(str(got), path)
            log(f"data: {name} fetched")
        entries[name] = shard_entry(path, source)
        write_json_atomic(folder / MANIFEST, build())
    if not (folder / MANIFEST).exists():
        write_json_atomic(folder / MANIFEST, build())
    return build()


def adopt_from(src: Path) -> Callable[[str, Path], Path]:
    """A fetcher that copies shards from an existing folder; names the missing ones all at once."""
    def fetch(name: str, dest: Path) -> Path:
        s = src / name
        if not s.is_file():
            raise HarnessError(f"--from {src}: {name} is missing there")
        read_header(s)  # refuse a bad shard before copying it
        tmp, final = dest / f".{name}.partial", dest / name
        try:
            shutil.copyfile(s, tmp)
            tmp.replace(final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise HarnessError(f"cannot copy {s} to {dest}: {e.strerror or e}") from None
        return final
    return fetch
