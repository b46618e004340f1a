"""Pre-flight: what must hold before a campaign launches its first run, each failure one clear error.

A campaign that cannot work should stop in a second with the reason, not after N runs that each crash
(or, worse, after hours of a mode that cannot finish). Checked per arm, with the environment the run gets:
  * GPUs: a GPU track (or a script run against one) needs CUDA, and no more processes than GPUs visible;
    a run in the track's CPU smoke mode (`[smoke] env` all set) needs neither. Without CUDA the error
    names that mode with the exact flags.
  * data: a track with a `[data]` table reads `$DATA_PATH/data/fineweb10B/` (the competition's layout);
    that folder must hold a val shard and the train shards the run needs (`Track.train_shards_needed`).
"""

from __future__ import annotations

from pathlib import Path

from harness.data import shard_folder
from harness.errors import HarnessError
from harness.tracks import REPO_ROOT


def visible_gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    try:
        import torch  # deferred: heavy, only when the GPUs are counted
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_arms(arms, envs: list[dict[str, str]]) -> None:
    """Raise HarnessError (exit 2) for the first arm that cannot run; envs[i] is arms[i]'s run environment."""
    gpus = None  # counted once, and only when a GPU arm asks (importing torch takes seconds)
    for arm, env in zip(arms, envs):
        if arm.track.uses_gpu and not arm.track.is_smoke(env):
            if gpus is None:
                gpus = visible_gpu_count()
            check_gpus(arm, gpus)
        check_data(arm, env)


def check_gpus(arm, gpus: int) -> None:
    track = arm.track
    if gpus == 0:
        raise HarnessError(f"track {track.name} needs CUDA and this node has none (torch sees no GPU); its quick "
                           f"CPU smoke mode ([smoke] in track.toml): {track.smoke_flags()}"
                           if track.smoke_env else f"track {track.name} needs CUDA and this node has none")
    listed = arm.env.get("CUDA_VISIBLE_DEVICES")  # an --env value narrows what this process sees
    if listed is not None:
        gpus = min(gpus, len([x for x in listed.split(",") if x.strip()]))
    if arm.nproc > gpus:
        raise HarnessError(f"--nproc {arm.nproc}{' (the track default)' if arm.nproc == track.nproc else ''} "
                           f"needs {arm.nproc} GPUs; this node shows {gpus}"
                           + (f" (pass --nproc {gpus} or fewer)" if gpus else " (--env CUDA_VISIBLE_DEVICES hides them)"))


def check_data(arm, env: dict[str, str]) -> None:
    """The shards where the script will look: $DATA_PATH/data/fineweb10B/fineweb_{train,val}_*.bin."""
    track = arm.track
    if not track.data or "DATA_PATH" not in env:
        return
    root = Path(env["DATA_PATH"])
    folder = shard_folder(root)
    needed = track.train_shards_needed(env)
    where = "" if root.resolve() == REPO_ROOT.resolve() else f" --data-path {root}"
    fix = (f"run 'speedrun data fineweb --shards {needed}{where}' (or pass --data-path ROOT, the folder "
           f"holding data/fineweb10B/)")
    if not folder.is_dir():
        if any(root.glob("fineweb_*.bin")):  # the old habit: the shard folder itself
            fix = (f"{root} holds shards itself, but DATA_PATH is the folder that holds data/fineweb10B/ "
                   f"(the competition's layout): move them to {folder}, or adopt them with 'speedrun data "
                   f"fineweb --from {root} --shards N'")
        raise HarnessError(f"no data folder {folder} (DATA_PATH={root}): {fix}")
    if not any(p.is_file() for p in folder.glob("fineweb_val_*.bin")):
        raise HarnessError(f"data folder {folder} has no fineweb_val_*.bin shard: {fix}")
    train = [p for p in folder.glob("fineweb_train_*.bin") if p.is_file()]  # a dangling link is no shard
    if len(train) < needed:
        shortening = [v for v in track.data.get("shortened_by", []) if v in env]
        why = (f"its [data] shortened_train_shards: --env {shortening[0]} shortens the schedule" if shortening
               else "its [data] train_shards, for the full schedule")
        raise HarnessError(f"data folder {folder} has {len(train)} train shard(s); track {track.name} needs "
                           f"{needed} ({why}): {fix}")
