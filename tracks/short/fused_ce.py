"""Fused softcapped multi-token cross-entropy for the short track's training loss (train_gpt.py,
GPT._fused_training_loss; SPEEDRUN_FUSED_CE=0 runs the plain path instead, SPEEDRUN_FUSED_CE_KERNEL picks one of
KERNELS below).

What it replaces (GPT._training_loss, the plain path): z = A * sigmoid((logits + B) / C) in float32 over the whole
(tokens x 50304) block, one logsumexp, then one gather per predicted token, and autograd's float32 backward through
all of it. That path reads and writes the logits block several times and keeps float32 copies of it for the
backward. Here one Triton program per token row reads its bf16 logits twice (once for the normalizer and the
target terms, once to write the gradient) and writes the gradient in bf16 during the forward: the loss is the
graph's last node, so d(total)/d(logits) is known once the normalizer is, and the backward only scales it.

Math, per row r with targets t_k (k < K, -1 where position + k runs past the row) and weights w_k:
  s_j = sigmoid((l_j + B) / C),  z_j = A s_j  (0 < z_j < A, so sum_j exp(z_j) < 50304 e^23: no running max needed)
  lse = log sum_j exp(z_j)
  loss_r = sum_k w_k [t_k >= 0] (lse - z_{t_k})
  d loss_r / d l_j = (W_r p_j - sum_k w_k [j == t_k]) (A / C) s_j (1 - s_j),  p_j = exp(z_j - lse),
  W_r = sum_k w_k [t_k >= 0]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cap_sigmoid(l, B: tl.constexpr, C: tl.constexpr):
    # s = sigmoid((l + B) / C), with the reciprocal of the constant C: z = A s is the softcapped logit
    return tl.sigmoid((l + B) * (1.0 / C))


@triton.jit
def _target_terms(row_logits, targets_ptr, weights_ptr, next_loss_ptr, row, lse, A: tl.constexpr,
                  B: tl.constexpr, C: tl.constexpr, K: tl.constexpr):
    # the row's loss sum_k w_k (lse - z_{t_k}) and W = sum_k w_k over its valid targets (K scalar loads of its logits);
    # the next-token term is stored as it goes
    loss = lse * 0.0
    w_total = lse * 0.0
    for k in tl.static_range(K):
        t = tl.load(targets_ptr + row * K + k)
        w = tl.load(weights_ptr + k)
        valid = t >= 0
        l_t = tl.load(row_logits + tl.where(valid, t, 0)).to(tl.float32)
        term = tl.where(valid, lse - A * _cap_sigmoid(l_t, B, C), 0.0)
        if k == 0:
            tl.store(next_loss_ptr + row, term)
        loss += w * term
        w_total += tl.where(valid, w, 0.0)
    return loss, w_total


@triton.jit
def _softcapped_mtp_ce_kernel(logits_ptr, grad_ptr, targets_ptr, weights_ptr, loss_ptr, next_loss_ptr,
                              n_cols, stride_row, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr,
                              K: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * stride_row
    row_grad = grad_ptr + row * stride_row
    cols = tl.arange(0, BLOCK)

    # pass 1: the normalizer (z is bounded, so a plain sum of exponentials is safe in float32)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        idx = start + cols
        mask = idx < n_cols
        l = tl.load(row_logits + idx, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(mask, tl.exp(A * _cap_sigmoid(l, B, C)), 0.0)
    lse = tl.log(tl.sum(acc, axis=0))
    loss, w_total = _target_terms(row_logits, targets_ptr, weights_ptr, next_loss_ptr, row, lse, A, B, C, K)
    tl.store(loss_ptr + row, loss)

    # pass 2: d loss_r / d logits, written in the logits' dtype
    for start in range(0, n_cols, BLOCK):
        idx = start + cols
        mask = idx < n_cols
        l = tl.load(row_logits + idx, mask=mask, other=0.0).to(tl.float32)
        s = _cap_sigmoid(l, B, C)
        g = w_total * tl.exp(A * s - lse)
        for k in tl.static_range(K):
            t = tl.load(targets_ptr + row * K + k)
            w = tl.load(weights_ptr + k)
            g -= tl.where(idx == t, w, 0.0)  # t = -1 never matches a column
        g = g * (A / C) * s * (1.0 - s)
        tl.store(row_grad + idx, g.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softcapped_mtp_ce_one_pass_kernel(logits_ptr, grad_ptr, targets_ptr, weights_ptr, loss_ptr, next_loss_ptr,
                                       row_scale_ptr, n_cols, stride_row, A: tl.constexpr, B: tl.constexpr,
                                       C: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    # One read of the row: the normalizer's terms e_j = exp(z_j) and, in the same loop, the unnormalized gradient
    # u_j = e_j s_j (1 - s_j). The row's factor (A/C) W_r / S_r is known only after the loop; it goes to row_scale
    # and is applied by the backward (fused by Inductor into whatever consumes the gradient).
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * stride_row
    row_grad = grad_ptr + row * stride_row
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        idx = start + cols
        mask = idx < n_cols
        l = tl.load(row_logits + idx, mask=mask, other=0.0).to(tl.float32)
        s = _cap_sigmoid(l, B, C)
        e = tl.exp(A * s)
        acc += tl.where(mask, e, 0.0)
        tl.store(row_grad + idx, (e * s * (1.0 - s)).to(grad_ptr.dtype.element_ty), mask=mask)
    total_exp = tl.sum(acc, axis=0)
    lse = tl.log(total_exp)
    loss, w_total = _target_terms(row_logits, targets_ptr, weights_ptr, next_loss_ptr, row, lse, A, B, C, K)
    tl.store(loss_ptr + row, loss)
    tl.store(row_scale_ptr + row, (A / C) * w_total / total_exp)

    # The target columns: g_t = (A/C) s_t (1 - s_t) (W e_t / S - c_t), c_t the summed weight of the targets equal to
    # t; stored as u'_t = s_t (1 - s_t) (e_t - S c_t / W) so that row_scale * u'_t is g_t. The barrier orders these
    # stores after the loop's store to the same address (another thread of the program made it).
    tl.debug_barrier()
    for k in tl.static_range(K):
        t = tl.load(targets_ptr + row * K + k)
        c = lse * 0.0
        for j in tl.static_range(K):
            t_j = tl.load(targets_ptr + row * K + j)
            c += tl.where(t_j == t, tl.load(weights_ptr + j), 0.0)
        valid = t >= 0
        safe_t = tl.where(valid, t, 0)
        l_t = tl.load(row_logits + safe_t).to(tl.float32)
        s_t = _cap_sigmoid(l_t, B, C)
        u_t = s_t * (1.0 - s_t) * (tl.exp(A * s_t) - total_exp * c / w_total)
        tl.store(row_grad + safe_t, u_t.to(grad_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _scaled_cast_both_layouts_kernel(u_ptr, row_scale_ptr, factor_ptr, out_ptr, out_t_ptr, n_rows, n_cols,
                                     LIMIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    # One (BM x BN) tile of the one-pass kernel's unnormalized gradient u: times its rows' scales and the factor,
    # clamped to +-LIMIT, cast to the outputs' dtype, stored as is into out (rows, cols) and transposed into
    # out_t (cols, rows). The transposed store goes through the tile in registers (tl.trans), so both stores write
    # whole runs of consecutive bytes.
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    cols = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    u = tl.load(u_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0) * tl.load(factor_ptr)
    g = tl.clamp(u * scale[:, None], -LIMIT, LIMIT).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], g, mask=mask)
    mask_t = (cols[:, None] < n_cols) & row_ok[None, :]
    tl.store(out_t_ptr + cols[:, None] * n_rows + rows[None, :], tl.trans(g), mask=mask_t)


# Tile of the cast: 128 x 128 with 8 warps (a 32 KiB bf16 tile; 128 consecutive bytes per transposed e5m2 column),
# the fastest of six tiles on an H200 (2026-12-03, 32,768 x 50,304: 1.88 ms; the others 1.92-2.14 ms;
# tests/gpu/test_fused_ce_gpu.py::test_bench_scaled_cast_tiles).
CAST_BM, CAST_BN, CAST_WARPS = 128, 128, 8


def scaled_cast_both_layouts(u: torch.Tensor, row_scale: torch.Tensor, factor: torch.Tensor,
                             dtype: torch.dtype = torch.float8_e5m2, bm: int = CAST_BM, bn: int = CAST_BN,
                             num_warps: int = CAST_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(u (N, V), row_scale (N,) float32, factor () float32 on the device) -> (g, g^T contiguous) in dtype, with
    g = clamp(u * row_scale[:, None] * factor) at dtype's largest finite value: the gradient of the one-pass
    kernel, ready for both FP8 matmuls of the head's backward (grad_x reads g row-major, grad_w reads g^T row-major:
    an FP8 matmul on Hopper takes both operands contiguous along the reduced dimension). One pass over u, where
    Inductor's fused cast wrote the transposed copy at about a third of the memory bandwidth (3.0 ms per 32,768
    rows of 50,304, tracks/short/NOTES.md)."""
    assert u.dim() == 2 and u.is_contiguous() and row_scale.shape == (u.size(0),) and factor.numel() == 1
    n_rows, n_cols = u.shape
    out = torch.empty((n_rows, n_cols), dtype=dtype, device=u.device)
    out_t = torch.empty((n_cols, n_rows), dtype=dtype, device=u.device)
    grid = (triton.cdiv(n_rows, bm), triton.cdiv(n_cols, bn))
    _scaled_cast_both_layouts_kernel[grid](u, row_scale.float().contiguous(), factor.float().reshape(1), out, out_t,
                                           n_rows, n_cols, LIMIT=float(torch.finfo(dtype).max), BM=bm, BN=bn,
                                           num_warps=num_warps)
    return out, out_t


