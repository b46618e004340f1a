"""Short track of the speedrun harness: GPT-2-small-class model on FineWeb to val loss 3.28.

An independent implementation of the recipe of the short-track record "fused value embeddings"
(seeds 001-003 in the design notes): 11 layers, width 768, 6 heads of 128, vocab padded to 50304, no attention
in layer 6, 5 value-embedding tables fused in one parameter, bigram hash embedding, paired-head attention,
YaRN on window changes, partial key offset on long windows, sliding windows in 128-token blocks, batch ramp,
multi-token prediction early, embed/lm_head split at 2/3, FP8 lm_head, Muon-family optimizer (Polar Express on
bf16 weights with a float32 mantissa buffer, own Triton kernel for X X^T) and Adam for embeddings and scalars.

Launch:  python train_gpt.py                                   (one GPU, 8 accumulation steps)
         torchrun --standalone --nproc_per_node=8 train_gpt.py  (the record setting)
Environment: DATA_PATH (the folder holding data/fineweb10B/fineweb_{train,val}_*.bin, default the current
folder: the competition's layout), SPEEDRUN_SEED, and for smoke runs
SPEEDRUN_NUM_ITERATIONS, SPEEDRUN_EXTENSION_ITERATIONS, SPEEDRUN_VAL_TOKENS, SPEEDRUN_VAL_EVERY. Diagnostic
switches (not the recipe; the log says when one is on): SPEEDRUN_WARMUP=0 (compile lazily inside training, so
train_time includes compile), SPEEDRUN_COMPILE=0 (eager model: unfused FlexAttention, slow), SPEEDRUN_FP8_HEAD=0
(bf16 lm_head), SPEEDRUN_TRITON=0 (PyTorch Polar Express), SPEEDRUN_GRAD_STATS=1 (a `grad_stats:` line per step
with the largest gradient of each parameter group; synchronizes every step).

The log follows the competition's protocol (source, versions, nvidia-smi, step lines, peak memory), written to
logs/<uuid>.txt and stdout. Lines that are not step lines (compile time, per-stage step time) are extra
information that log parsers skip; among them `train_loss:` lines at each validation (the training loss since
the last one) and, if the training loss stops being finite, an `error:` line and `nonfinite:` lines before the
run stops with exit code 1. Nothing is downloaded at run time: FlexAttention is the attention backend.
Importing this file does no CUDA work (the CPU tests import it to check the data loader and schedules).
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

HERE = Path(__file__).resolve().parent


def _load_kernels():
    # The track's own Triton kernel, loaded by path so that the script runs from any working directory.
    spec = importlib.util.spec_from_file_location("short_track_kernels", HERE / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernels = _load_kernels()

# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters

BOS_ID = 50256  # <|endoftext|>: every document starts with it
BLOCK = 128  # FlexAttention block size; windows are counted in these blocks


@dataclass
class Hyperparameters:
    data_path: str = "."  # DATA_PATH: the folder that holds data/fineweb10B/ (the competition's layout)
    seed: int = 0
    num_iterations: int = 1535  # scheduled steps; every schedule below is a fraction of these
    extension_iterations: int = 40  # extra steps at the final learning rate with the extended long window
    val_tokens: int = 10_485_760
    val_every: int = 250
    train_seq_len: int = 2048  # one row of a training micro-batch; rows start at a document start
    val_seq_len: int = 4096  # validation rows are longer: the final long window (20 blocks) exceeds 2048
    val_rows: int = 8  # rows per validation micro-batch per GPU
    total_accumulation: int = 8  # world_size * grad_accum_steps
    # optimizer
    batch_divisor: int = 1  # SPEEDRUN_TINY smoke mode divides every batch by 256
    tiny: bool = False
    # diagnostic switches (SPEEDRUN_WARMUP / SPEEDRUN_FP8_HEAD / SPEEDRUN_TRITON = 0); record runs keep them on
    warmup: bool = True
    compile: bool = True
    fp8_head: bool = True
    triton: bool = True
    grad_stats: bool = False
    muon_lr: float = 0.023
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup_frac: float = 300 / 1535
    head_lr: float = 0.008
    embed_lr: float = 0.3
    scalar_lr: float = 0.04
    cooldown_frac: float = 0.5  # linear decay over the last half of the scheduled steps
    final_lr_frac: float = 0.1


DIAGNOSTIC_SWITCHES = ("warmup", "compile", "fp8_head", "triton", "grad_stats")


def read_hyperparameters(env=None) -> Hyperparameters:
    env = os.environ if env is None else env
    hp = Hyperparameters()
    hp.data_path = env.get("DATA_PATH", hp.data_path)
    hp.seed = int(env.get("SPEEDRUN_SEED", hp.seed))
    hp.num_iterations = int(env.get("SPEEDRUN_NUM_ITERATIONS", hp.num_iterations))
    hp.extension_iterations = int(env.get("SPEEDRUN_EXTENSION_ITERATIONS", hp.extension_iterations))
    hp.val_tokens = int(env.get("SPEEDRUN_VAL_TOKENS", hp.val_tokens))
    hp.val_every = int(env.get("SPEEDRUN_VAL_EVERY", hp.val_every))
    for name in DIAGNOSTIC_SWITCHES:
        value = env.get(f"SPEEDRUN_{name.upper()}", "1" if getattr(hp, name) else "0")
        if value not in ("0", "1"):
            raise ValueError(f"SPEEDRUN_{name.upper()} must be 0 or 1, got {value!r}")
        setattr(hp, name, value == "1")
    if env.get("SPEEDRUN_TINY") == "1":
        # Smoke mode for the script's plumbing (CPU or GPU, seconds): a 4-layer width-64 model, 256-token rows,
        # batches / 256, accumulation 2 // world_size (1 or 2 processes). Not the recipe: its losses mean nothing.
        hp.tiny, hp.batch_divisor, hp.total_accumulation = True, 256, 2
        hp.train_seq_len, hp.val_seq_len, hp.val_rows = 256, 256, 2
    if hp.num_iterations < 1 or hp.extension_iterations < 0 or hp.val_every < 1 or hp.val_tokens < 1:
        raise ValueError("SPEEDRUN_* overrides must be positive (extension may be 0)")
    return hp


@dataclass
class ModelConfig:
    vocab_size: int = 50304  # 50257 padded to a multiple of 128
    num_layers: int = 11
    model_dim: int = 768
    num_heads: int = 6
    head_dim: int = 128
    mlp_ratio: int = 4
    no_attention_layers: tuple = (6,)  # 0-based index 6, the seventh layer: MLP only
    long_window_layers: tuple = (3, 7, 10)  # long sliding window + partial key offset; the rest use the short one
    paired_head_layers: tuple = (0, 2, 4, 8)  # paired-head attention (short-window layers)
    value_embed_layers: tuple = (0, 1, 2, 9, 10)  # layer -> table i of the fused 5-table parameter
    bigram_buckets: int = 5 * 50304  # hashed (previous, current) token pairs
    logit_softcap: float = 15.0
    attn_scale: float = 0.12  # with QK-norm the usual 1/sqrt(128) is too small
    use_fp8_head: bool = True  # CUDA only; the CPU tests turn it off
    use_triton: bool = True


def tiny_model_config() -> ModelConfig:
    return ModelConfig(num_layers=4, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(2,),
                       long_window_layers=(3,), paired_head_layers=(0,), value_embed_layers=(0, 3),
                       bigram_buckets=1024)


# ----------------------------------------------------------------------------------------------------------------
# Training schedule: each stage is one compiled graph (batch shape, MTP targets, tied head) plus window sizes.


@dataclass(frozen=True)
class Stage:
    name: str
    end_frac: float  # the stage covers scheduled steps with step/num_iterations < end_frac
    batch_tokens: int  # tokens per optimizer step across all GPUs and accumulation steps
    windows: tuple  # (short, long) sliding windows in 128-token blocks
    mtp_weights: tuple  # loss weights of predicting the next 1, 2, 3 tokens
    tied_head: bool  # embedding shares the lm_head weight until 2/3 of training


# The window ramp (1,3)->(3,7)->(5,11)->(6,13) has four steps and the batch ramp three; the batch changes exactly
# when the window changes (seed 003), at 1/3 and 2/3. The last window step comes at 5/6 (our choice: the records
# do not say). Multi-token prediction is used in the first two thirds only, with decaying weights (our choice).
STAGES = (
    Stage("s0", 1 / 3, 131072, (1, 3), (1.0, 0.5, 0.25), True),
    Stage("s1", 2 / 3, 262144, (3, 7), (1.0, 0.5), True),
    Stage("s2", 5 / 6, 393216, (5, 11), (1.0,), False),
    Stage("s3", 1.0, 393216, (6, 13), (1.0,), False),
)
# After the scheduled steps the long window is extended to 20 blocks (YaRN-rescaled) for the extension steps and
# the final validation.
EXTENSION = Stage("ext", math.inf, 393216, (6, 20), (1.0,), False)


def stage_at(step: int, hp: Hyperparameters) -> Stage:
    if step >= hp.num_iterations:
        return EXTENSION
    frac = step / hp.num_iterations
    for stage in STAGES:
        if frac < stage.end_frac:
            return stage
    return STAGES[-1]


def lr_multiplier(step: int, hp: Hyperparameters) -> float:
    """1.0, then a linear decay over the last cooldown_frac of the scheduled steps to final_lr_frac; held after."""
    frac = min(step / hp.num_iterations, 1.0)
    if frac < 1 - hp.cooldown_frac:
        return 1.0
    w = (1 - frac) / hp.cooldown_frac
    return w * 1.0 + (1 - w) * hp.final_lr_frac


def muon_momentum(step: int, hp: Hyperparameters) -> float:
    warm = max(1, round(hp.muon_momentum_warmup_frac * hp.num_iterations))
    w = min(step / warm, 1.0)
    return (1 - w) * hp.muon_momentum_start + w * hp.muon_momentum_end


# ----------------------------------------------------------------------------------------------------------------
# Data: FineWeb shards (256 int32 header: magic 20240520, version 1, token count; then uint16 tokens)

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256


def read_shard(path) -> np.ndarray:
    path = Path(path)
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: not a FineWeb token shard (bad header)")
    n = int(header[2])
    expected = HEADER_INTS * 4 + 2 * n
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: header says {n} tokens ({expected} bytes) but the file has {path.stat().st_size}")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_INTS * 4)


class BosRowLoader:
    """Rows of seq_len+1 tokens, each starting at a document start (BOS).

    A row takes the tokens from a BOS onward; a document longer than the row is cut (its rest is skipped), and
    the next row starts at the first BOS after the row. A micro-batch of the whole job is world_size * rows
    consecutive rows; rank r takes rows [r*rows, (r+1)*rows). So the data of one optimizer step is the same for
    8 GPUs x 1 accumulation step and 1 GPU x 8 accumulation steps. With cycle=True the loader starts over at the
    first shard when the shards run out (small proxy data), and says so.
    """

    def __init__(self, files, seq_len: int, rank: int = 0, world_size: int = 1, cycle: bool = False):
        if not files:
            raise ValueError("no shards given")
        self.files = [str(f) for f in files]
        self.seq_len = seq_len
        self.rank, self.world_size, self.cycle = rank, world_size, cycle
        self.epoch = 0
        self._open(0)

    def _open(self, index: int):
        self.file_index = index
        self.tokens = read_shard(self.files[index])
        self.bos = np.flatnonzero(self.tokens == BOS_ID)
        self.cursor = 0  # next row starts at the first BOS >= cursor

    def _next_start(self) -> int:
        while True:
            i = np.searchsorted(self.bos, self.cursor)
            if i < len(self.bos) and self.bos[i] + self.seq_len + 1 <= len(self.tokens):
                start = int(self.bos[i])
                self.cursor = start + self.seq_len
                return start
            nxt = self.file_index + 1
            if nxt == len(self.files):
                if not self.cycle:
                    raise StopIteration(f"data exhausted after {len(self.files)} shard(s)")
                self.epoch += 1
                if self.rank == 0:  # every rank reads the same files; one line in the log
                    print(f"data: train shards exhausted, starting epoch {self.epoch + 1}", flush=True)
                nxt = 0
            self._open(nxt)

    def next_batch(self, rows: int):
        """(inputs, targets) int64 tensors of shape (rows, seq_len) for this rank (CPU)."""
        starts = [self._next_start() for _ in range(rows * self.world_size)]
        mine = starts[self.rank * rows:(self.rank + 1) * rows]
        buf = np.stack([self.tokens[s:s + self.seq_len + 1] for s in mine]).astype(np.int64)
        t = torch.from_numpy(buf)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def shard_folder(data_path: str) -> str:
    """Where the shards are: $DATA_PATH/data/fineweb10B, as in the competition's scripts."""
    return os.path.join(data_path, "data", "fineweb10B")


