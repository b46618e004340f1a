"""The compile cache on a real GPU (skipped without CUDA and Triton): Triton 3.6 writes @triton.autotune results
where and as harness/compile_cache.py reads them, a second process uses them without re-tuning, and a second
process hits Inductor's FX graph cache in the folder the harness sets."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from harness import compile_cache as cc

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

AUTOTUNED = r'''
import json, sys, torch, triton, triton.language as tl

@triton.autotune(configs=[triton.Config({"BLOCK": 128}, num_warps=4), triton.Config({"BLOCK": 1024}, num_warps=8),
                          triton.Config({"BLOCK": 256}, num_warps=2, num_stages=2)], key=["n"])
@triton.jit
def cache_probe_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

x = torch.randn(1 << 20, device="cuda"); y = torch.randn_like(x); out = torch.empty_like(x)
cache_probe_add[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, out, x.numel())
torch.cuda.synchronize()
assert torch.allclose(out, x + y)
best = cache_probe_add.best_config
print("BEST " + json.dumps({"kwargs": best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}))
'''

COMPILED = r'''
import torch
from torch._dynamo.utils import counters

@torch.compile(dynamic=False, fullgraph=True)
def f(x, w):
    return torch.nn.functional.gelu(x @ w).square().sum(dim=-1)

x = torch.randn(256, 512, device="cuda"); w = torch.randn(512, 512, device="cuda")
f(x, w); torch.cuda.synchronize()
print("FX " + str(dict(counters["inductor"])))
'''


def _run(code: str, cache: cc.CompileCache, extra=None):
    # From a file, not `python -c`: @triton.jit reads its function's source with inspect, which needs a file.
    script = Path(tempfile.mkdtemp(prefix="cache-probe-")) / "probe.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, **cc.run_variables(cache), **(extra or {})}
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _cache(tmp_path) -> cc.CompileCache:
    cache = cc.CompileCache(root=tmp_path, key={"test": tmp_path.name}, about={})
    cc.prepare(cache)
    return cache


def test_triton_autotune_results_are_kept_on_disk_and_read_back(tmp_path):
    pytest.importorskip("triton")
    cache = _cache(tmp_path)
    first = _run(AUTOTUNED, cache, {"TRITON_PRINT_AUTOTUNING": "1"})
    best = json.loads(first.split("BEST ", 1)[1].splitlines()[0])
    assert "Triton autotuning for function cache_probe_add" in first  # tuned: the cache was empty
    found = cc.autotune_configs(cache.dir / "triton")
    print(json.dumps(found, indent=1))
    (entry,) = found["cache_probe_add"]
    assert entry["configs_tried"] == 3
    assert entry["config"]["kwargs"] == best["kwargs"] and entry["config"]["num_warps"] == best["num_warps"]
    assert entry["config"]["num_stages"] == best["num_stages"]
    assert str(1 << 20) in [str(k) for k in entry["key"]]
    # A second process reads the result from disk: no tuning, the same config.
    second = _run(AUTOTUNED, cache, {"TRITON_PRINT_AUTOTUNING": "1"})
    assert "Triton autotuning for function" not in second
    assert json.loads(second.split("BEST ", 1)[1].splitlines()[0]) == best


def test_a_second_process_hits_the_fx_graph_cache_in_the_harness_folder(tmp_path):
    cache = _cache(tmp_path)
    first = _run(COMPILED, cache)
    assert "fxgraph_cache_miss" in first
    assert any((cache.dir / "inductor" / "fxgraph").rglob("*"))
    assert cc.count_entries(cache.dir) > 0
    second = _run(COMPILED, cache)
    assert "'fxgraph_cache_hit': 1" in second, second


def test_a_lean_export_warms_a_fresh_root(tmp_path):
    """Fill a cache, export it without Triton's intermediate IR, import it elsewhere: the compiled graph hits the
    FX graph cache, the autotuned kernel is neither re-tuned nor recompiled (no IR file of it reappears)."""
    pytest.importorskip("triton")
    identity = cc.node_identity()
    filled = cc.CompileCache(root=tmp_path / "a", key=cc.make_key(identity, "0" * 64, 1), about={"script": "gpu-test"})
    cc.prepare(filled)
    _run(COMPILED, filled)
    best = _run(AUTOTUNED, filled).split("BEST ", 1)[1].splitlines()[0]
    archive = tmp_path / "lean.tar.xz"
    r = run_cli("cache", "export", "--lean", "--out", archive, env={"SPEEDRUN_CACHE_DIR": str(filled.root)})
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    r = run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(tmp_path / "b")})
    assert r.returncode == 0, r.stderr
    fresh = cc.CompileCache(root=tmp_path / "b", key=filled.key, about={})
    assert not list((fresh.dir / "triton").rglob("cache_probe_add.ptx"))
    assert "'fxgraph_cache_hit': 1" in _run(COMPILED, fresh)
    again = _run(AUTOTUNED, fresh, {"TRITON_PRINT_AUTOTUNING": "1"})
    assert "Triton autotuning for function" not in again and again.split("BEST ", 1)[1].splitlines()[0] == best
    assert not list((fresh.dir / "triton").rglob("cache_probe_add.ptx")), "the kernel was compiled again"
