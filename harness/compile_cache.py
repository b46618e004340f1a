"""The harness-owned compile cache: Inductor, Triton (with autotune results) and the other compile caches
torch uses, in one folder per environment key, set for every run through the environment only.

Why: torch.compile of a record script takes minutes on a cold node (our short track 131.6 s, the seed-001
record about 300 s on one H200); with a warm cache the same start takes a fraction of that. The competition's
rules forbid touching a script's compile flags, so nothing inside the script changes: the harness only points
the caches torch already has at its own folder.

Layout:
    <root>/<digest>/key.json        the key (what invalidates the cache) and what it was made for
    <root>/<digest>/inductor/       TORCHINDUCTOR_CACHE_DIR (FX graph and AOT autograd caches forced on)
    <root>/<digest>/triton/         TRITON_CACHE_DIR, with TRITON_CACHE_AUTOTUNING=1: @triton.autotune
                                    results are kept on disk as <hash>/<kernel>.autotune.json, so runs 2..N
                                    (and later campaigns) use run 1's configs instead of re-tuning
    <root>/<digest>/torch_extensions/, torch_kernels/, cuda/
                                    cpp/CUDA extensions built at import, NVRTC kernels, the driver's PTX JIT

<root> is SPEEDRUN_CACHE_DIR or <repo>/cache/compile; SPEEDRUN_NO_CACHE=1 (`--no-cache`) opts out: the run's
environment is then left as it is. The key holds the GPU model, driver, CUDA, torch, Triton, Python and CPU
architecture, the sha256 of every frozen file of the arm, and the GPU count: a cache filled on one GPU count is
kept apart from another's (their graphs differ), and nothing is shared across versions.

`speedrun cache export / import / list` move a cache between nodes as one xz tar archive (optionally split
into parts with a checked header), refusing foreign or stale archives and unsafe members.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import lzma
import math
import os
import platform
import re
import runpy
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness.errors import HarnessError
from harness.fingerprint import nvidia_fingerprint
from harness.fsio import sha256_file, write_json_atomic
from harness.tracks import REPO_ROOT

KEY_FORMAT = 1
ARCHIVE_FORMAT = 1
ARCHIVE_KIND = "speedrun-compile-cache"
MANIFEST = "manifest.json"
KEY_FILE = "key.json"
# The harness's own note of the runs that used a folder (state before, files added): read by `cache export`,
# never exported (another node's history says nothing about its own runs) and not an entry.
RUNS_FILE = "runs.json"
RUNS_KEPT = 50
DEFAULT_ROOT = REPO_ROOT / "cache" / "compile"
# What the node must share with the node that filled a cache (the rest of the key is per arm).
HARDWARE_FIELDS = ("gpu", "driver", "arch")  # differ: the archive is foreign
SOFTWARE_FIELDS = ("cuda", "torch", "triton", "python")  # differ: the archive is stale
NODE_FIELDS = HARDWARE_FIELDS + SOFTWARE_FIELDS
# Set by run_environment for the harness itself (read back into run.json): which folder, and cold or warm.
STATE_VARIABLES = ("SPEEDRUN_COMPILE_CACHE", "SPEEDRUN_COMPILE_CACHE_STATE", "SPEEDRUN_COMPILE_CACHE_ENTRIES")
# xz preset 1 (fast: an export must fit in the same device call as the campaign that filled it), but with a
# dictionary as long as the whole tar (at most XZ_MAX_DICT): a cache holds hundreds of near-copies of the same
# kernels, megabytes apart, which preset 1's own 1 MiB window never sees. On the seed-001 reference's lean
# cache (236 MiB of files, H200) this gave 4.5 MiB in 5 s where preset 1 gave 16.3 MiB in 7.6 s.
XZ_PRESET = 1
XZ_MAX_DICT = 256 << 20  # compressing takes about 8x the dictionary in memory, unpacking 1x
PART_MAGIC = b"speedrun-cache-part "
MAX_HEADER = 4096


# ---------------------------------------------------------------------------------------------------------
# The key


@functools.lru_cache(maxsize=1)
def node_identity() -> dict:
    """This node's part of the key: GPU model and driver (NVML), CUDA/torch/Triton/Python versions."""
    nv = nvidia_fingerprint()
    out = {"gpu": nv.get("model") if nv.get("available") else None,
           "driver": nv.get("driver") if nv.get("available") else None,
           "arch": platform.machine(), "python": platform.python_version()}
    out["torch"], out["cuda"] = _torch_versions()
    out["triton"] = _triton_version()
    return out