def find_shards(folder: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, f"fineweb_{split}_*.bin")))
    if not files:
        raise FileNotFoundError(f"no fineweb_{split}_*.bin shards in {folder!r} (set DATA_PATH to the folder "
                                f"that holds data/fineweb10B/)")
    return files


# ----------------------------------------------------------------------------------------------------------------
# Attention masks: document masking + causal sliding window, built at block level for FlexAttention


def document_ids(inputs: torch.Tensor) -> torch.Tensor:
    """Per-row document index (0, 1, ...) of each token: rows start at a BOS, each BOS opens a document."""
    return (inputs == BOS_ID).cumsum(dim=1, dtype=torch.int32)


def sliding_window_block_mask(docs: torch.Tensor, window_tokens: torch.Tensor, paired: bool) -> BlockMask:
    """BlockMask for causal attention within a document and within `window_tokens` positions.

    paired=True is the mask of paired-head attention: the sequence is 2T long and position p holds token p // 2
    (two heads of a pair side by side), so a query sees both heads' keys at every allowed token.
    Blocks are classified from the first/last token and document of each 128-position block: skipped
    (nothing allowed), full (everything allowed, no mask_mod call) or partial (mask_mod decides per element).
    The window is a tensor so that changing it does not recompile the model.
    """
    B, T = docs.shape
    L = 2 * T if paired else T
    assert L % BLOCK == 0, f"sequence length {L} must be a multiple of {BLOCK}"
    pos = torch.arange(L, device=docs.device)
    tok = pos // 2 if paired else pos
    first_tok = tok[::BLOCK]  # (nb,)
    last_tok = tok[BLOCK - 1::BLOCK]
    doc_first = docs[:, first_tok]  # (B, nb); documents never decrease along a row
    doc_last = docs[:, last_tok]
    q_first, q_last = first_tok[:, None], last_tok[:, None]  # query blocks along dim 0
    k_first, k_last = first_tok[None, :], last_tok[None, :]  # key blocks along dim 1
    any_causal = k_first <= q_last
    any_window = (q_first - k_last) < window_tokens
    all_causal = k_last <= q_first
    all_window = (q_last - k_first) < window_tokens
    dq_first, dq_last = doc_first[:, :, None], doc_last[:, :, None]
    dk_first, dk_last = doc_first[:, None, :], doc_last[:, None, :]
    any_doc = (dk_last >= dq_first) & (dk_first <= dq_last)
    all_doc = (dq_first == dq_last) & (dk_first == dk_last) & (dq_first == dk_first)
    some = any_causal & any_window & any_doc  # (B, nb, nb)
    full = all_causal & all_window & all_doc
    partial = some & ~full

    def to_indices(m: torch.Tensor):
        counts = m.sum(dim=-1, dtype=torch.int32)
        # blocks with m set first, in increasing key order (argsort of a stable descending sort)
        order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[:, None].contiguous(), order[:, None].contiguous()

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)

    def mask_mod(b, h, q_idx, kv_idx):
        qt = q_idx // 2 if paired else q_idx
        kt = kv_idx // 2 if paired else kv_idx
        return (kt <= qt) & (qt - kt < window_tokens) & (docs[b, qt] == docs[b, kt])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod)


