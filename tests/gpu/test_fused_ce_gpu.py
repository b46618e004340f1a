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


IMPLS = ["SoftcappedMTPCrossEntropy", "SoftcappedMTPCrossEntropyOnePass"]


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_matches_the_track_path_at_vocab_50304(fce, impl):
    logits, tk, w = _inputs(fce)
    tk[:4096] = 123  # rows whose K targets are one token (the one-pass kernel adds their weights at one column)
    ref_in = logits.clone().requires_grad_(True)
    ref, _ = fce.reference_loss(ref_in, tk, w, SOFTCAP)
    ref.backward()
    got_in = logits.clone().requires_grad_(True)
    got, nxt = getattr(fce, impl).apply(got_in, tk, w, SOFTCAP)
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


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_runs_inside_torch_compile(fce, impl):
    """The track calls it from its compiled model: dynamo must trace the kernel launch and give the same result."""
    logits, tk, w = _inputs(fce, rows_per_seq=1024, seqs=2)

    def loss(x):
        total, nxt = getattr(fce, impl).apply(x, tk, w, SOFTCAP)
        return total * 0.25, nxt

    eager_in = logits.clone().requires_grad_(True)
    e_total, e_next = loss(eager_in)
    e_total.backward()
    comp_in = logits.clone().requires_grad_(True)
    c_total, c_next = torch.compile(loss, fullgraph=True)(comp_in)
    c_total.backward()
    assert torch.allclose(c_total, e_total, rtol=1e-6) and torch.allclose(c_next, e_next, rtol=1e-6)
    if impl == "SoftcappedMTPCrossEntropy":
        assert torch.equal(comp_in.grad, eager_in.grad)
    else:  # the row scale is applied in another kernel when compiled: the same float32 product, rounded once
        assert (comp_in.grad.float() - eager_in.grad.float()).abs().max() <= 1e-2 * eager_in.grad.float().abs().max()


# (class, BLOCK, num_warps): two-pass (the track's since stop 29: BLOCK 4096 with 8 warps was the fastest of five
# configs on an H200) and one-pass candidates
CONFIGS = {"fused_b2048_w8": (IMPLS[0], 2048, 8), "fused_b4096_w8": (IMPLS[0], 4096, 8),
           "onepass_b2048_w8": (IMPLS[1], 2048, 8), "onepass_b4096_w8": (IMPLS[1], 4096, 8),
           "onepass_b4096_w16": (IMPLS[1], 4096, 16), "onepass_b8192_w16": (IMPLS[1], 8192, 16)}


@pytest.mark.parametrize("impl", [*CONFIGS, "track_compiled"])
def test_bench_head_loss_fwd_bwd(benchmark, fce, impl):
    logits, tk, w = _inputs(fce)
    x = logits.clone().requires_grad_(True)
    if impl in CONFIGS:
        name, block, warps = CONFIGS[impl]
        def f():
            getattr(fce, name).apply(x, tk, w, SOFTCAP, block, warps)[0].backward()
    else:
        compiled = torch.compile(fce.reference_loss)
        def f():
            compiled(x, tk, w, SOFTCAP)[0].backward()
    for _ in range(3):  # compile, autotune, warm caches
        f()
    torch.cuda.synchronize()
    benchmark(_step(f))


@pytest.mark.parametrize("impl", [*IMPLS, "track"])
def test_bench_compiled_with_an_fp8_consumer(benchmark, fce, impl):
    """As in the track: compiled, the loss scaled by 2/8, and the logits' gradient cast to float8 e5m2 (the FP8
    head's backward), where Inductor fuses the backward's scaling into that cast."""
    logits, tk, w = _inputs(fce)

    class Cast(torch.autograd.Function):  # identity forward; backward returns the e5m2 round trip of the gradient
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return (g / 1e-4).clamp(-57344, 57344).to(torch.float8_e5m2).to(g.dtype) * 1e-4

    def loss(x):
        y = Cast.apply(x)
        if impl == "track":
            return fce.reference_loss(y, tk, w, SOFTCAP)[0] * 0.25
        return getattr(fce, impl).apply(y, tk, w, SOFTCAP)[0] * 0.25  # the track's BLOCK and warps

    compiled = torch.compile(loss)
    x = logits.clone().requires_grad_(True)

    def f():
        compiled(x).backward()
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    benchmark(_step(f))