def _torch_versions() -> tuple[str | None, str | None]:
    """(torch.__version__, torch.version.cuda), from torch's own version.py when torch is not imported yet:
    `cache list/export/import` then start in a fraction of a second instead of importing torch."""
    if "torch" not in sys.modules:
        spec = importlib.util.find_spec("torch")
        if spec is None:
            return None, None
        for folder in spec.submodule_search_locations or []:
            try:
                v = runpy.run_path(str(Path(folder) / "version.py"))
                return str(v["__version__"]), v.get("cuda")
            except Exception:  # an unusual build: ask torch itself below
                break
    import torch  # deferred: the slow path, only when torch's version.py cannot be read

    return torch.__version__, torch.version.cuda


def _triton_version() -> str | None:
    for dist in ("triton", "pytorch-triton"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def arm_code_files(arm) -> dict[str, Path]:
    """The files whose bytes the arm's compiled code comes from, by name: a track's [frozen] files when the arm
    runs the track's own script; otherwise the script and the .py files beside it (what it can import, like
    the records' triton_kernels.py)."""
    script = Path(arm.script).resolve()
    track = arm.track
    if track.frozen and script == Path(track.script).resolve():
        return {rel: Path(track.folder) / rel for rel in sorted(track.frozen)}
    files = {script.name: script}
    for p in sorted(script.parent.glob("*.py")):
        files.setdefault(p.name, p)
    return dict(sorted(files.items()))


def code_sha256(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest = sha256_file(path) if path.is_file() else "missing"
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def make_key(identity: dict, code: str, nproc: int) -> dict:
    key = {"format": KEY_FORMAT}
    key.update({f: identity.get(f) for f in NODE_FIELDS})
    key.update({"code_sha256": code, "nproc": int(nproc)})
    return key


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CompileCache:
    root: Path
    key: dict
    about: dict  # not part of the key: what it was filled for (script, files), for `cache list`

    @property
    def digest(self) -> str:
        return key_digest(self.key)

    @property
    def dir(self) -> Path:
        return self.root / self.digest


def cache_root(environ=None) -> Path | None:
    """The cache root for runs started with this environment; None when SPEEDRUN_NO_CACHE opts out."""
    environ = os.environ if environ is None else environ
    if environ.get("SPEEDRUN_NO_CACHE", "").strip() not in ("", "0"):
        return None
    given = environ.get("SPEEDRUN_CACHE_DIR", "").strip()
    return Path(given).expanduser().resolve() if given else DEFAULT_ROOT


def cache_for_arm(arm, environ=None, identity: dict | None = None) -> CompileCache | None:
    root = cache_root(environ)
    if root is None:
        return None
    files = arm_code_files(arm)
    key = make_key(identity if identity is not None else node_identity(), code_sha256(files), arm.nproc)
    about = {"script": str(arm.script), "files": {n: (sha256_file(p) if p.is_file() else "missing")
                                                  for n, p in files.items()}}
    return CompileCache(root=root, key=key, about=about)


def apply_options(no_cache: bool = False, cache_dir: str | None = None) -> None:
    """`--no-cache` / `--cache-dir DIR` of run, compare and scaling: through the harness's own environment, which
    run_environment reads for every run (a resumed campaign honours them too)."""
    if no_cache:
        os.environ["SPEEDRUN_NO_CACHE"] = "1"
    if cache_dir:
        os.environ["SPEEDRUN_CACHE_DIR"] = str(Path(cache_dir).expanduser().resolve())


# ---------------------------------------------------------------------------------------------------------
# Runs


def run_variables(cache: CompileCache) -> dict[str, str]:
    """The environment that points every compile cache torch uses at the cache folder."""
    d = cache.dir
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(d / "inductor"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        # AOT autograd skips its cache for graphs holding a custom autograd.Function (the records' fused
        # kernels), because its key cannot see the function's source. This folder's key holds the sha256 of
        # every code file, so a changed function gets another folder: caching such graphs is safe here.
        "TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD": "1",
        # Inductor keeps Triton's cache per device under its own folder unless TRITON_CACHE_DIR is set: one
        # folder for all ranks, with autotune results on disk.
        "TRITON_CACHE_DIR": str(d / "triton"),
        "TRITON_CACHE_AUTOTUNING": "1",
        "TORCH_EXTENSIONS_DIR": str(d / "torch_extensions"),
        "PYTORCH_KERNEL_CACHE_PATH": str(d / "torch_kernels"),
        "CUDA_CACHE_PATH": str(d / "cuda"),
    }


CACHE_VARIABLES = tuple(run_variables(CompileCache(Path("/"), {}, {})))


def prepare(cache: CompileCache) -> Path:
    """Create the folder with its key.json (once); refuse a folder whose key.json names another key."""
    d = cache.dir
    key_path = d / KEY_FILE
    if key_path.is_file():
        stored = _read_key_file(key_path)
        if stored is None or stored.get("key") != cache.key:
            raise HarnessError(f"compile cache {d}: its {KEY_FILE} is not the key of this folder; remove the folder")
        return d
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key_path, {"format": KEY_FORMAT, "digest": cache.digest, "key": cache.key,
                                 "about": cache.about})
    return d


def _read_key_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("key"), dict) else None