# ----------------------------------------------------------------------------------------------------------------
# Model


def dense_attention(q, k, v, mask: BlockMask) -> torch.Tensor:
    """Attention with the block mask's element mask materialized (CPU only: small sizes)."""
    B, L = q.size(0), q.size(2)
    idx = torch.arange(L, device=q.device)
    allowed = torch.stack([mask.mask_mod(torch.tensor(b), 0, idx[:, None], idx[None, :]) for b in range(B)])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=1.0)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary embedding on half the frequencies; the other half of each head (dims 32-64, 96-128) is stationary.

    apply_yarn() rescales the frequencies when the attention window grows (YaRN): dimensions that complete many
    turns within the old window keep their frequency, slow ones are interpolated by old/new, and the attention
    temperature rises by 0.1*ln(new/old)+1.
    """

    def __init__(self, head_dim: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        quarter = head_dim // 4
        freq = (1 / 1024) ** torch.linspace(0, 1, quarter, dtype=torch.float32)
        self.register_buffer("base_freq", torch.cat([freq, freq.new_zeros(quarter)]), persistent=False)
        self.register_buffer("freq", self.base_freq.clone(), persistent=False)
        self.register_buffer("mscale", torch.ones((), dtype=torch.float32), persistent=False)
        self.register_buffer("cos", torch.empty(max_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim // 2), persistent=False)
        self._refresh()

    @torch.no_grad()
    def _refresh(self):
        t = torch.arange(self.max_len, dtype=torch.float32, device=self.freq.device)
        angle = torch.outer(t, self.freq)
        self.cos.copy_(angle.cos())
        self.sin.copy_(angle.sin())

    @torch.no_grad()
    def reset(self):
        self.freq.copy_(self.base_freq)
        self.mscale.fill_(1.0)
        self._refresh()

    @torch.no_grad()
    def apply_yarn(self, old_window_blocks: int, new_window_blocks: int, alpha: float = 1.0, beta: float = 32.0):
        if new_window_blocks == old_window_blocks:
            return
        s = new_window_blocks / old_window_blocks
        old_tokens = old_window_blocks * BLOCK
        turns = old_tokens * self.freq / (2 * math.pi)  # how many full turns fit in the old window
        keep = ((turns - alpha) / (beta - alpha)).clamp(0, 1)
        self.freq.mul_(keep + (1 - keep) / s)
        self.mscale.mul_(0.1 * math.log(s) + 1)
        self._refresh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H, D)
        T = x.size(1)
        cos = self.cos[None, :T, None, :].to(x.dtype)
        sin = self.sin[None, :T, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, long_window: bool, paired: bool):
        super().__init__()
        self.cfg, self.long_window, self.paired = cfg, long_window, paired
        dim, hd = cfg.model_dim, cfg.num_heads * cfg.head_dim
        bound = math.sqrt(3) * 0.5 * dim ** -0.5
        self.qkv_w = nn.Parameter(torch.empty(3 * hd, dim, dtype=torch.bfloat16).uniform_(-bound, bound))
        self.qkv_w.muon_parts = 3  # Muon orthogonalizes q, k and v separately
        self.o_w = nn.Parameter(torch.zeros(dim, hd, dtype=torch.bfloat16))

    def forward(self, x, ve, ve_lambda, mask: BlockMask, rotary: Rotary):
        B, T, _ = x.shape
        H, D = self.cfg.num_heads, self.cfg.head_dim
        q, k, v = F.linear(x, self.qkv_w).view(B, T, 3, H, D).unbind(dim=2)
        q, k = norm(q), norm(k)
        q, k = rotary(q), rotary(k)
        if self.long_window:
            # Partial key offset (seed 003): the stationary dims of each key carry the previous token's key, so a
            # query can match "the token after X" in one layer (induction).
            q4, h2 = D // 4, D // 2
            k = torch.cat([k[:, :, :, :q4],
                           torch.cat([k[:, :1, :, q4:h2], k[:, :-1, :, q4:h2]], dim=1),
                           k[:, :, :, h2:h2 + q4],
                           torch.cat([k[:, :1, :, h2 + q4:], k[:, :-1, :, h2 + q4:]], dim=1)], dim=-1)
        if ve is not None:
            v = v + ve_lambda * ve.view(B, T, H, D)
        q = q * (self.cfg.attn_scale * rotary.mscale).to(q.dtype)
        if self.paired:
            # (B, T, H, D) -> (B, 2T, H/2, D): the two heads of a pair become neighbouring positions, so each
            # query attends over both heads' keys and values.
            q, k, v = (t.reshape(B, 2 * T, H // 2, D) for t in (q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if q.is_cuda:
            y = flex_attention(q, k, v, block_mask=mask, scale=1.0)
        else:  # CPU smoke runs and tests: FlexAttention has no CPU backward, so use the same mask densely
            y = dense_attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return F.linear(y, self.o_w)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, hidden = cfg.model_dim, cfg.mlp_ratio * cfg.model_dim
        bound = math.sqrt(3) * 0.5 * dim ** -0.5
        self.fc_w = nn.Parameter(torch.empty(hidden, dim, dtype=torch.bfloat16).uniform_(-bound, bound))
        self.proj_w = nn.Parameter(torch.zeros(dim, hidden, dtype=torch.bfloat16))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.fc_w)).square(), self.proj_w)


class FP8Head(torch.autograd.Function):
    """logits = x @ w^T with x and w in float8 e4m3 (per-tensor scales from their max), bf16 output.

    Backward: grad_x in FP8 (grad in e5m2 times w in e4m3); grad_w in bf16, the precision the Adam update of the
    tied embedding/head needs (our choice: the records also do grad_w in FP8 with fixed scales).
    """

    @staticmethod
    def forward(ctx, x, w):
        x_scale = (x.abs().amax().float() / 448.0).clamp(min=1e-12)
        w_scale = (w.abs().amax().float() / 448.0).clamp(min=1e-12)
        x8 = (x / x_scale).to(torch.float8_e4m3fn)
        w8 = (w / w_scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        ctx.save_for_backward(x, w8, w_scale)
        ctx.w_dtype = w.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w8, w_scale = ctx.saved_tensors
        grad = grad.contiguous()
        g_scale = (grad.abs().amax().float() / 57344.0).clamp(min=1e-12)
        g8 = (grad / g_scale).to(torch.float8_e5m2)
        grad_x = torch._scaled_mm(g8, w8.t().contiguous().t(), scale_a=g_scale, scale_b=w_scale,
                                  out_dtype=torch.bfloat16)
        grad_w = (grad.t().to(torch.bfloat16) @ x.to(torch.bfloat16)).to(ctx.w_dtype)
        return grad_x, grad_w


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096):
        super().__init__()
        self.cfg = cfg
        V, dim = cfg.vocab_size, cfg.model_dim
        # lm_head and embedding are one tensor for the first 2/3 of training (tied), then split (split_embed).
        self.lm_head_w = nn.Parameter(torch.randn(V, dim) * 0.005)
        self.embed_w = nn.Parameter(torch.zeros(V, dim))
        self.tied = True
        n_ve = len(cfg.value_embed_layers)
        self.value_embeds = nn.Parameter(torch.zeros(n_ve * V, dim))  # 5 tables fused, zero init (seed 003)
        self.bigram_embed = nn.Parameter(torch.zeros(cfg.bigram_buckets, dim))
        L = cfg.num_layers
        self.attn = nn.ModuleList([
            None if i in cfg.no_attention_layers else Attention(
                cfg, i in cfg.long_window_layers, i in cfg.paired_head_layers)
            for i in range(L)])
        self.mlp = nn.ModuleList([MLP(cfg) for _ in range(L)])
        self.rotary_short = Rotary(cfg.head_dim, max_seq_len)
        self.rotary_long = Rotary(cfg.head_dim, max_seq_len)
        # Scalars (Adam): residual mix x <- a*x + b*x0 per layer, U-net skip weights, value-embed and bigram gains
        self.resid_lambdas = nn.Parameter(torch.tensor([[1.0, 0.0]] * L))
        self.n_skip = L // 2
        self.skip_weights = nn.Parameter(torch.ones(self.n_skip))
        self.ve_lambdas = nn.Parameter(torch.full((n_ve,), 0.5))
        self.bigram_lambda = nn.Parameter(torch.ones(1))

    @torch.no_grad()
    def split_embed(self):
        """End of tying: the embedding starts from the current head weight and trains on its own."""
        self.embed_w.copy_(self.lm_head_w)
        self.tied = False

    @torch.no_grad()
    def set_windows(self, old: tuple, new: tuple):
        self.rotary_short.apply_yarn(old[0], new[0])
        self.rotary_long.apply_yarn(old[1], new[1])

    @torch.no_grad()
    def reset_windows(self):
        self.rotary_short.reset()
        self.rotary_long.reset()

    def bigram_ids(self, inputs: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.full_like(inputs[:, :1], BOS_ID), inputs[:, :-1]], dim=1)
        return ((prev * 1_000_003) ^ (inputs * 7919)) % self.cfg.bigram_buckets

    @staticmethod
    def block_masks(inputs: torch.Tensor, windows: torch.Tensor) -> tuple:
        """The batch's attention masks (short window, short window paired, long window). windows: int tensor
        (short, long) in blocks, a tensor so that a window change does not recompile.

        Built outside the compiled model and passed in: built inside it, on the H100 (torch 2.11, Triton 3.6)
        the compiled block-mask construction gave wrong block indices, so attention skipped allowed keys and
        its backward was off by 30x (training diverged); tests/gpu checks both ways against dense attention."""
        docs = document_ids(inputs)
        short_tokens, long_tokens = windows[0] * BLOCK, windows[1] * BLOCK
        return (sliding_window_block_mask(docs, short_tokens, paired=False),
                sliding_window_block_mask(docs, short_tokens, paired=True),
                sliding_window_block_mask(docs, long_tokens, paired=False))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, masks: tuple, mtp_weights: tuple):
        """Mean loss over tokens (weighted sum of next-k-token losses). masks: block_masks(inputs, windows).
        Returns (loss, next-token loss)."""
        cfg = self.cfg
        B, T = inputs.shape
        embed_w = self.lm_head_w if self.tied else self.embed_w
        x = norm(F.embedding(inputs, embed_w).bfloat16())
        x = x + self.bigram_lambda.bfloat16() * F.embedding(self.bigram_ids(inputs), self.bigram_embed).bfloat16()
        x0 = x
        V = cfg.vocab_size
        ve_all = self.value_embeds.view(len(cfg.value_embed_layers), V, -1)[:, inputs].bfloat16()
        skips = []
        for i in range(cfg.num_layers):
            if i >= cfg.num_layers - self.n_skip:
                x = x + self.skip_weights[cfg.num_layers - 1 - i].bfloat16() * skips.pop()
            lam = self.resid_lambdas[i].bfloat16()
            x = (lam[0] + lam[1]) * x if i == 0 else lam[0] * x + lam[1] * x0
            attn = self.attn[i]
            if attn is not None:
                ve, ve_lambda = None, None
                if i in cfg.value_embed_layers:
                    j = cfg.value_embed_layers.index(i)
                    ve, ve_lambda = ve_all[j], self.ve_lambdas[j].bfloat16()
                rotary = self.rotary_long if attn.long_window else self.rotary_short
                mask = masks[2] if attn.long_window else masks[1] if attn.paired else masks[0]
                x = x + attn(norm(x), ve, ve_lambda, mask, rotary)
            x = x + self.mlp[i](norm(x))
            if i < self.n_skip:
                skips.append(x)
        x = norm(x).view(B * T, -1)
        if cfg.use_fp8_head and x.is_cuda:
            logits = FP8Head.apply(x, self.lm_head_w)
        elif x.is_cuda:
            logits = F.linear(x, self.lm_head_w.bfloat16())
        else:  # CPU smoke: float32 is much faster than bf16 there
            logits = F.linear(x.float(), self.lm_head_w)
        logits = cfg.logit_softcap * torch.tanh(logits.float() / cfg.logit_softcap)
        loss = logits.new_zeros(())
        next_token_loss = None
        for k, weight in enumerate(mtp_weights):
            # target of position t for the (k+1)-th next token is targets[t + k]; the row's last k have none
            tk = targets if k == 0 else F.pad(targets[:, k:], (0, k), value=-100)
            lk = F.cross_entropy(logits, tk.reshape(-1), ignore_index=-100)
            if k == 0:
                next_token_loss = lk
            loss = loss + weight * lk
        return loss, next_token_loss


# ----------------------------------------------------------------------------------------------------------------
# Optimizers

# Polar Express (Amsel, Persson, Musco, Gower 2025): degree-5 polynomial iterations whose coefficients are
# optimal for singular values in [1e-3, 1]; divided by a 1.01 safety factor (a/1.01, b/1.01^3, c/1.01^5).
POLAR_EXPRESS_COEFFS = [
    (a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    ]
]


def polar_express(G: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T for a batch of wide matrices (..., m, n), m <= n, in bf16."""
    assert G.size(-2) <= G.size(-1)
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    sym = kernels.sym_mm if use_triton else kernels.reference
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = sym(X, None, 1.0, 0.0)  # X X^T
        Bm = sym(A, A, c, b)  # c A A^T + b A   (A is symmetric)
        X = torch.baddbmm(X, Bm, X, beta=a, alpha=1.0) if X.dim() == 3 else a * X + Bm @ X
    return X