def mtp_targets(targets: torch.Tensor, k_max: int) -> torch.Tensor:
    """(B, T) next-token targets -> (B*T, k_max): column k is the target k tokens further on, -1 past the row's end
    (position t predicts targets[t + k]). Every column keeps the row's full length (rolled, the wrapped positions set
    to -1): the track builds it inside its compiled graph, where slices of T - k positions once tripped Inductor."""
    B, T = targets.shape
    position = torch.arange(T, device=targets.device)
    columns = [targets if k == 0 else torch.where(position < T - k, torch.roll(targets, -k, dims=1), -1)
               for k in range(k_max)]
    return torch.stack(columns, dim=-1).view(B * T, k_max)


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, softcap: tuple):
    """The same two outputs in plain torch, as train_gpt.py computes them (softcap in float32, or float64 for
    float64 logits; one logsumexp; a gather per target): what the kernel is tested against."""
    a, b, c = softcap
    x = logits if logits.dtype == torch.float64 else logits.float()
    z = a * torch.sigmoid((x + b) / c)
    lse = torch.logsumexp(z, dim=-1)
    total, next_token = z.new_zeros(()), None
    for k in range(targets.size(1)):
        t = targets[:, k]
        term = torch.where(t >= 0, lse - z.gather(-1, t.clamp(min=0)[:, None]).squeeze(-1), 0.0)
        total = total + weights[k].to(z.dtype) * term.sum()
        if k == 0:
            next_token = term.mean()
    return total, next_token