def count_entries(folder: Path) -> int:
    """Files a compile left in the folder (everything but the harness's key.json and runs.json)."""
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        n += sum(1 for f in files if not (f in (KEY_FILE, RUNS_FILE) and Path(dirpath) == folder))
    return n


def finish_run_record(env: dict[str, str]) -> dict:
    """run_record at a run's end (finished or interrupted), noted in the folder's runs.json as well."""
    record = run_record(env)
    note_run(record)
    return record


def note_run(record: dict) -> None:
    """Append a finished run's use of its folder (run_record's dict) to the folder's runs.json. Best effort: the
    run's own run.json holds the same figures, so a folder that cannot be written loses only this note."""
    if not record.get("enabled") or not record.get("dir"):
        return
    folder = Path(record["dir"])
    if not folder.is_dir():
        return
    runs = folder_runs(folder)
    runs.append({"state": record.get("state"), "entries_before": record.get("entries_before"),
                 "entries_after": record.get("entries_after"), "unix": round(time.time(), 1)})
    try:
        write_json_atomic(folder / RUNS_FILE, {"runs": runs[-RUNS_KEPT:]})
    except OSError:
        pass


def folder_runs(folder: Path) -> list[dict]:
    """The runs noted in a folder's runs.json, oldest first; [] when there is none or it is unreadable."""
    try:
        runs = json.loads((folder / RUNS_FILE).read_text()).get("runs")
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def export_note(folder: Path) -> str | None:
    """Why an archive of this folder may leave compiling to the importing node, from its last noted run:
    Inductor compiles some Triton kernels only when it loads graphs from its cache (the seed-001 record's code:
    256 files in the first warm run after a cold one, none in the second), so an export taken right after a run
    that still added files lacks them."""
    runs = folder_runs(folder)
    if not runs:
        return None
    last = runs[-1]
    before, after = last.get("entries_before"), last.get("entries_after")
    if not (isinstance(before, int) and isinstance(after, int)) or after <= before:
        return None
    return (f"note: {folder.name}: its last run ({last.get('state')}) still added {after - before} file(s); a node "
            f"that imports this archive compiles what later runs add again. Export after a run that adds none "
            f"(for most scripts the second run of a campaign).")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def environment_for_run(arm, environ: dict[str, str]) -> dict[str, str]:
    """What run_environment adds: the cache variables and the cold/warm state seen just before the run.
    Returns {} (and the caller removes stale state) when the cache is off."""
    cache = cache_for_arm(arm, environ)
    if cache is None:
        return {}
    prepare(cache)
    entries = count_entries(cache.dir)
    return {**run_variables(cache), "SPEEDRUN_COMPILE_CACHE": str(cache.dir),
            "SPEEDRUN_COMPILE_CACHE_STATE": "warm" if entries else "cold",
            "SPEEDRUN_COMPILE_CACHE_ENTRIES": str(entries)}


