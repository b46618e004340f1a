import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEEDS = FIXTURES / "seeds"


@pytest.fixture(scope="session", autouse=True)
def _compile_cache_outside_the_repo(tmp_path_factory):
    """Campaigns started by tests keep the harness's compile cache out of the checkout's cache/ folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEEDRUN_CACHE_DIR", str(tmp_path_factory.mktemp("compile-cache")))
        mp.delenv("SPEEDRUN_NO_CACHE", raising=False)
        yield


@pytest.fixture
def fake_track():
    from harness.tracks import load_track

    return load_track(FIXTURES / "fake_track")


def run_cli(*args, env=None, timeout=300, cwd=None):
    """Run `python -m harness ...` as a user would; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or REPO)


def committed_files(pattern: str) -> list[Path]:
    """Files under REPO matching a glob pattern that git tracks (results/ is git-ignored: a local campaign is
    not a committed one); outside a git checkout, every file matching it."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", pattern], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=60).stdout.split()
        return sorted(REPO / p for p in listed)
    except (OSError, subprocess.SubprocessError):
        return sorted(REPO.glob(pattern))


def write_shard(path: Path, n_tokens: int, magic=20240520, version=1, count=None, seed=0):
    """A FineWeb-format token shard: 256 x int32 header [magic, version, count], then uint16 tokens (BOS first)."""
    import numpy as np

    header = np.zeros(256, dtype="<i4")
    header[:3] = [magic, version, n_tokens if count is None else count]
    tokens = np.random.default_rng(seed).integers(0, 50257, n_tokens).astype("<u2")
    tokens[0] = 50256
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return path


def make_source(folder: Path, n_train: int) -> Path:
    """folder with fineweb_val_000000.bin and n_train fineweb_train_*.bin shards."""
    from harness import data

    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / data.VAL_SHARD, 500, seed=99)
    for i in range(1, n_train + 1):
        write_shard(folder / data.train_shard(i), 1000 + i, seed=i)
    return folder


def load_module(name: str, path):
    """Import a track file by path, once per test session (tracks are scripts, not packages).

    Registered in sys.modules before it runs: dataclasses look their module up there."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_INTERPRETER_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def fill(x_ptr, n, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        tl.store(x_ptr + start + cols, 1.0, mask=start + cols < n)
x = torch.zeros(40)
fill[(1,)](x, 40, BLOCK=16)
assert x.sum().item() == 40
"""


@pytest.fixture(scope="session")
def triton_interpreter() -> dict:
    """The environment that runs Triton kernels on CPU (TRITON_INTERPRET=1), once a trivial kernel has run there.

    Skips where triton is missing, and where its interpreter itself is broken in this environment (Triton 3.6 with
    numpy 2.4.6: "only 0-dimensional arrays can be converted to Python scalars" on any loop over a runtime
    bound; numpy 2.2.6 works), so that a test through the interpreter fails only for the kernel it tests."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], capture_output=True, text=True, timeout=120,
                         env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"Triton's interpreter does not run a trivial kernel here: {last}")
    return env


@pytest.fixture(scope="module")
def short_gpu_module():
    """The short track's training module with its Triton kernels (GPU tests and benchmarks)."""
    pytest.importorskip("triton")
    return load_module("short_train_gpt", REPO / "tracks" / "short" / "train_gpt.py")


def run_collective_worker(nproc: int, out_dir: Path, backend: str) -> list[dict]:
    """Start tests/gpu/multi_gpu_worker.py on nproc ranks through real torchrun (backend nccl: one GPU a rank;
    gloo: CPU processes) and return each rank's findings, rank order."""
    import json

    env = dict(os.environ, WORKER_BACKEND=backend, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(REPO / "tests" / "gpu" / "multi_gpu_worker.py"), str(out_dir)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


def sigint_as_in_a_terminal() -> None:
    """preexec_fn for a harness the test will Ctrl-C: SIGINT back to its default. A test suite started from a
    background job (`cmd &` in a script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt,
    so the harness would run to its end instead of stopping."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
