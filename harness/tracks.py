"""Tracks: `tracks/<name>/track.toml`, the contract between the harness and a track's frozen code.

A track never imports the harness. The harness reads this file, runs the track's script, and passes it
settings only through environment variables (see `run_environment` in campaign.py).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.fsio import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKS_DIR = REPO_ROOT / "tracks"


@dataclass
class Track:
    name: str
    folder: Path
    script: Path  # absolute path of the script a run executes
    nproc: int  # GPUs (processes) per run on the record hardware
    target: float  # mean final val loss must be below this
    alpha: float  # one-sided t-test threshold
    final_step: int | None  # the N of the final `step:N/N` line; None when unknown (a foreign --script)
    timeout_s: float  # wall-clock limit of one run
    hang_timeout_s: float  # a run printing nothing new for this long is stopped as hung
    description: str = ""
    frozen: dict[str, str] = field(default_factory=dict)  # file (relative to folder) -> sha256
    env: dict[str, str] = field(default_factory=dict)  # environment every run gets
    pins: dict[str, str] = field(default_factory=dict)  # record environment: driver, cuda, torch, triton, gpu
    reference: dict = field(default_factory=dict)  # competition repo, revision, file hashes
    data: dict = field(default_factory=dict)  # data needs: shards, default path
    uses_gpu: bool = True

    def frozen_mismatches(self) -> list[str]:
        """Frozen files whose sha256 differs from track.toml (or that are missing)."""
        bad = []
        for rel, want in self.frozen.items():
            p = self.folder / rel
            if not p.is_file():
                bad.append(f"{rel}: missing")
            elif sha256_file(p) != want:
                bad.append(f"{rel}: sha256 differs from track.toml")
        return bad

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "script": str(self.script),
            "nproc": self.nproc,
            "target": self.target,
            "alpha": self.alpha,
            "final_step": self.final_step,
            "timeout_s": self.timeout_s,
            "hang_timeout_s": self.hang_timeout_s,
            "frozen": self.frozen,
            "env": self.env,
            "pins": self.pins,
            "reference": self.reference,
            "data": self.data,
            "uses_gpu": self.uses_gpu,
        }


def available_tracks() -> list[str]:
    return sorted(p.parent.name for p in TRACKS_DIR.glob("*/track.toml"))


def load_track(name_or_path: str | Path) -> Track:
    """Load a track by name (`tiny`) or by the path of its folder or its track.toml."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        toml_path = p
    elif p.is_dir():
        toml_path = p / "track.toml"
    else:
        toml_path = TRACKS_DIR / str(name_or_path) / "track.toml"
    if not toml_path.is_file():
        known = ", ".join(available_tracks()) or "none"
        raise HarnessError(f"unknown track {str(name_or_path)!r} (known tracks: {known})")
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{toml_path}: not valid TOML ({e})") from None
    return track_from_dict(raw, toml_path.parent.resolve(), source=str(toml_path))


def track_from_dict(raw: dict, folder: Path, source: str = "track.toml") -> Track:
    def need(key, kind):
        if key not in raw:
            raise HarnessError(f"{source}: missing required key {key!r}")
        val = raw[key]
        if kind is float and isinstance(val, int):
            val = float(val)
        if not isinstance(val, kind) or isinstance(val, bool):
            raise HarnessError(f"{source}: {key!r} must be {kind.__name__}, got {val!r}")
        return val

    def opt(key, kind, default):
        return need(key, kind) if raw.get(key) is not None else default

    def table(key) -> dict:
        val = raw.get(key, {})
        if not isinstance(val, dict):
            raise HarnessError(f"{source}: [{key}] must be a table of key = value, got {val!r}")
        return val

    name = need("name", str)
    script = folder / need("script", str)
    nproc = need("nproc", int)
    target = need("target", float)
    alpha = opt("alpha", float, 0.01)
    timeout_s = opt("timeout_s", float, 3600.0)
    hang_timeout_s = opt("hang_timeout_s", float, 600.0)
    final_step = opt("final_step", int, None)
    pins = {k: str(v) for k, v in table("pins").items()}
    if "gpu_count" in pins and not pins["gpu_count"].isdigit():
        raise HarnessError(f"{source}: [pins] gpu_count must be a whole number, got {pins['gpu_count']!r}")
    if nproc < 1:
        raise HarnessError(f"{source}: nproc must be >= 1")
    if not (0 < alpha < 1):
        raise HarnessError(f"{source}: alpha must be in (0, 1)")
    if not math.isfinite(target):
        raise HarnessError(f"{source}: target must be finite")
    if timeout_s <= 0 or hang_timeout_s <= 0:
        raise HarnessError(f"{source}: timeouts must be positive")
    return Track(
        name=name,
        folder=folder,
        script=script,
        nproc=nproc,
        target=target,
        alpha=alpha,
        final_step=final_step,
        timeout_s=timeout_s,
        hang_timeout_s=hang_timeout_s,
        description=str(raw.get("description", "")),
        frozen=dict(table("frozen")),
        env={k: str(v) for k, v in table("env").items()},
        pins=pins,
        reference=dict(table("reference")),
        data=dict(table("data")),
        uses_gpu=bool(raw.get("uses_gpu", True)),
    )
