"""`speedrun autotune TRACK`: regenerate a track's frozen Triton launch configs on the current GPU.

A track's kernel module (track.toml `[autotune] module = "kernels.py"`) exposes:
  PROBLEMS                    the shapes the real model runs (list of dicts)
  key_of(problem) -> str      the shape key under which a config is stored
  candidate_configs()         the launch configs to try
  make_inputs(problem, device, seed=...) -> args
  launch(*args, config)       the kernel with an explicit config
  reference(*args)            the same result in plain PyTorch
  TOLERANCE (optional)        largest accepted relative error (default 1e-2)

For each problem every candidate is run once and checked against the reference (fresh inputs); only correct
candidates are timed (triton.testing.do_bench, median) and the fastest is stored. The configs file
(`[autotune] configs`, default triton_configs.json) maps GPU name -> Triton version -> shape key -> config;
entries of other GPUs and Triton versions are kept, and the file is replaced atomically; track.toml's [frozen]
hash of it is rewritten to match (when the track freezes it). The track reads the
file itself at run time; nothing is autotuned during a run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Callable

from harness.errors import HarnessError
from harness.fsio import read_json, sha256_file, write_json_atomic, write_text_atomic

FORMAT = 1
LAUNCH_KEYS = ("BLOCK", "BLOCK_K", "num_warps", "num_stages")


def autotune_settings(track_folder: Path) -> tuple[Path, Path]:
    """(kernel module path, configs path) from the track's `[autotune]` table."""
    toml_path = track_folder / "track.toml"
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HarnessError(f"{toml_path}: cannot read ({e})") from None
    section = raw.get("autotune")
    if not isinstance(section, dict) or "module" not in section:
        raise HarnessError(f"{toml_path}: no [autotune] module = \"...\" entry; this track has no Triton kernels")
    module_path = track_folder / str(section["module"])
    configs_path = track_folder / str(section.get("configs", "triton_configs.json"))
    if not module_path.is_file():
        raise HarnessError(f"{module_path}: kernel module named in [autotune] does not exist")
    return module_path, configs_path


def load_kernel_module(path: Path) -> ModuleType:
    name = f"_autotune_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise HarnessError(f"{path}: cannot import the kernel module ({e})") from None
    for attr in ("PROBLEMS", "key_of", "candidate_configs", "make_inputs", "launch", "reference"):
        if not hasattr(module, attr):
            raise HarnessError(f"{path}: kernel module lacks {attr!r} (see harness/autotune.py)")
    return module


def relative_error(out, ref) -> float:
    out, ref = out.float(), ref.float()
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def default_bench(fn: Callable[[], object]) -> float:
    import triton.testing  # deferred: GPU-only and heavy, imported when a kernel is benchmarked

    return float(triton.testing.do_bench(fn, return_mode="median"))


def tune(module: ModuleType, device: str, bench: Callable[[Callable], float] = default_bench,
         log: Callable[[str], None] = print) -> dict[str, dict]:
    """Best correct config per problem key: {key: {BLOCK, BLOCK_K, num_warps, num_stages, ms, reference_ms}}."""
    tol = float(getattr(module, "TOLERANCE", 1e-2))
    results: dict[str, dict] = {}
    for problem in module.PROBLEMS:
        key = module.key_of(problem)
        args = module.make_inputs(problem, device, seed=1)
        check_args = module.make_inputs(problem, device, seed=2)
        ref = module.reference(*check_args)
        best, rejected = None, []
        for config in module.candidate_configs():
            try:
                err = relative_error(module.launch(*check_args, config), ref)
            except Exception as e:  # a config the compiler or the GPU refuses (e.g. out of shared memory)
                rejected.append(f"{config}: {type(e).__name__}")
                continue
            if not err <= tol:  # also rejects NaN
                rejected.append(f"{config}: relative error {err:.2e} > {tol:.0e}")
                continue
            ms = bench(lambda: module.launch(*args, config))
            if best is None or ms < best["ms"]:
                best = {**{k: int(config[k]) for k in LAUNCH_KEYS}, "ms": round(ms, 5)}
        if best is None:
            raise HarnessError(f"autotune: no candidate config is correct for {key}: " + "; ".join(rejected[:5]))
        best["reference_ms"] = round(bench(lambda: module.reference(*args)), 5)
        results[key] = best
        log(f"autotune: {key}: {best} ({len(rejected)} candidate(s) rejected)")
    return results


def merge_configs(table: dict, gpu: str, triton_version: str, results: dict[str, dict]) -> dict:
    """A new table with `results` stored under gpu/triton_version, every other entry kept as it was."""
    if table and not isinstance(table.get("configs", {}), dict):
        raise HarnessError("configs file: 'configs' must be an object")
    merged = {"format": FORMAT, "configs": {}}
    for g, by_version in table.get("configs", {}).items():
        merged["configs"][g] = {v: dict(entries) for v, entries in by_version.items()}
    slot = merged["configs"].setdefault(gpu, {}).setdefault(triton_version, {})
    slot.update(results)
    return merged


def environment_keys() -> tuple[str, str, str]:
    """(device, gpu name, triton version) of this machine."""
    import torch  # deferred: heavy, imported when autotune runs

    try:
        import triton  # deferred: heavy and optional
    except ImportError:
        raise HarnessError("autotune needs Triton, which is not installed") from None
    if not torch.cuda.is_available():
        raise HarnessError("autotune needs a CUDA GPU (none is visible)")
    return "cuda", torch.cuda.get_device_name(), triton.__version__


def autotune_track(track_folder: Path, bench: Callable[[Callable], float] = default_bench,
                   environment: tuple[str, str, str] | None = None, log: Callable[[str], None] = print) -> Path:
    module_path, configs_path = autotune_settings(track_folder)
    device, gpu, version = environment or environment_keys()
    module = load_kernel_module(module_path)
    table = read_json(configs_path) if configs_path.exists() else {}
    if not isinstance(table, dict):
        raise HarnessError(f"{configs_path}: must hold a JSON object")
    results = tune(module, device, bench=bench, log=log)
    write_json_atomic(configs_path, merge_configs(table, gpu, version, results))
    log(f"autotune: wrote {len(results)} config(s) for {gpu!r} / triton {version} to {configs_path}")
    digest = sha256_file(configs_path)
    rel = Path(os.path.relpath(configs_path, track_folder)).as_posix()  # [frozen] keys: paths from the track folder
    if update_frozen_hash(track_folder / "track.toml", rel, digest):
        log(f"autotune: track.toml [frozen] \"{rel}\" = \"{digest}\"")
    else:
        log(f"autotune: {rel} sha256 {digest} (not listed in track.toml [frozen])")
    return configs_path


def update_frozen_hash(toml_path: Path, rel: str, digest: str) -> bool:
    """Set `"rel" = "digest"` in the [frozen] table of track.toml, in place, keeping every other line as it is.
    False (file untouched) when [frozen] does not list `rel`: a configs file the track does not freeze."""
    lines = toml_path.read_text(encoding="utf-8").splitlines(keepends=True)
    table = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
            continue
        key = stripped.split("=", 1)[0].strip().strip('"')
        if table == "[frozen]" and "=" in stripped and key == rel:
            lines[i] = f'"{rel}" = "{digest}"\n'
            write_text_atomic(toml_path, "".join(lines))
            return True
    return False
