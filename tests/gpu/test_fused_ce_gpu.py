"""The fused softcapped multi-token cross-entropy (tracks/short/fused_ce.py) on a GPU (skipped without CUDA): at the
short track's vocabulary and a micro-batch's row count it gives the loss and gradient of the track's own formula
(fused_ce.reference_loss: float32 softcap, logsumexp and gathers through autograd), and a pytest-benchmark of both.

Run: pytest tests/gpu/test_fused_ce_gpu.py            (add --benchmark-only for the timings alone)
"""

from pathlib import Path

import pytest
import torch

from conftest import load_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

REPO = Path(__file__).resolve().parents[2]
SOFTCAP = (23.0, 5.0, 7.5)  # the short track's ModelConfig.softcap
V = 50304


@pytest.fixture(scope="module")
def fce():
    pytest.importorskip("triton")
    return load_module("short_fused_ce", REPO / "tracks/short/fused_ce.py")


def _inputs(fce, rows_per_seq=2048, seqs=8, k=3, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(seqs * rows_per_seq, V, device="cuda", generator=g) * 6).bfloat16()
    targets = torch.randint(0, V, (seqs, rows_per_seq), device="cuda", generator=g)
    weights = torch.tensor([1.0, 0.5, 0.25][:k], device="cuda")
    return logits, fce.mtp_targets(targets, k), weights


def test_fused_matches_the_track_path_at_vocab_50304(fce):
    logits, tk, w = _inputs(fce)
    ref_in = logits.clone().requires_grad_(True)
    ref, _ = fce.reference_loss(ref_in, tk, w, SOFTCAP)
    ref.backward()
    got_in = logits.clone().requires_grad_(True)
    got, nxt = fce.SoftcappedMTPCrossEntropy.apply(got_in, tk, w, SOFTCAP)
    got.backward()
    assert torch.isfinite(got) and abs(got.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert 0.0 < nxt.item() < 23.0
    err = (got_in.grad.float() - ref_in.grad.float()).abs().max().item()
    assert err <= 2e-2 * ref_in.grad.float().abs().max().item(), err


def _step(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def test_fused_runs_inside_torch_compile(fce):
    """The track calls it from its compiled model: dynamo must trace the kernel launch and give the same result."""
    logits, tk, w = _inputs(fce, rows_per_seq=1024, seqs=2)

    def loss(x):
        total, nxt = fce.SoftcappedMTPCrossEntropy.apply(x, tk, w, SOFTCAP)
        return total * 0.25, nxt

    eager_in = logits.clone().requires_grad_(True)
    e_total, e_next = loss(eager_in)
    e_total.backward()
    comp_in = logits.clone().requires_grad_(True)
    c_total, c_next = torch.compile(loss, fullgraph=True)(comp_in)
    c_total.backward()
    assert torch.allclose(c_total, e_total, rtol=1e-6) and torch.allclose(c_next, e_next, rtol=1e-6)
    assert torch.equal(comp_in.grad, eager_in.grad)


# (BLOCK, num_warps) of the fused kernel: the track picks the fastest after this benchmark
CONFIGS = {"fused_b1024_w4": (1024, 4), "fused_b2048_w8": (2048, 8), "fused_b4096_w8": (4096, 8),
           "fused_b4096_w16": (4096, 16), "fused_b8192_w16": (8192, 16)}


@pytest.mark.parametrize("impl", [*CONFIGS, "track_compiled"])
def test_bench_head_loss_fwd_bwd(benchmark, fce, impl):
    logits, tk, w = _inputs(fce)
    x = logits.clone().requires_grad_(True)
    if impl in CONFIGS:
        block, warps = CONFIGS[impl]
        def f():
            fce.SoftcappedMTPCrossEntropy.apply(x, tk, w, SOFTCAP, block, warps)[0].backward()
    else:
        compiled = torch.compile(fce.reference_loss)
        def f():
            compiled(x, tk, w, SOFTCAP)[0].backward()
    for _ in range(3):  # compile, autotune, warm caches
        f()
    torch.cuda.synchronize()
    benchmark(_step(f))