def split_float32(master: torch.Tensor):
    """float32 -> (bf16 weight holding its top 16 bits, int16 mantissa buffer holding the low 16 bits).

    The bf16 weight is the float32 value truncated, and (weight, mantissa) together are the float32 value
    exactly, so updates accumulate in float32 while the model reads bf16 (seed 002)."""
    bits = master.view(torch.int32)
    return (bits >> 16).to(torch.int16).view(torch.bfloat16), (bits & 0xFFFF).to(torch.int16)


def join_float32(weight_bf16: torch.Tensor, mantissa: torch.Tensor) -> torch.Tensor:
    hi = weight_bf16.view(torch.int16).to(torch.int32) << 16
    lo = mantissa.to(torch.int32) & 0xFFFF
    return (hi | lo).view(torch.float32)


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def all_reduce_mean(t: torch.Tensor):
    if _nccl():
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
    else:  # gloo (CPU smoke runs) has no AVG
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


def reduce_scatter_mean(stack: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's 1/world_size slice (along dim 0) of the mean of `stack` over ranks."""
    per_rank = stack.size(0) // world_size
    if _nccl():
        local = torch.empty(per_rank, *stack.shape[1:], dtype=stack.dtype, device=stack.device)
        dist.reduce_scatter_tensor(local, stack, op=dist.ReduceOp.AVG)
        return local
    all_reduce_mean(stack)
    return stack[rank * per_rank:(rank + 1) * per_rank]


def all_gather_cat(local: torch.Tensor, world_size: int) -> torch.Tensor:
    if _nccl():
        out = torch.empty(local.size(0) * world_size, *local.shape[1:], dtype=local.dtype, device=local.device)
        dist.all_gather_into_tensor(out, local.contiguous())
        return out
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


class Muon:
    """Momentum + Polar Express orthogonalization for the bf16 weight matrices of the blocks.

    Matrices are cut into 768-row blocks oriented wide (q, k, v and o: 768x768; fc^T and proj: 768x3072), stacked
    by shape, and each GPU orthogonalizes its slice of the stack (reduce-scatter of the gradients, all-gather of
    the updates). Every GPU then applies all updates in float32 through the mantissa buffers.
    """

    def __init__(self, params, lr: float, rank: int = 0, world_size: int = 1, use_triton: bool = True):
        self.params = list(params)
        self.lr, self.momentum = lr, 0.95
        self.rank, self.world_size, self.use_triton = rank, world_size, use_triton
        self.mantissa = {p: torch.zeros_like(p, dtype=torch.int16) for p in self.params}
        # groups: shape -> list of (param, slice index or None, transposed, scale)
        self.groups: dict[tuple, list] = {}
        for p in self.params:
            rows, cols = p.shape
            parts = getattr(p, "muon_parts", 1)  # the fused q, k, v weight is three matrices
            if parts > 1:
                for j in range(parts):
                    self._add(p, j, False, (rows // parts, cols))
            elif rows > cols:  # tall (fc): orthogonalize the transpose
                self._add(p, None, True, (cols, rows))
            else:
                self._add(p, None, False, (rows, cols))
        self.buffers = {}
        for shape, members in self.groups.items():
            n = len(members)
            per_rank = -(-n // world_size)
            self.buffers[shape] = torch.zeros(per_rank, *shape, dtype=torch.float32, device=self.params[0].device)

    def _add(self, p, index, transposed, shape):
        rows, cols = p.shape if index is None else (p.shape[0] // p.muon_parts, p.shape[1])
        scale = max(1.0, rows / cols) ** 0.5  # tall matrices get larger updates (shape of the original matrix)
        self.groups.setdefault(shape, []).append((p, index, transposed, scale))

    @staticmethod
    def _view(t, index, transposed, rows_per_slice):
        if index is not None:
            t = t[index * rows_per_slice:(index + 1) * rows_per_slice]
        return t.t() if transposed else t

    @torch.no_grad()
    def step(self, grads: dict, lr_mult: float = 1.0):
        """grads: param -> float32 gradient summed over accumulation steps and already averaged over them."""
        updates = {p: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params}
        for shape, members in self.groups.items():
            per_rank = self.buffers[shape].size(0)
            stack = torch.zeros(per_rank * self.world_size, *shape, dtype=torch.float32, device=self.params[0].device)
            for i, (p, index, transposed, _) in enumerate(members):
                stack[i] = self._view(grads[p], index, transposed, shape[0] if index is not None else 0)
            local = reduce_scatter_mean(stack, self.rank, self.world_size) if self.world_size > 1 else stack
            buf = self.buffers[shape]
            buf.lerp_(local, 1 - self.momentum)
            nesterov = local.lerp(buf, self.momentum)
            ortho = polar_express(nesterov, self.use_triton)
            gathered = all_gather_cat(ortho, self.world_size) if self.world_size > 1 else ortho
            for i, (p, index, transposed, scale) in enumerate(members):
                target = self._view(updates[p], index, transposed, shape[0] if index is not None else 0)
                target.copy_(gathered[i].float() * scale)
        for p in self.params:
            master = join_float32(p.data, self.mantissa[p])
            master.add_(updates[p], alpha=-self.lr * lr_mult)
            w, m = split_float32(master)
            p.data.copy_(w)
            self.mantissa[p].copy_(m)


class Adam:
    """Adam without weight decay for float32 parameters (embeddings, head, scalars), in parameter groups."""

    def __init__(self, groups: list[dict], eps: float = 1e-10):
        self.groups = groups
        self.eps = eps
        self.state = {}

    @torch.no_grad()
    def step(self, grads: dict, lr_mult: float = 1.0):
        for g in self.groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                grad = grads.get(p)
                if grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)}
                st["step"] += 1
                st["m"].lerp_(grad, 1 - b1)
                st["v"].lerp_(grad.square(), 1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["step"])
                v_hat = st["v"] / (1 - b2 ** st["step"])
                p.addcdiv_(m_hat, v_hat.sqrt().add_(self.eps), value=-g["lr"] * lr_mult)


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int):
    muon_params = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith(("attn.", "mlp."))]
    adam = Adam([
        {"params": [model.lm_head_w], "lr": hp.head_lr, "betas": (0.5, 0.95)},
        {"params": [model.embed_w], "lr": hp.embed_lr, "betas": (0.5, 0.95)},
        {"params": [model.value_embeds, model.bigram_embed], "lr": hp.embed_lr, "betas": (0.6, 0.95)},
        {"params": [model.resid_lambdas, model.skip_weights, model.ve_lambdas, model.bigram_lambda],
         "lr": hp.scalar_lr, "betas": (0.6, 0.95)},
    ])
    muon = Muon(muon_params, hp.muon_lr, rank, world_size, use_triton=model.cfg.use_triton)
    covered = set(muon_params) | {p for g in adam.groups for p in g["params"]}
    assert covered == set(model.parameters()), "every parameter needs an optimizer"
    return muon, adam


# ----------------------------------------------------------------------------------------------------------------
# Logging (the competition's log protocol)


class Logger:
    def __init__(self, master: bool):
        self.master = master
        self.path = None
        if master:
            os.makedirs("logs", exist_ok=True)
            self.path = Path("logs") / f"{uuid.uuid4()}.txt"
            self.file = open(self.path, "w", encoding="utf-8")

    def __call__(self, text: str = ""):
        if not self.master:
            return
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def environment_header() -> list[str]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none (not installed)"
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError) as e:
        smi = f"nvidia-smi unavailable: {e}"
    return [
        f"Running Python {sys.version}",
        f"Running PyTorch {torch.__version__} compiled for CUDA {torch.version.cuda}",
        f"Running Triton version {triton_version}",
        smi,
    ]


