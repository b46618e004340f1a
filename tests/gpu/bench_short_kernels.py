"""pytest-benchmark of the short track's kernels against their PyTorch reference (GPU only).

Run: pytest tests/gpu/bench_short_kernels.py --benchmark-only   (pyproject collects bench_*.py with the tests)
Each benchmark times one call including a torch.cuda.synchronize, on the real model's shapes.
"""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def tg(short_gpu_module):
    return short_gpu_module


def _timed(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def _torch_sym(x, c, alpha, beta):
    # the plain PyTorch way: a full batched product in bf16 (cuBLAS), then the axpy
    out = torch.bmm(x, x.mT)
    return out * alpha + beta * c if c is not None else out


@pytest.mark.parametrize("impl", ["triton", "torch"])
# the shapes of one GPU (w1: every matrix on the GPU) and of each of 8 GPUs (w8: the record's slices)
@pytest.mark.parametrize("name", [f"{m}_w{w}" for w in (1, 8) for m in ("attn_xxt", "attn_aat", "mlp_xxt", "mlp_aat")])
def test_bench_sym_mm(benchmark, tg, name, impl):
    k = tg.kernels
    problem = next(p for p in k.PROBLEMS if p["name"] == name)
    x, c, alpha, beta = k.make_inputs(problem, "cuda")
    if impl == "triton":
        fn = lambda: k.sym_mm(x, c, alpha, beta)  # noqa: E731
    else:
        fn = lambda: _torch_sym(x, c, alpha, beta)  # noqa: E731
    for _ in range(3):
        fn()
    benchmark.group = f"sym_mm {name} {problem['batch']}x{problem['M']}x{problem['K']}"
    benchmark.pedantic(_timed(fn), rounds=20, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("impl", ["triton", "torch"])
# one GPU (all 40 + 22 matrices) and one of 8 GPUs (its ceil(n/8) slice: 5 + 3), where the single sym_mm calls
# no longer beat cuBLAS (results/ci/2026-11-27-h100-ci-gpu): does the whole iteration still gain?
@pytest.mark.parametrize("shape", [(40, 768, 768), (22, 768, 3072), (5, 768, 768), (3, 768, 3072)])
def test_bench_polar_express(benchmark, tg, shape, impl):
    g = torch.randn(*shape, device="cuda")
    if impl == "triton":
        def fn():
            return tg.polar_express(g, use_triton=True)
    else:
        def fn():
            X = g.bfloat16()
            X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
            for a, b, c in tg.POLAR_EXPRESS_COEFFS:
                A = X @ X.mT
                B = b * A + c * (A @ A)
                X = a * X + B @ X
            return X
    for _ in range(3):
        fn()
    benchmark.group = f"polar_express {shape}"
    benchmark.pedantic(_timed(fn), rounds=10, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("impl", ["fp8", "bf16"])
def test_bench_lm_head(benchmark, tg, impl):
    x = torch.randn(49152, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(50304, 768, device="cuda") * 0.02).requires_grad_()
    g = torch.randn(49152, 50304, device="cuda", dtype=torch.bfloat16)

    def fn():
        out = tg.FP8Head.apply(x, w) if impl == "fp8" else x @ w.bfloat16().t()
        out.backward(g)
        x.grad = None
        w.grad = None
    for _ in range(3):
        fn()
    benchmark.group = "lm_head forward+backward 49152x768x50304"
    benchmark.pedantic(_timed(fn), rounds=5, iterations=1, warmup_rounds=1)