def _launch(kernel, logits, targets, weights, softcap: tuple, block: int, num_warps: int, row_outputs: int):
    """Run one of the kernels above, one program per row: the bf16 gradient block and row_outputs float32 vectors
    (row loss, next-token loss[, row scale])."""
    assert logits.dim() == 2 and logits.stride(1) == 1, "logits: (rows, vocab), rows contiguous"
    n_rows, n_cols = logits.shape
    a, b, c = (float(v) for v in softcap)
    grad = torch.empty_like(logits)
    rows = [torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(row_outputs)]
    kernel[(n_rows,)](logits, grad, targets.contiguous(), weights.float().contiguous(), *rows, n_cols,
                      logits.stride(0), A=a, B=b, C=c, K=targets.shape[1], BLOCK=block, num_warps=num_warps)
    return grad, rows


# BLOCK 4096 with 8 warps: the fastest of five configs of the two-pass kernel at 16,384 rows x 50,304 on an H200
# (tracks/short/NOTES.md); the track runs these defaults.
BLOCK, NUM_WARPS = 4096, 8


def one_pass_forward(logits, targets, weights, softcap: tuple, block: int = BLOCK, num_warps: int = NUM_WARPS):
    """The one-pass kernel's forward alone: (u, row loss, next-token loss, row scale), u the unnormalized gradient
    block in the logits' dtype, row_scale[:, None] * u the gradient of the row losses' sum (for a caller that owns
    the backward: train_gpt.py's FP8HeadMTPLoss)."""
    u, (row_loss, next_loss, row_scale) = _launch(_softcapped_mtp_ce_one_pass_kernel, logits, targets, weights,
                                                  softcap, block, num_warps, 3)
    return u, row_loss, next_loss, row_scale