# ----------------------------------------------------------------------------------------------------------------
# Divergence guard: the training loss is kept on the device every step (no synchronization); it is printed at
# each validation and a non-finite value stops the run with a report of where the non-finite values are.


def train_loss_line(losses: torch.Tensor, first: int, last: int) -> str:
    """One log line for the next-token training losses of steps first..last (1-based, as the step lines count).

    It starts with `train_loss:`, never `step:`: the step lines are the competition's protocol and stay as they are.
    """
    window = losses[first - 1:last].double().cpu()
    finite = torch.isfinite(window)
    text = f"train_loss: steps {first}-{last} last:{window[-1].item():.4f} mean:{window.mean().item():.4f}"
    if not finite.all():
        text += f" first_nonfinite_step:{first + int(torch.nonzero(~finite)[0])}"
    return text


def grad_stats_line(model: nn.Module, grads: dict) -> str:
    """Largest |gradient| (averaged over accumulation steps) of every parameter, and the largest |weight| of the
    embeddings and scalars. A diagnostic: it waits for the GPU."""
    groups: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p in grads:
            groups[name.removesuffix("_w")] = grads[p].abs().max().item()
    weights = {n: p.detach().abs().max().item() for n, p in model.named_parameters()
               if not n.startswith(("attn.", "mlp."))}
    return ("grad_stats: " + " ".join(f"{k}:{v:.3g}" for k, v in groups.items())
            + " | max|w| " + " ".join(f"{k}:{v:.3g}" for k, v in weights.items()))