def run_record(env: dict[str, str]) -> dict:
    """run.json's compile_cache: the folder, cold or warm before the run, entries before and after."""
    folder = env.get("SPEEDRUN_COMPILE_CACHE")
    if not folder:
        return {"enabled": False, "state": None}
    d = Path(folder)
    return {"enabled": True, "dir": str(d), "digest": d.name, "state": env.get("SPEEDRUN_COMPILE_CACHE_STATE"),
            "entries_before": int(env.get("SPEEDRUN_COMPILE_CACHE_ENTRIES", "0")),
            "entries_after": count_entries(d) if d.is_dir() else 0}


def compile_warmup_s(started_unix: float, first_step_unix: float | None, first_train_time_ms: float | None):
    """Seconds from the process start to the start of the timed part: the first step line's arrival less the
    train_time it already carries (0 on `step:0/N`)."""
    if first_step_unix is None:
        return None
    return round(first_step_unix - (first_train_time_ms or 0.0) / 1000.0 - started_unix, 3)


def campaign_record(arms) -> dict:
    """campaign.json's compile_cache: per arm its folder and key (or that the cache is off)."""
    out = {}
    for arm in arms:
        cache = cache_for_arm(arm, arm.environ())
        out[arm.name] = ({"enabled": False} if cache is None else
                         {"enabled": True, "dir": str(cache.dir), "digest": cache.digest, "key": cache.key})
    return out


# ---------------------------------------------------------------------------------------------------------
# Triton autotune results (TRITON_CACHE_AUTOTUNING=1)
#
# Triton 3.6 (runtime/autotuner.py, Autotuner.check_disk_cache) writes one file per kernel and tuning key:
#   $TRITON_CACHE_DIR/<base32 of a sha256>/<kernel name[:150]>.autotune.json
#   {"key": [<the tuning key: key-argument values, then the dtypes of tensor arguments>],
#    "configs_timings": [[<Config.__dict__: kwargs, num_warps, num_ctas, num_stages, maxnreg, pre_hook,
#                          ir_override>, <do_bench result: [median, p20, p80] in ms>], ...]}
# and on a later run takes the config with the smallest timing (min over the timings, first on ties).
# Later Triton writes the key's elements as strings; both read the same here.

AUTOTUNE_SUFFIX = ".autotune.json"


def _timing_order(timing):
    if isinstance(timing, (int, float)) and not isinstance(timing, bool):
        return (float(timing),)
    if isinstance(timing, list) and timing and all(isinstance(t, (int, float)) for t in timing):
        return tuple(float(t) for t in timing)
    return None


def read_autotune_file(path: Path) -> dict:
    """The chosen config of one autotune file, as Triton picks it: {"key", "config", "timing", "configs_tried"}.
    Raises ValueError for a file that is not in Triton's format."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("configs_timings"), list):
        raise ValueError("no configs_timings list")
    best = None
    for row in data["configs_timings"]:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], dict)):
            raise ValueError("a configs_timings row is not [config, timing]")
        order = _timing_order(row[1])
        if order is None:
            raise ValueError(f"timing {row[1]!r} is not a number or a list of numbers")
        if best is None or order < best[0]:  # strict: the first of equal timings wins, as in min()
            best = (order, row)
    if best is None:
        raise ValueError("empty configs_timings")
    config = {k: v for k, v in best[1][0].items() if v is not None and k != "pre_hook"}
    return {"key": data.get("key"), "config": config, "timing": best[1][1],
            "configs_tried": len(data["configs_timings"])}


def autotune_configs(triton_dir: Path) -> dict[str, list[dict]]:
    """Every kernel's chosen configs in a Triton cache folder: kernel name -> one entry per tuning key."""
    out: dict[str, list[dict]] = {}
    if not triton_dir.is_dir():
        return out
    for path in sorted(triton_dir.glob(f"*/*{AUTOTUNE_SUFFIX}")):
        kernel = path.name[: -len(AUTOTUNE_SUFFIX)]
        try:
            entry = read_autotune_file(path)
        except (OSError, ValueError) as e:
            entry = {"problem": f"unreadable: {e}"}
        entry["file"] = str(path.relative_to(triton_dir))
        out.setdefault(kernel, []).append(entry)
    return out