def outputs(ctx, row_loss, next_loss):
    """The two outputs of every loss Function here: the summed row losses and the mean next-token loss (no
    gradient)."""
    next_token = next_loss.mean()
    ctx.mark_non_differentiable(next_token)
    return row_loss.sum(), next_token


class SoftcappedMTPCrossEntropy(torch.autograd.Function):
    """(logits (N, V), targets (N, K) int64 with -1 for none, weights (K,) float32) -> (sum over rows of the
    weighted losses, mean next-token loss). Only the first output carries a gradient."""

    @staticmethod
    def forward(ctx, logits, targets, weights, softcap: tuple, block: int = BLOCK, num_warps: int = NUM_WARPS):
        grad, (row_loss, next_loss) = _launch(_softcapped_mtp_ce_kernel, logits, targets, weights, softcap, block,
                                              num_warps, 2)
        ctx.save_for_backward(grad)
        return outputs(ctx, row_loss, next_loss)

    @staticmethod
    def backward(ctx, grad_total, _grad_next):
        (grad,) = ctx.saved_tensors
        # out of place: under torch.compile this multiply fuses into the consumer of the gradient (the FP8 head's
        # cast), and autograd may not let a saved tensor be overwritten
        return grad * grad_total.to(grad.dtype), None, None, None, None, None


class SoftcappedMTPCrossEntropyOnePass(torch.autograd.Function):
    """The same as SoftcappedMTPCrossEntropy with one read of the logits in the forward (and half its exponentials):
    the forward writes an unnormalized gradient and a per-row scale, the backward multiplies them (under
    torch.compile, inside the kernel that consumes the gradient, e.g. the FP8 head's cast)."""

    @staticmethod
    def forward(ctx, logits, targets, weights, softcap: tuple, block: int = BLOCK, num_warps: int = NUM_WARPS):
        grad, row_loss, next_loss, row_scale = one_pass_forward(logits, targets, weights, softcap, block, num_warps)
        ctx.save_for_backward(grad, row_scale)
        return outputs(ctx, row_loss, next_loss)

    @staticmethod
    def backward(ctx, grad_total, _grad_next):
        grad, row_scale = ctx.saved_tensors
        scale = (row_scale * grad_total)[:, None]
        if torch.compiler.is_compiling():  # out of place: Inductor fuses it into the gradient's consumer
            return (grad.float() * scale).to(grad.dtype), None, None, None, None, None
        return grad.mul_(scale), None, None, None, None, None  # eager: float32 math, in place, no float32 copy


# By name, for the track's SPEEDRUN_FUSED_CE_KERNEL (train_gpt.py FUSED_CE_KERNELS lists the same names; its
# Hyperparameters say which one the recipe runs).
KERNELS = {"one_pass": SoftcappedMTPCrossEntropyOnePass, "two_pass": SoftcappedMTPCrossEntropy}