def nonfinite_report(model: nn.Module, muon: Muon, adam: Adam) -> list[str]:
    """Where the non-finite values are after a non-finite training loss (parameters, optimizer state)."""
    def bad(t: torch.Tensor) -> bool:
        return not bool(torch.isfinite(t).all())

    names = {p: n for n, p in model.named_parameters()}
    params = [n for n, p in model.named_parameters() if bad(p)]
    adam_state = [f"{names[p]}.{k}" for p, st in adam.state.items() for k in ("m", "v") if bad(st[k])]
    muon_state = [f"momentum{tuple(shape)}" for shape, buf in muon.buffers.items() if bad(buf)]
    return [
        f"nonfinite: parameters: {', '.join(params) or 'none'}",
        f"nonfinite: adam state: {', '.join(adam_state) or 'none'}; muon momentum: {', '.join(muon_state) or 'none'}",
        "nonfinite: (finite parameters with a non-finite loss point at the forward pass: a kernel, the compiled "
        "graph or an overflow in the activations; non-finite parameters point at the optimizer step before)",
    ]


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class StageTiming:
    first_step: int
    steps: int = 0
    t_start_ms: float | None = None  # training-clock time once the stage's first 5 steps ran
    t_end_ms: float | None = None
    timed_steps: int = 0


