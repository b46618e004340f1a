"""`speedrun data fineweb`: download (or adopt with --from) FineWeb shards into ROOT/data/fineweb10B/ with a
sha256 manifest (harness/data.py)."""

from __future__ import annotations

from pathlib import Path

from harness import data  # through the module: tests stand in for data.hf_download
from harness.errors import HarnessError
from harness.tracks import load_track


def cmd_data(dataset: str, shards: int | None = None, data_path: str | None = None, from_dir: str | None = None,
             track: str = data.DEFAULT_TRACK) -> int:
    if dataset != "fineweb":
        raise HarnessError(f"unknown dataset {dataset!r} (known: fineweb)")
    if shards is None:
        shards = int(load_track(track).data.get("train_shards", 1))
    root = Path(data_path) if data_path else data.DEFAULT_ROOT
    folder = data.shard_folder(root)
    names = data.wanted_shards(shards)
    if from_dir is not None:
        src = Path(from_dir)
        if not src.is_dir():
            raise HarnessError(f"--from {from_dir}: not a folder")
        missing = [n for n in names if not (src / n).is_file() and not (folder / n).is_file()]
        if missing:
            have = sum(1 for n in names[1:] if (src / n).is_file())
            raise HarnessError(f"--from {from_dir}: {len(missing)} of {len(names)} shard(s) missing "
                               f"({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}); "
                               f"it has {have} train shard(s), asked for {shards}")
        fetch, source = data.adopt_from(src), f"adopted from {src.resolve()}"
    else:
        fetch, source = data.hf_download, f"huggingface:{data.HF_REPO}"
    manifest = data.ensure_shards(folder, names, fetch, source)
    print(f"data: {folder} holds {len(manifest['shards'])} shard(s), "
          f"{manifest['tokens']['train']:,} train and {manifest['tokens']['val']:,} val tokens; "
          f"runs find them {'by default' if data_path is None else f'with --data-path {root}'}")
    return 0