def autotune_record(arms) -> dict:
    """campaign.json's triton_autotune: per arm (with a cache), per kernel, the configs its runs use."""
    out = {}
    for arm in arms:
        cache = cache_for_arm(arm, arm.environ())
        if cache is not None:
            out[arm.name] = autotune_configs(cache.dir / "triton")
    return out


def describe_config(config: dict) -> str:
    """`BLOCK_SIZE_M=128, ..., num_warps=8, num_stages=3` for tables."""
    parts = [f"{k}={v}" for k, v in (config.get("kwargs") or {}).items()]
    parts += [f"{k}={v}" for k, v in config.items() if k != "kwargs"]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Listing


@dataclass
class Folder:
    path: Path
    key: dict | None
    about: dict
    entries: int
    bytes: int

    def mismatches(self, identity: dict) -> list[str]:
        if self.key is None:
            return ["no readable key.json"]
        if key_digest(self.key) != self.path.name:
            return ["key.json does not match the folder's name"]
        return field_differences(self.key, identity)


def field_differences(theirs: dict, ours: dict) -> list[str]:
    if theirs.get("format", KEY_FORMAT) != KEY_FORMAT:
        return [f"key format {theirs.get('format')!r} (this harness: {KEY_FORMAT})"]
    return [f"{f} {theirs.get(f)!r} (this node: {ours.get(f)!r})" for f in NODE_FIELDS if theirs.get(f) != ours.get(f)]


