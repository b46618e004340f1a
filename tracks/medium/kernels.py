"""Triton kernel of the medium track: the symmetric product inside Polar Express.

    out = alpha * X @ X^T + beta * C        (X: [batch, M, K], C and out: [batch, M, M], C symmetric)

X @ X^T is symmetric, so each program computes one tile of the lower triangle (tile row >= tile column)
and writes it twice: at (i, j) and, transposed, at (j, i). That halves the multiply work. Polar Express
uses it twice per iteration: A = X X^T (beta = 0) and B = b*A + c*A A^T (X = A, C = A, since A = A^T).

Launch configs are frozen in `triton_configs.json` beside this file, keyed by GPU name, Triton version and
problem shape; `speedrun autotune medium` rewrites that file (harness/autotune.py). A missing entry falls back
to DEFAULT_CONFIG and is noted once in FALLBACKS, which the training script writes to its log. Nothing is autotuned at run time, so every run of the same
environment launches the same kernels.

This module is also the autotuner's interface: PROBLEMS, candidate_configs(), make_inputs(), launch(),
reference(), problem_key(). It imports without CUDA (and without Triton: then only the reference path works).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only environments (CI): the track's training needs CUDA and Triton anyway
    triton = None
    tl = None

CONFIG_PATH = Path(__file__).resolve().parent / "triton_configs.json"
DEFAULT_CONFIG = {"BLOCK": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4}

# The shapes the medium-track model sends through Polar Express (16 layers, width 1024, 8x128 heads, MLP 4x, every
# layer with attention): 16 x (q, k, v, o) = 64 square matrices of 1024 x 1024 and 16 x (fc, proj) = 32 matrices
# of 1024 x 4096, always oriented wide (M = 1024 <= K). Each matrix shape gives two products: "xxt" (A = X X^T,
# inner dim K) and "aat" (b*A + c*A A^T, inner dim 1024). On K GPUs each rank orthogonalizes ceil(n / K) matrices
# of a shape, so every GPU count the track runs on (1, 2, 4, 8) has its own batch sizes. Some coincide (the
# 2-GPU attention slice and the 1-GPU MLP slice are both 32 x 1024 x 1024 for b*A + c*A A^T): one problem per
# key. The attention and value-embedding gates (8 x 16) are too small for the kernel and run in PyTorch.
WORLD_SIZES = (1, 2, 4, 8)
_ALL_PROBLEMS = [
    problem
    for world in WORLD_SIZES
    for problem in (
        {"name": f"attn_xxt_w{world}", "batch": -(-64 // world), "M": 1024, "K": 1024, "has_c": False},
        {"name": f"attn_aat_w{world}", "batch": -(-64 // world), "M": 1024, "K": 1024, "has_c": True},
        {"name": f"mlp_xxt_w{world}", "batch": -(-32 // world), "M": 1024, "K": 4096, "has_c": False},
        {"name": f"mlp_aat_w{world}", "batch": -(-32 // world), "M": 1024, "K": 1024, "has_c": True},
    )
]
MIN_KERNEL_ROWS = 128  # smaller matrices (the gates) go through PyTorch: one tile would be mostly padding


def problem_key(batch: int, M: int, K: int, has_c: bool) -> str:
    return f"b{batch}_m{M}_k{K}_{'c' if has_c else 'noc'}"


def key_of(problem: dict) -> str:
    return problem_key(problem["batch"], problem["M"], problem["K"], problem["has_c"])


# one problem per key (the first of each), so the autotuner benchmarks each shape once
PROBLEMS = []
for _problem in _ALL_PROBLEMS:
    if key_of(_problem) not in {key_of(p) for p in PROBLEMS}:
        PROBLEMS.append(_problem)


TOLERANCE = 1e-2  # relative (Frobenius) error accepted against the float32-accumulated reference


def candidate_configs() -> list[dict]:
    configs = []
    for block in (64, 128):
        for block_k in (32, 64, 128):
            for num_warps in (4, 8):
                for num_stages in (3, 4):
                    if block * block_k * 2 * 2 * num_stages > 200 * 1024:
                        continue  # the two operand tiles per stage would not fit in shared memory (~227 KB)
                    configs.append(
                        {"BLOCK": block, "BLOCK_K": block_k, "num_warps": num_warps, "num_stages": num_stages}
                    )
    return configs


# ---------------------------------------------------------------------------------------------- frozen configs

_frozen_cache: dict | None = None
FALLBACKS: list[str] = []  # one line per problem key that had no frozen config (the training log prints them)


def _environment_keys() -> tuple[str, str]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    version = triton.__version__ if triton is not None else "none"
    return gpu, version


def lookup_config(key: str, path: Path | None = None) -> dict:
    """The frozen config for this GPU, Triton version and problem key, else DEFAULT_CONFIG (said once)."""
    global _frozen_cache
    path = path or CONFIG_PATH
    if _frozen_cache is None or path != CONFIG_PATH:
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        if path == CONFIG_PATH:
            _frozen_cache = table
    else:
        table = _frozen_cache
    gpu, version = _environment_keys()
    entry = table.get("configs", {}).get(gpu, {}).get(version, {}).get(key)
    if entry is None:
        note = f"triton_configs: no frozen config for gpu={gpu!r} triton={version} {key}; using default {DEFAULT_CONFIG}"
        if note not in FALLBACKS:
            FALLBACKS.append(note)
        return dict(DEFAULT_CONFIG)
    return {k: int(entry[k]) for k in ("BLOCK", "BLOCK_K", "num_warps", "num_stages")}


# ---------------------------------------------------------------------------------------------- kernel

if triton is not None:

    @triton.jit
    def _sym_mm_kernel(
        x_ptr, c_ptr, out_ptr, M, K,
        stride_xb, stride_xm, stride_xk,
        stride_cb, stride_cm, stride_cn,
        stride_ob, stride_om, stride_on,
        alpha, beta,
        HAS_C: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        batch = tl.program_id(0)
        tile_i = tl.program_id(1)
        tile_j = tl.program_id(2)
        if tile_j > tile_i:  # upper triangle: the mirror of a tile another program writes
            return
        rows_i = tile_i * BLOCK + tl.arange(0, BLOCK)
        rows_j = tile_j * BLOCK + tl.arange(0, BLOCK)
        ks = tl.arange(0, BLOCK_K)
        x_base = x_ptr + batch * stride_xb
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            a = tl.load(x_base + rows_i[:, None] * stride_xm + kk[None, :] * stride_xk,
                        mask=(rows_i[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(x_base + rows_j[:, None] * stride_xm + kk[None, :] * stride_xk,
                        mask=(rows_j[:, None] < M) & (kk[None, :] < K), other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
        acc = acc * alpha
        mask_ij = (rows_i[:, None] < M) & (rows_j[None, :] < M)
        if HAS_C:
            c = tl.load(c_ptr + batch * stride_cb + rows_i[:, None] * stride_cm + rows_j[None, :] * stride_cn,
                        mask=mask_ij, other=0.0)
            acc += beta * c.to(tl.float32)
        result = acc.to(out_ptr.dtype.element_ty)
        out_base = out_ptr + batch * stride_ob
        tl.store(out_base + rows_i[:, None] * stride_om + rows_j[None, :] * stride_on, result, mask=mask_ij)
        if tile_i != tile_j:
            mask_ji = (rows_j[:, None] < M) & (rows_i[None, :] < M)
            tl.store(out_base + rows_j[:, None] * stride_om + rows_i[None, :] * stride_on, tl.trans(result),
                     mask=mask_ji)


def launch(x: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, config: dict) -> torch.Tensor:
    """out = alpha * x @ x^T + beta * c, with an explicit launch config (the autotuner's entry point)."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(0)
        c = c.unsqueeze(0) if c is not None else None
    batch, M, K = x.shape
    out = torch.empty(batch, M, M, device=x.device, dtype=x.dtype)
    c_arg = c if c is not None else out  # never read when HAS_C is false
    tiles = triton.cdiv(M, config["BLOCK"])
    _sym_mm_kernel[(batch, tiles, tiles)](
        x, c_arg, out, M, K,
        x.stride(0), x.stride(1), x.stride(2),
        c_arg.stride(0), c_arg.stride(1), c_arg.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        float(alpha), float(beta),
        HAS_C=c is not None, BLOCK=config["BLOCK"], BLOCK_K=config["BLOCK_K"],
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return out.squeeze(0) if squeeze else out


def reference(x: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor:
    """The same product in plain PyTorch (float32 accumulate, then cast)."""
    acc = alpha * (x.float() @ x.float().mT)
    if c is not None:
        acc = acc + beta * c.float()
    return acc.to(x.dtype)


def sym_mm(x: torch.Tensor, c: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """alpha * x x^T + beta * c using the frozen config for this shape (Triton on CUDA, else PyTorch)."""
    if triton is None or not x.is_cuda or x.shape[-2] < MIN_KERNEL_ROWS:
        return reference(x, c, alpha, beta)
    batch = x.shape[0] if x.dim() == 3 else 1
    key = problem_key(batch, x.shape[-2], x.shape[-1], c is not None)
    return launch(x, c, alpha, beta, lookup_config(key))


def make_inputs(problem: dict, device: str = "cuda", dtype=torch.bfloat16, seed: int = 0):
    """Inputs shaped like the real ones: X normalised as Polar Express does, C symmetric with norm ~1."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(problem["batch"], problem["M"], problem["K"], generator=g)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    c = None
    if problem["has_c"]:
        c = x[..., : problem["M"]] @ x[..., : problem["M"]].mT
        c = c.to(device=device, dtype=dtype)
    alpha, beta = (-1.25, 0.375) if problem["has_c"] else (1.0, 0.0)
    return x.to(device=device, dtype=dtype), c, alpha, beta
