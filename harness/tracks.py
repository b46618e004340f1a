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
from harness.rules import ALPHA

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
    data: dict = field(default_factory=dict)  # data needs: dataset, train_shards, shortened_by, ...
    uses_gpu: bool = True
    smoke_env: dict[str, str] = field(default_factory=dict)  # [smoke] env: the --env of the quick CPU mode

    def train_shards_needed(self, env: dict[str, str]) -> int:
        """Train shards a run with this environment reads: `[data] train_shards` for the full schedule;
        `[data] shortened_train_shards` when env sets a variable of `[data] shortened_by` (a shortened
        schedule, the smoke mode included); at least 1."""
        if any(var in env for var in self.data.get("shortened_by", [])):
            return int(self.data.get("shortened_train_shards", 1))
        return int(self.data.get("train_shards", 1))

    def is_smoke(self, env: dict[str, str]) -> bool:
        """Whether env runs the track's CPU smoke mode: it sets every variable of `[smoke] env`."""
        return bool(self.smoke_env) and all(var in env for var in self.smoke_env)

    def smoke_flags(self) -> str:
        """The smoke mode as command-line flags: `--nproc 1 --env A=1 --env B=2`."""
        return " ".join(["--nproc 1"] + [f"--env {k}={v}" for k, v in self.smoke_env.items()])

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
            "smoke": {"env": self.smoke_env},
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
    alpha = opt("alpha", float, ALPHA)
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
    data = dict(table("data"))
    for key in ("train_shards", "shortened_train_shards"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1):
            raise HarnessError(f"{source}: [data] {key} must be a whole number >= 1, got {data[key]!r}")
    shortened_by = data.get("shortened_by", [])
    if not isinstance(shortened_by, list) or not all(isinstance(v, str) for v in shortened_by):
        raise HarnessError(f"{source}: [data] shortened_by must be a list of variable names, got {shortened_by!r}")
    smoke = table("smoke")
    smoke_env = smoke.get("env", {})
    if not isinstance(smoke_env, dict):
        raise HarnessError(f"{source}: [smoke] env must be a table of VARIABLE = \"value\", got {smoke_env!r}")
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
        data=data,
        uses_gpu=bool(raw.get("uses_gpu", True)),
        smoke_env={k: str(v) for k, v in smoke_env.items()},
    )