def list_folders(root: Path) -> list[Folder]:
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        stored = _read_key_file(d / KEY_FILE)
        out.append(Folder(path=d, key=stored.get("key") if stored else None,
                          about=(stored or {}).get("about") or {}, entries=count_entries(d), bytes=folder_bytes(d)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Export


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*$", re.I)


def parse_size(text: str) -> int:
    """`15M`, `15MiB`, `500k`, `1G`, `4096` -> bytes (binary units)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise HarnessError(f"--part-size takes a size like 15M, 500K or 1G, got {text!r}")
    value = float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]
    if value < MAX_HEADER * 2:
        raise HarnessError(f"--part-size {text} is too small (at least {MAX_HEADER * 2} bytes)")
    return int(value)


# Triton keeps every stage of a kernel's compile; a cache hit loads only the binary and the metadata .json
# (the group file lists the rest, and Triton takes what exists). `export --lean` leaves these out of triton/.
TRITON_INTERMEDIATES = (".source", ".ttir", ".ttgir", ".llir", ".ptx", ".amdgcn")


def _skip_in_export(rel: Path, lean: bool = False) -> bool:
    # Triton writes through tmp.pid_* folders and renames; Inductor and Triton use lock files.
    if any(part.startswith("tmp.pid_") for part in rel.parts) or rel.name == "lock" or rel.suffix == ".lock":
        return True
    if rel == Path(RUNS_FILE):
        return True
    return lean and rel.parts[0] == "triton" and rel.suffix in TRITON_INTERMEDIATES


def build_archive(folders: list[Folder], identity: dict, lean: bool = False) -> tuple[bytes, int, int]:
    """The xz tar archive of these folders: manifest.json first (the import checks it before reading on),
    then every regular file (lean: without Triton's intermediate IR). Returns (archive bytes, files, raw bytes)."""
    manifest = {"format": ARCHIVE_FORMAT, "kind": ARCHIVE_KIND,
                "created_unix": time.time(), "node": {f: identity.get(f) for f in NODE_FIELDS},
                "entries": {f.path.name: {"key": f.key, "about": f.about} for f in folders}}
    buf = io.BytesIO()
    n_files, raw = 0, 0
    with tarfile.open(fileobj=buf, mode="w") as tf:  # compressed whole below, with a window that spans it
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tf.addfile(info, io.BytesIO(data))
        for f in folders:
            for path in sorted(f.path.rglob("*")):
                rel = path.relative_to(f.path)
                if path.is_symlink() or not path.is_file() or _skip_in_export(rel, lean):
                    continue
                st = path.stat()
                info = tarfile.TarInfo(f"{f.path.name}/{rel.as_posix()}")
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
                with open(path, "rb") as fh:
                    tf.addfile(info, fh)
                n_files += 1
                raw += st.st_size
    return xz_compress(buf.getvalue()), n_files, raw


def xz_compress(data: bytes) -> bytes:
    """data as one .xz stream, at XZ_PRESET with a dictionary as long as data (within 1 MiB..XZ_MAX_DICT)."""
    window = min(XZ_MAX_DICT, max(1 << 20, len(data)))
    return lzma.compress(data, format=lzma.FORMAT_XZ,
                         filters=[{"id": lzma.FILTER_LZMA2, "preset": XZ_PRESET, "dict_size": window}])


def split_parts(archive: bytes, part_size: int) -> list[bytes]:
    """Parts of at most part_size bytes each, header included: one JSON line naming the part, the number of
    parts, and the sha256 of the part's payload and of the whole archive."""
    whole = hashlib.sha256(archive).hexdigest()
    # The header's length hardly depends on the numbers; reserve the most it can take.
    payload = part_size - MAX_HEADER // 2
    n = max(1, math.ceil(len(archive) / payload))
    parts = []
    for k in range(n):
        chunk = archive[k * payload:(k + 1) * payload]
        header = {"part": k + 1, "parts": n, "archive_bytes": len(archive), "archive_sha256": whole,
                  "part_sha256": hashlib.sha256(chunk).hexdigest()}
        parts.append(PART_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + chunk)
    return parts


def part_path(out: Path, k: int) -> Path:
    return out.with_name(f"{out.name}.{k:03d}")


def assemble_parts(paths: list[Path]) -> bytes:
    """The archive from its parts, given in any order: every part of one export exactly once, each payload and
    the whole checked against the headers."""
    parts: dict[int, tuple[dict, bytes]] = {}
    first = None
    for p in paths:
        data = p.read_bytes()
        end = data.find(b"\n", 0, MAX_HEADER)
        if not data.startswith(PART_MAGIC) or end < 0:
            raise HarnessError(f"{p}: not a part of a split speedrun cache export")
        try:
            header = json.loads(data[len(PART_MAGIC):end])
            k, n = int(header["part"]), int(header["parts"])
            ident = (n, header["archive_bytes"], header["archive_sha256"])
        except (ValueError, KeyError, TypeError):
            raise HarnessError(f"{p}: damaged part header") from None
        chunk = data[end + 1:]
        if hashlib.sha256(chunk).hexdigest() != header.get("part_sha256"):
            raise HarnessError(f"{p}: part {k} of {n} is damaged (its sha256 differs from its header)")
        if first is None:
            first = ident
        elif ident != first:
            raise HarnessError(f"{p}: a part of another export (the parts given come from different archives)")
        if k in parts:
            raise HarnessError(f"{p}: part {k} of {n} given twice")
        parts[k] = (header, chunk)
    n = first[0]
    missing = [k for k in range(1, n + 1) if k not in parts]
    if missing or set(parts) - set(range(1, n + 1)):
        raise HarnessError(f"cache parts: part(s) {', '.join(map(str, missing)) or '?'} of {n} missing; give every "
                           f"part (e.g. 'speedrun cache import FILE.*')")
    archive = b"".join(parts[k][1] for k in range(1, n + 1))
    if len(archive) != first[1] or hashlib.sha256(archive).hexdigest() != first[2]:
        raise HarnessError("cache parts: the joined parts do not give the exported archive (sha256 differs)")
    return archive


def archive_bytes(paths: list[Path]) -> bytes:
    for p in paths:
        if not p.is_file():
            raise HarnessError(f"{p}: no such file")
    with open(paths[0], "rb") as fh:
        head = fh.read(len(PART_MAGIC))
    if head == PART_MAGIC:
        return assemble_parts(paths)
    if len(paths) > 1:
        raise HarnessError("give one archive, or every part of a split export")
    return paths[0].read_bytes()


def _safe_member_path(name: str, entries: dict) -> tuple[str, ...]:
    """The member's path components, or HarnessError for a name that could land outside the cache folder."""
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise HarnessError(f"unsafe archive member {name!r}: absolute or odd path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or any(p == ".." for p in parts):
        raise HarnessError(f"unsafe archive member {name!r}: '..' or empty path")
    if parts[0] not in entries:
        raise HarnessError(f"unsafe archive member {name!r}: outside the cache folders its manifest lists")
    return parts


def check_manifest(manifest, identity: dict) -> dict:
    """The manifest's entries, once it is ours and made on a node like this one; else HarnessError naming why."""
    if not isinstance(manifest, dict) or manifest.get("kind") != ARCHIVE_KIND:
        raise HarnessError("not a speedrun compile-cache archive (its manifest.json is not ours)")
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise HarnessError(f"cache archive format {manifest.get('format')!r}; this harness reads {ARCHIVE_FORMAT}")
    node = manifest.get("node") if isinstance(manifest.get("node"), dict) else {}
    foreign = [f for f in HARDWARE_FIELDS if node.get(f) != identity.get(f)]
    stale = [f for f in SOFTWARE_FIELDS if node.get(f) != identity.get(f)]
    if foreign or stale:
        what = "foreign (another GPU or driver)" if foreign else "stale (other software versions)"
        diffs = ", ".join(f"{f} {node.get(f)!r} vs this node's {identity.get(f)!r}" for f in foreign + stale)
        raise HarnessError(f"refusing a {what} compile cache: {diffs}")
    entries = manifest.get("entries")
    if not isinstance(entries, dict) or not entries:
        raise HarnessError("cache archive lists no cache folders")
    for digest, entry in entries.items():
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, dict) or key_digest(key) != digest:
            raise HarnessError(f"cache archive: folder {digest!r} does not match its key")
        bad = field_differences(key, identity)
        if bad:
            raise HarnessError(f"cache archive: folder {digest} was made elsewhere: {'; '.join(bad)}")
    return entries


def extract_archive(archive: bytes, staging: Path, identity: dict) -> dict:
    """Check and unpack into staging (nothing is written before the manifest passes); returns the entries."""
    entries = None
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r|xz") as tf:
            for member in tf:
                if entries is None:
                    if member.name != MANIFEST or not member.isfile() or member.size > 2**22:
                        raise HarnessError(f"not a speedrun compile-cache archive (first member {member.name!r})")
                    try:
                        manifest = json.loads(tf.extractfile(member).read())
                    except ValueError:
                        raise HarnessError("cache archive: manifest.json is not JSON") from None
                    entries = check_manifest(manifest, identity)
                    continue
                parts = _safe_member_path(member.name, entries)
                if member.issym() or member.islnk():
                    raise HarnessError(f"unsafe archive member {member.name!r}: a link (-> {member.linkname!r})")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise HarnessError(f"unsafe archive member {member.name!r}: not a regular file (device/fifo)")
                dest = staging.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(dest, 0o644)
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise HarnessError(f"not a readable xz tar archive ({e})") from None
    except OSError as e:
        raise HarnessError(f"cannot unpack the cache archive: {e.strerror or e}") from None
    if entries is None:
        raise HarnessError("cache archive is empty")
    for digest, entry in entries.items():
        stored = _read_key_file(staging / digest / KEY_FILE)
        if stored is None or stored.get("key") != entry["key"]:
            raise HarnessError(f"cache archive: folder {digest} lacks its key.json or it differs from the manifest")
    return entries