def test_scaled_cast_is_torchs_e5m2_cast_bit_for_bit(fce):
    """fused_ce.scaled_cast_both_layouts on the one-pass kernel's own output at V = 50,304, at the track's factor
    (grad_total 2/8 over the FP8 head's gradient scale): both layouts equal torch's cast of the same float32 product
    bit for bit (the hardware rounds to nearest even, as torch does)."""
    logits, tk, w = _inputs(fce)
    u, _, _, row_scale = fce.one_pass_forward(logits, tk, w, SOFTCAP)
    factor = torch.tensor(0.25 / (0.75 / 448 * 0.25), device="cuda")
    out, out_t = fce.scaled_cast_both_layouts(u, row_scale, factor)
    want = (u.float() * (row_scale * factor)[:, None]).clamp(-57344, 57344).to(torch.float8_e5m2)
    differ = (out.view(torch.uint8) != want.view(torch.uint8)).sum().item()
    assert differ == 0, f"{differ} of {want.numel()} entries differ"
    assert torch.equal(out_t.view(torch.uint8), want.t().contiguous().view(torch.uint8))
    assert out.float().abs().max() > 1  # the factor puts the gradient in e5m2's range, not in its subnormals


# (BM, BN, num_warps) of the cast: the track's default first
CAST_TILES = {"m128_n128_w8": (128, 128, 8), "m64_n128_w4": (64, 128, 4), "m128_n64_w4": (128, 64, 4),
              "m64_n256_w8": (64, 256, 8), "m128_n256_w8": (128, 256, 8), "m256_n64_w8": (256, 64, 8)}


@pytest.mark.parametrize("tile", CAST_TILES)
def test_bench_scaled_cast_tiles(benchmark, fce, tile):
    """The cast alone on one s1 micro-batch's gradient (32,768 x 50,304 bf16 in, both e5m2 layouts out: 6.6 GB moved,
    about 1.4 ms at the H200's 4.8 TB/s); Inductor's fused cast took 3.0 ms for the same in the track (profile of
    2026-12-03)."""
    bm, bn, warps = CAST_TILES[tile]
    u = torch.randn(32768, V, device="cuda").bfloat16()
    row_scale = torch.rand(32768, device="cuda")
    factor = torch.tensor(100.0, device="cuda")
    for _ in range(3):
        fce.scaled_cast_both_layouts(u, row_scale, factor, bm=bm, bn=bn, num_warps=warps)
    torch.cuda.synchronize()
    benchmark(_step(lambda: fce.scaled_cast_both_layouts(u, row_scale, factor, bm=bm, bn=bn, num_warps=warps)))


@pytest.mark.parametrize("path", ["two_functions", "one_function"])
def test_bench_fp8_head_and_loss_compiled(benchmark, short_gpu_module, path):
    """What SPEEDRUN_FUSED_HEAD decides, compiled as in the track, one s1 micro-batch (32,768 rows of width 768,
    K = 2): FP8Head then the one-pass loss (Inductor fuses the row scale, the e5m2 cast and its transposed copy into
    one kernel) against FP8HeadMTPLoss (the cast in fused_ce.py's kernel); forward and backward."""
    tg = short_gpu_module
    fce = tg.fused_ce
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(32768, 768, device="cuda", generator=g) * 10).bfloat16().requires_grad_(True)
    w = (torch.randn(V, 768, device="cuda", generator=g) * 0.3).requires_grad_(True)
    tk = fce.mtp_targets(torch.randint(0, V, (16, 2048), device="cuda", generator=g), 2)
    weights = torch.tensor([1.0, 0.5], device="cuda")

    def loss(x, w):
        if path == "one_function":
            total, _ = tg.FP8HeadMTPLoss.apply(x, w, tk, weights, SOFTCAP, 0.25)
        else:
            total, _ = fce.SoftcappedMTPCrossEntropyOnePass.apply(tg.FP8Head.apply(x, w, 0.25), tk, weights, SOFTCAP)
        return total * 0.25

    compiled = torch.compile(loss)

    def f():
        compiled(x, w).backward()
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    benchmark(_step(f))