def main():
    hp = read_hyperparameters()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if hp.total_accumulation % world_size:
        raise SystemExit(f"WORLD_SIZE must divide {hp.total_accumulation}, got {world_size}")
    grad_accum = hp.total_accumulation // world_size
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not hp.tiny:
        raise SystemExit("the short track needs CUDA; its CPU smoke mode (track.toml [smoke]): SPEEDRUN_TINY=1 "
                         "SPEEDRUN_NUM_ITERATIONS=4 SPEEDRUN_EXTENSION_ITERATIONS=1 SPEEDRUN_VAL_EVERY=4 "
                         "SPEEDRUN_VAL_TOKENS=2048 OMP_NUM_THREADS=1")
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if on_gpu else "gloo", device_id=device if on_gpu else None)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    master = rank == 0
    log = Logger(master)

    log(Path(__file__).read_text(encoding="utf-8"))
    log("=" * 100)
    for line in environment_header():
        log(line)
    log("=" * 100)

    val_chunk = world_size * hp.val_rows * hp.val_seq_len
    if hp.val_tokens % val_chunk:
        raise SystemExit(f"SPEEDRUN_VAL_TOKENS={hp.val_tokens} must be a multiple of {val_chunk}")
    train_files = find_shards(shard_folder(hp.data_path), "train")
    val_files = find_shards(shard_folder(hp.data_path), "val")
    log(f"data: {len(train_files)} train shard(s), {len(val_files)} val shard(s) in {shard_folder(hp.data_path)}; "
        f"world_size={world_size} grad_accum={grad_accum} seed={hp.seed}")

    torch.manual_seed(hp.seed)
    cfg = tiny_model_config() if hp.tiny else ModelConfig()
    cfg.use_fp8_head = on_gpu and hp.fp8_head
    cfg.use_triton = on_gpu and hp.triton
    changed = [f"{name}={int(getattr(hp, name))}" for name in DIAGNOSTIC_SWITCHES
               if getattr(hp, name) != getattr(Hyperparameters, name)]
    if changed:
        log(f"diagnostic: {' '.join(changed)} (not the recipe of the track)")
    model = GPT(cfg, max_seq_len=max(hp.train_seq_len, hp.val_seq_len)).to(device)
    for p in model.parameters():  # identical initial weights on every GPU
        if world_size > 1:
            dist.broadcast(p.data, 0)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    compiled = torch.compile(model, dynamic=False) if on_gpu and hp.compile else model
    # the stages' windows on the device once: building them in a step would copy host->device with a
    # synchronize, so the host could not queue the next step while the GPU still runs the last one
    window_tensors = {st: torch.tensor(st.windows, dtype=torch.int32, device=device) for st in (*STAGES, EXTENSION)}

    def train_step(stage: Stage, loader: BosRowLoader, muon: Muon, adam: Adam, lr_mult: float, momentum: float):
        rows = stage.batch_tokens // hp.batch_divisor // hp.total_accumulation // hp.train_seq_len
        windows = window_tensors[stage]
        grads = {}
        loss_sum = torch.zeros((), device=device)  # weighted MTP loss, to catch any non-finite value
        next_sum = torch.zeros((), device=device)  # next-token loss, comparable to val_loss
        for _ in range(grad_accum):
            inputs, targets = loader.next_batch(rows)
            if on_gpu:
                inputs = inputs.pin_memory().to(device, non_blocking=True)
                targets = targets.pin_memory().to(device, non_blocking=True)
            loss, next_loss = compiled(inputs, targets, model.block_masks(inputs, windows), stage.mtp_weights)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
            next_sum += next_loss.detach()
            for p in model.parameters():  # accumulate in float32 (the Muon weights and their grads are bf16)
                if p.grad is not None:
                    if p in grads:
                        grads[p].add_(p.grad)  # bf16 into float32: promoted exactly, no float32 copy per micro-step
                    else:
                        grads[p] = p.grad.float()
                    p.grad = None
        if hp.grad_stats:
            log(grad_stats_line(model, grads))
        adam_grads = {}
        for g in adam.groups:
            for p in g["params"]:
                if p in grads:
                    if world_size > 1:
                        all_reduce_mean(grads[p])
                    adam_grads[p] = grads[p]
        muon.momentum = momentum
        adam.step(adam_grads, lr_mult)
        muon.step(grads, lr_mult)
        # the next-token loss, or NaN when any part of the loss was non-finite
        return torch.where(torch.isfinite(loss_sum), next_sum, torch.nan) / grad_accum

    def enter_stage(old: Stage | None, new: Stage):
        if old is not None and old.windows != new.windows:
            model.set_windows(old.windows, new.windows)
        if (old is None or old.tied_head) and not new.tied_head:
            model.split_embed()

    @torch.no_grad()
    def validate(stage: Stage, batches: int | None = None) -> float:
        model.eval()
        loader = BosRowLoader(val_files, hp.val_seq_len, rank, world_size, cycle=False)
        windows = window_tensors[stage]
        total = torch.zeros((), device=device)
        n = batches or hp.val_tokens // val_chunk
        for _ in range(n):
            inputs, targets = loader.next_batch(hp.val_rows)
            inputs, targets = inputs.to(device), targets.to(device)
            _, loss = compiled(inputs, targets, model.block_masks(inputs, windows), (1.0,))
            total += loss
        total /= n
        if world_size > 1:
            all_reduce_mean(total)
        model.train()
        return total.item()

    @torch.no_grad()
    def forward_probe(stage: Stage) -> str:
        """After a non-finite training loss with finite weights: one validation batch through the compiled model
        (its validation graph is already compiled), the eager model, and the eager model with a bf16 head instead
        of FP8. A finite eager loss beside a non-finite compiled one points at the compiled graph; a finite bf16
        head loss beside a non-finite FP8 one at the FP8 head."""
        loader = BosRowLoader(val_files, hp.val_seq_len, rank, world_size, cycle=False)
        inputs, targets = (t.to(device) for t in loader.next_batch(hp.val_rows))
        windows = window_tensors[stage]
        fp8 = cfg.use_fp8_head
        results = []
        model.eval()
        for name, forward, use_fp8 in (("compiled", compiled, fp8), ("eager", model, fp8),
                                       ("eager_bf16_head", model, False)):
            cfg.use_fp8_head = use_fp8
            try:
                masks = model.block_masks(inputs, windows)
                results.append(f"{name}:{forward(inputs, targets, masks, (1.0,))[1].item():.4f}")
            except Exception as e:  # a diagnosis must not hide the report above (e.g. eager attention out of memory)
                results.append(f"{name}:failed({type(e).__name__})")
            finally:
                cfg.use_fp8_head = fp8
        model.train()
        return f"nonfinite: forward probe, one validation batch with the current weights: {' '.join(results)}"

    # -------- compile and warm-up: run every stage's graph once and the validation graph, then restore the
    # initial weights. Not part of train_time.
    sync()
    t_warm = time.perf_counter()
    warm_loader = BosRowLoader(train_files, hp.train_seq_len, rank, world_size, cycle=True)
    muon, adam = build_optimizers(model, hp, rank, world_size)
    previous = None
    for stage in (list(STAGES) + [EXTENSION]) if hp.warmup else []:
        enter_stage(previous, stage)
        t0 = time.perf_counter()
        warm_loss = train_step(stage, warm_loader, muon, adam, lr_mult=0.0, momentum=hp.muon_momentum_end)
        sync()
        log(f"warmup: stage {stage.name} compiled and ran one step in {1000 * (time.perf_counter() - t0):.0f}ms "
            f"(train loss {warm_loss.item():.4f})")
        if stage is STAGES[0] or stage is EXTENSION:  # validation graphs: tied head (early), untied (late)
            t0 = time.perf_counter()
            validate(stage, batches=1)
            sync()
            log(f"warmup: validation graph ({'tied' if stage.tied_head else 'untied'} head) "
                f"in {1000 * (time.perf_counter() - t0):.0f}ms")
        previous = stage
    model.load_state_dict(initial_state)
    model.tied = True
    model.reset_windows()
    del warm_loader
    sync()
    log(f"compile_and_warmup_time:{1000 * (time.perf_counter() - t_warm):.0f}ms")
    for note in kernels.FALLBACKS:
        log(note)
    if on_gpu and not kernels.FALLBACKS:
        log(f"triton_configs: frozen configs for {torch.cuda.get_device_name()!r} from {kernels.CONFIG_PATH.name}")

    # -------- training
    muon, adam = build_optimizers(model, hp, rank, world_size)
    loader = BosRowLoader(train_files, hp.train_seq_len, rank, world_size, cycle=True)
    total_steps = hp.num_iterations + hp.extension_iterations
    training_time_ms = 0.0
    timings: dict[str, StageTiming] = {}
    stage = None
    # Divergence guard. train_losses[i] is the next-token loss of step i+1 (NaN if any part of its loss was not
    # finite), written on the device; nonfinite is set by the first non-finite one. A pinned host copy of the
    # flag is made without waiting, so a single process sees it a step or two later at no cost; with several
    # processes the flag is agreed on at the validation steps only (all ranks must stop at the same point), and
    # the printed losses are rank 0's share of each batch.
    train_losses = torch.zeros(total_steps, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    nonfinite_host = torch.zeros((), dtype=torch.bool, pin_memory=on_gpu)
    last_reported = 0

    def stop_on_nonfinite(step: int):
        sync()
        if step > last_reported:
            log(train_loss_line(train_losses, last_reported + 1, step))
        losses = train_losses[:step].cpu()
        bad = torch.nonzero(~torch.isfinite(losses))
        first = 1 + int(bad[0]) if len(bad) else step + 1  # else: finite losses, but a weight is not finite
        before = " ".join(f"{v:.4f}" for v in losses[max(0, first - 9):first - 1].tolist())
        if len(bad):
            log(f"error: the training loss is not finite from step {first} on (checked at step {step}); "
                f"stopping the run")
        else:
            log(f"error: a weight or optimizer state is not finite after step {step} (the training loss was "
                f"finite up to there); stopping the run before validation")
        # a loss that climbs before the NaN is a divergence; a NaN right after ordinary losses is a numerical fault
        log(f"nonfinite: training losses of the steps before step {first}: {before or 'none'}")
        for line in nonfinite_report(model, muon, adam):
            log(line)
        if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            log(forward_probe(stage))
        if world_size > 1:
            dist.destroy_process_group()
        sys.exit(1)

    sync()
    t0 = time.perf_counter()
    for step in range(total_steps + 1):
        last = step == total_steps
        if world_size == 1 and nonfinite_host.item():
            stop_on_nonfinite(step)
        if last or step % hp.val_every == 0:
            sync()
            training_time_ms += 1000 * (time.perf_counter() - t0)
            if step > 0:
                # the weights too (validation time is not training time): a weight the last optimizer step made
                # non-finite would otherwise first show as val_loss:nan
                nonfinite |= ~torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
                if world_size > 1:
                    flag = nonfinite.float()
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    nonfinite.copy_(flag > 0)
                if nonfinite.item():
                    stop_on_nonfinite(step)
                log(train_loss_line(train_losses, last_reported + 1, step))
                last_reported = step
            if stage is None:
                stage = stage_at(0, hp)
                enter_stage(None, stage)
            if last and stage is not EXTENSION:  # the final validation uses the extended windows
                enter_stage(stage, EXTENSION)
                stage = EXTENSION
            val_loss = validate(stage)
            log(f"step:{step}/{total_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                f"step_avg:{training_time_ms / max(step, 1):.2f}ms")
            sync()
            t0 = time.perf_counter()
        if last:
            break
        new_stage = stage_at(step, hp)
        if new_stage is not stage:
            enter_stage(stage, new_stage)
            stage = new_stage
        if new_stage.name not in timings:
            timings[new_stage.name] = StageTiming(first_step=step)
        timing = timings[new_stage.name]
        step_loss = train_step(new_stage, loader, muon, adam, lr_multiplier(step, hp), muon_momentum(step, hp))
        train_losses[step] = step_loss
        nonfinite |= ~torch.isfinite(step_loss)
        nonfinite_host.copy_(nonfinite, non_blocking=True)
        timing.steps += 1
        # steady-state time per stage: synchronized clock readings after the stage's 5th step and at its end
        if timing.steps == 5 or stage_at(step + 1, hp) is not new_stage or step + 1 == total_steps:
            sync()
            now = training_time_ms + 1000 * (time.perf_counter() - t0)
            if timing.steps == 5:
                timing.t_start_ms, timing.timed_steps = now, 0
            if timing.t_start_ms is not None and timing.steps > 5:
                timing.t_end_ms = now
        if timing.t_start_ms is not None and timing.steps > 5:
            timing.timed_steps += 1
        approx = training_time_ms + 1000 * (time.perf_counter() - t0)
        log(f"step:{step + 1}/{total_steps} train_time:{approx:.0f}ms step_avg:{approx / (step + 1):.2f}ms")

    for name, t in timings.items():
        if t.t_end_ms is not None and t.timed_steps > 0:
            steady = (t.t_end_ms - t.t_start_ms) / t.timed_steps
            log(f"stage:{name} first_step:{t.first_step} steps:{t.steps} steady_step_ms:{steady:.2f} "
                f"(mean over steps 6..{t.steps}, validation excluded)")
    allocated = torch.cuda.max_memory_allocated() if on_gpu else 0
    reserved = torch.cuda.max_memory_reserved() if on_gpu else 0
    log(f"peak memory allocated: {allocated // 1024 // 1024} MiB reserved: {reserved // 1024 // 1024} MiB")
    if world_size > 1:
        dist.barrier()  # leave together: a rank tearing gloo/NCCL down while another still talks can abort
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
