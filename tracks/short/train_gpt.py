"""Short track of the speedrun harness: GPT-2-small-class model on FineWeb to val loss 3.28.

An independent implementation of the recipe of the short-track record "fused value embeddings"
(seeds 001-003 in the design notes), following the facts of the record's code of seed 001 (NOTES.md has the
point-by-point table): 11 layers, width 768, 6 heads of 128, vocab padded to 50304, no attention in layer 6,
5 value-embedding tables fused in one parameter, bigram hash embedding, attention and value-embedding gates,
smear, one gated skip, backout, paired-head attention, YaRN on window changes, partial key offset on long
windows, sliding windows in 128-token blocks over packed documents, batch ramp with stage learning rates,
multi-token prediction early, embed/lm_head split at 2/3, FP8 lm_head with fixed scales, NorMuon (Polar Express
on bf16 weights with a float32 mantissa buffer, own Triton kernel for X X^T, variance reduction, cautious weight
decay) and Adam with cautious weight decay on odd steps for embeddings, gates and scalars.

Launch:  python train_gpt.py                                   (one GPU, 8 accumulation steps)
         torchrun --standalone --nproc_per_node=8 train_gpt.py  (the record setting)
Environment: DATA_PATH (the folder holding data/fineweb10B/fineweb_{train,val}_*.bin, default the current
folder: the competition's layout), SPEEDRUN_SEED, and for smoke runs
SPEEDRUN_NUM_ITERATIONS, SPEEDRUN_EXTENSION_ITERATIONS, SPEEDRUN_VAL_TOKENS, SPEEDRUN_VAL_EVERY. Diagnostic
switches (not the recipe; the log says when one is on): SPEEDRUN_WARMUP=0 (compile lazily inside training, so
train_time includes compile), SPEEDRUN_COMPILE=0 (eager model: unfused FlexAttention, slow), SPEEDRUN_FP8_HEAD=0
(bf16 lm_head), SPEEDRUN_TRITON=0 (PyTorch Polar Express), SPEEDRUN_FUSED_CE=0 (the training loss through
Inductor instead of fused_ce.py's kernel), SPEEDRUN_FUSED_CE_KERNEL=two_pass (its two-pass kernel in place of the
one-pass one; the FP8 head's gradient cast then goes back to Inductor), SPEEDRUN_FUSED_HEAD=0 (the FP8 head's
backward casts the loss's gradient through Inductor instead of fused_ce.py's kernel), SPEEDRUN_GRAD_STATS=1 (a `grad_stats:` line per step
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


def _load_module(name: str, file: str):
    # The track's own Triton kernels, loaded by path so that the script runs from any working directory. Registered
    # in sys.modules: dynamo imports the module of an autograd.Function it traces by name (fused_ce.py under
    # torch.compile died with "No module named 'short_track_fused_ce'" on the H200 without it).
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kernels = _load_module("short_track_kernels", "kernels.py")
try:
    import triton  # noqa: F401  (fused_ce.py defines its kernel at import)
    fused_ce = _load_module("short_track_fused_ce", "fused_ce.py")
except ImportError:  # CPU-only environments: the plain loss path
    fused_ce = None

# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters

BOS_ID = 50256  # <|endoftext|>: every document starts with it
BLOCK = 128  # FlexAttention block size; windows are counted in these blocks


@dataclass
class Hyperparameters:
    data_path: str = "."  # DATA_PATH: the folder that holds data/fineweb10B/ (the competition's layout)
    seed: int = 0
    num_iterations: int = 1535  # scheduled steps; every schedule below is a fraction of these
    extension_iterations: int = 40  # extra steps at the final learning rate with the extension stage's windows
    val_tokens: int = 10_485_760
    val_every: int = 250
    train_seq_len: int = 2048  # longest document piece of a training micro-batch (a longer document is cut)
    val_seq_len: int = 4096  # validation: one packed row of val_rows * val_seq_len stream tokens per GPU and
    val_rows: int = 64  # micro-step (262144, as the record's validation batch of 8 x 262144 tokens)
    total_accumulation: int = 8  # world_size * grad_accum_steps
    # optimizer
    batch_divisor: int = 1  # SPEEDRUN_TINY smoke mode divides every batch by 256
    tiny: bool = False
    # diagnostic switches (SPEEDRUN_WARMUP / SPEEDRUN_FP8_HEAD / SPEEDRUN_TRITON / SPEEDRUN_FUSED_CE = 0); record
    # runs keep them on
    warmup: bool = True
    compile: bool = True
    fp8_head: bool = True
    triton: bool = True
    fused_ce: bool = True
    fused_ce_kernel: str = "one_pass"  # SPEEDRUN_FUSED_CE_KERNEL: one of FUSED_CE_KERNELS
    # the FP8 head and the one-pass loss as one Function whose backward casts the gradient in a Triton kernel of
    # ours (FP8HeadMTPLoss). On the device (NOTES.md, 2026-12-03): the compiled head + loss 10.0 ms against 11.1 ms
    # through Inductor's cast; the track at 0.938x the record's train time with it, 0.960x without (two sessions)
    fused_head: bool = True
    grad_stats: bool = False
    muon_lr: float = 0.023
    muon_weight_decay: float = 1.2  # cautious; multiplied by the scheduled Muon lr and the matrix's own lr
    muon_beta2: float = 0.95  # NorMuon: EMA of the per-row (per-hidden-unit) mean square of the update
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup_steps: int = 300  # of 1535: scaled with num_iterations
    muon_momentum_cooldown_steps: int = 50  # the last 50 of all 1575 steps (scaled): back down to 0.85
    adam_lr: float = 0.008  # base Adam lr; each parameter group has its multiple (build_optimizers)
    adam_weight_decay: float = 0.005  # cautious; each group has its multiple
    cooldown_frac: float = 0.55  # linear decay over the last 55 % of the scheduled steps
    final_lr_frac: float = 0.1


DIAGNOSTIC_SWITCHES = ("warmup", "compile", "fp8_head", "triton", "fused_ce", "fused_head", "grad_stats")
FUSED_CE_KERNELS = ("one_pass", "two_pass")  # the names of fused_ce.KERNELS (fused_ce.py needs Triton to import)


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
    hp.fused_ce_kernel = env.get("SPEEDRUN_FUSED_CE_KERNEL", hp.fused_ce_kernel)
    if hp.fused_ce_kernel not in FUSED_CE_KERNELS:
        raise ValueError(f"SPEEDRUN_FUSED_CE_KERNEL must be one of {', '.join(FUSED_CE_KERNELS)}, "
                         f"got {hp.fused_ce_kernel!r}")
    if hp.fused_ce_kernel != "one_pass":
        # the fused head is built on the one-pass kernel's outputs: the two-pass diagnostic runs without it, and
        # asking for both is a contradiction, not a choice to make silently
        if env.get("SPEEDRUN_FUSED_HEAD") == "1":
            raise ValueError("SPEEDRUN_FUSED_HEAD=1 runs the one-pass kernel; it cannot be combined with "
                             f"SPEEDRUN_FUSED_CE_KERNEL={hp.fused_ce_kernel}")
        hp.fused_head = False
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
    long_window_layers: tuple = (3, 10)  # long sliding window + partial key offset; the rest use the short one
    paired_head_layers: tuple = (0, 2, 5, 9)  # paired-head attention (short-window layers)
    value_embed_layers: tuple = (0, 1, 8, 9, 10)  # layer -> table i of the fused 5-table parameter
    skip_from: int = 3  # one gated skip: the output of layer 3 joins the input of layer 6
    skip_to: int = 6
    backout_layer: int = 7  # the output of layer 7, times a learned gain, is subtracted before the head
    gate_dims: int = 12  # the attention, value-embedding, smear and skip gates read the first 12 dims
    bigram_buckets: int = 5 * 50304  # hashed (previous, current) token pairs; the last bucket is position 0's
    softcap: tuple = (23.0, 5.0, 7.5)  # logits -> A * sigmoid((logits + B) / C)
    attn_scale: float = 0.1  # softmax scale before YaRN (QK-norm makes 1/sqrt(128) too small)
    use_fp8_head: bool = True  # CUDA only; the CPU tests turn it off
    use_triton: bool = True
    use_fused_ce: bool = False  # the training loss through fused_ce.py (main() turns it on where Triton runs)
    fused_ce_kernel: str = Hyperparameters.fused_ce_kernel  # which of fused_ce.KERNELS
    use_fused_head: bool = False  # FP8 head + one-pass loss as one Function (FP8HeadMTPLoss); main() sets it


def tiny_model_config() -> ModelConfig:
    return ModelConfig(num_layers=4, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(2,),
                       long_window_layers=(3,), paired_head_layers=(0,), value_embed_layers=(0, 3),
                       skip_from=1, skip_to=2, backout_layer=2, bigram_buckets=1024)


# ----------------------------------------------------------------------------------------------------------------
# Training schedule (the record's): three stages of a third of the scheduled steps each, then the extension.
# A stage is one compiled graph (tokens per micro-batch, number of MTP targets) plus its windows.


@dataclass(frozen=True)
class Stage:
    name: str
    duration: float  # fraction of the scheduled steps (the extension: the extension steps)
    batch_tokens: int  # tokens per optimizer step across all GPUs and accumulation steps
    windows: tuple  # (short, long) sliding windows in 128-token blocks
    lr_mul: float  # learning-rate multiple of the stage (batch ramp: about (batch / 131072) ** 0.5..0.6)
    mtp_start: tuple  # loss weights of the next 1, 2, 3 tokens at the stage's first step ...
    mtp_end: tuple  # ... and at its end, linear in between


STAGES = (
    Stage("s0", 1 / 3, 131072, (1, 3), 1.0, (1.0, 0.5, 0.25), (1.0, 0.5, 0.0)),
    Stage("s1", 1 / 3, 262144, (3, 7), 1.52, (1.0, 0.5), (1.0, 0.0)),
    Stage("s2", 1 / 3, 393216, (5, 11), 1.73, (1.0,), (1.0,)),
)
# The extension steps run at the final lr (its lr_mul is never used: the cooldown has ended) with the windows
# (6, 13); the final validation then widens the long window to 20 blocks without a further YaRN rescale.
EXTENSION = Stage("ext", 0.0, 393216, (6, 13), 1.0, (1.0,), (1.0,))
FINAL_VALIDATION_WINDOWS = (6, 20)


def stage_bounds(hp: Hyperparameters) -> list[tuple[Stage, int, int]]:
    """(stage, first step, end step) of every stage: boundaries at round(n/3) and round(2n/3)."""
    ends, acc = [0], 0.0
    for stage in STAGES:
        acc += stage.duration
        ends.append(round(acc * hp.num_iterations))
    ends[-1] = hp.num_iterations
    bounds = [(st, a, b) for st, a, b in zip(STAGES, ends, ends[1:])]
    bounds.append((EXTENSION, hp.num_iterations, hp.num_iterations + hp.extension_iterations))
    return bounds


def stage_position(step: int, hp: Hyperparameters) -> tuple[Stage, float]:
    """The stage of `step` and how far through it the step is (0 at its first step); past the end: (ext, 1)."""
    for stage, start, end in stage_bounds(hp):
        if step < end:
            return stage, (step - start) / (end - start)
    return EXTENSION, 1.0


def stage_at(step: int, hp: Hyperparameters) -> Stage:
    return stage_position(step, hp)[0]


def split_step(hp: Hyperparameters) -> int:
    """The embedding unties from the head after the optimizer step of this step: the first step of s2, made odd
    (an Adam step, so the tied pair gets its last joint update there)."""
    return stage_bounds(hp)[2][1] | 1


def mtp_weights(step: int, hp: Hyperparameters) -> tuple:
    stage, t = stage_position(step, hp)
    return tuple(a + (b - a) * t for a, b in zip(stage.mtp_start, stage.mtp_end))


def is_adam_step(step: int) -> bool:
    """Adam runs on odd steps only, on the gradients of two steps (the record's: half the Adam work)."""
    return step % 2 == 1


def lr_multiplier(step: int, hp: Hyperparameters) -> float:
    """The stage's lr_mul, then a linear blend towards final_lr_frac over the last cooldown_frac of the
    scheduled steps; final_lr_frac during the extension."""
    lr = stage_at(step, hp).lr_mul
    start = int(hp.num_iterations * (1 - hp.cooldown_frac))
    if step >= start:
        t = min(1.0, (step - start) / (hp.num_iterations - start))
        lr = lr * (1 - t) + hp.final_lr_frac * t
    return lr


def muon_momentum(step: int, hp: Hyperparameters) -> float:
    """0.85 -> 0.95 over the warm-up steps, 0.95, then back to 0.85 over the last cooldown steps of the run."""
    scale = hp.num_iterations / 1535
    warm = max(1, round(hp.muon_momentum_warmup_steps * scale))
    cool = max(1, round(hp.muon_momentum_cooldown_steps * scale))
    lo, hi = hp.muon_momentum_start, hp.muon_momentum_end
    cool_start = hp.num_iterations + hp.extension_iterations - cool
    if step < warm:
        return lo + (hi - lo) * step / warm
    if step > cool_start:
        return hi - (hi - lo) * (step - cool_start) / cool
    return hi


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


class DocPackLoader:
    """Training micro-batches as one packed row of whole-document pieces (the record's BOS-aligned batches).

    A micro-batch of one rank is exactly `tokens` inputs (and the same tokens shifted by one as targets): pieces
    that each start at a BOS and run to the next BOS, cut at max_piece tokens (the rest of a long document is
    skipped) and, for the last piece, cut where the micro-batch is full. Documents follow each other without
    gaps otherwise. Rank r takes the r-th of world_size consecutive micro-batches, so the data of one optimizer
    step is the same for 8 GPUs x 1 accumulation step and 1 GPU x 8. At a shard's end the micro-batch starts
    over in the next shard (the tail is dropped); with cycle=True the loader starts over at the first shard and
    says so.
    """

    def __init__(self, files, max_piece: int, rank: int = 0, world_size: int = 1, cycle: bool = False):
        if not files:
            raise ValueError("no shards given")
        self.files = [str(f) for f in files]
        self.max_piece = max_piece
        self.rank, self.world_size, self.cycle = rank, world_size, cycle
        self.epoch = 0
        self._open(0)

    def _open(self, index: int):
        self.file_index = index
        self.tokens = read_shard(self.files[index])
        self.bos = np.flatnonzero(self.tokens == BOS_ID)
        self.next_doc = 0  # index into self.bos of the next piece's document

    def _next_shard(self):
        nxt = self.file_index + 1
        if nxt == len(self.files):
            if not self.cycle:
                raise StopIteration(f"data exhausted after {len(self.files)} shard(s)")
            self.epoch += 1
            if self.rank == 0:  # every rank reads the same files; one line in the log
                print(f"data: train shards exhausted, starting epoch {self.epoch + 1}", flush=True)
            nxt = 0
        self._open(nxt)

    def _pieces(self, tokens: int):
        """(start, end) pieces of one micro-batch of `tokens` + 1 tokens, or None at the shard's end."""
        pieces, have, doc = [], 0, self.next_doc
        while have <= tokens:
            if doc >= len(self.bos):
                return None
            start = int(self.bos[doc])
            doc_end = int(self.bos[doc + 1]) if doc + 1 < len(self.bos) else len(self.tokens)
            end = min(doc_end, start + self.max_piece, start + tokens + 1 - have)
            pieces.append((start, end))
            have += end - start
            doc += 1
        self.next_doc = doc
        return pieces

    def next_batch(self, tokens: int):
        """(inputs, targets) int64 tensors of shape (1, tokens) for this rank (CPU)."""
        while True:
            first_doc = self.next_doc
            batches = [self._pieces(tokens) for _ in range(self.world_size)]
            if all(b is not None for b in batches):
                break
            self.next_doc = first_doc
            self._next_shard()
        buf = np.concatenate([self.tokens[a:b] for a, b in batches[self.rank]]).astype(np.int64)
        t = torch.from_numpy(buf)[None]
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class ValStream:
    """Validation micro-batches: the contiguous token stream of the val shards (no alignment, nothing skipped),
    `tokens` per rank and micro-step, rank r taking the r-th consecutive chunk. Documents inside a chunk are
    separated by the attention's document mask (a BOS opens a document), as in the record's validation."""

    def __init__(self, files, rank: int = 0, world_size: int = 1):
        if not files:
            raise ValueError("no shards given")
        self.files = [str(f) for f in files]
        self.rank, self.world_size = rank, world_size
        self.file_index, self.tokens, self.pos = 0, read_shard(self.files[0]), 0

    def next_batch(self, tokens: int):
        step = tokens * self.world_size
        if self.pos + step + 1 >= len(self.tokens):
            self.file_index += 1
            if self.file_index == len(self.files):
                raise StopIteration(f"validation data exhausted after {len(self.files)} shard(s)")
            self.tokens, self.pos = read_shard(self.files[self.file_index]), 0
        start = self.pos + self.rank * tokens
        buf = torch.from_numpy(self.tokens[start:start + tokens + 1].astype(np.int64))[None]
        self.pos += step
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


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
    """Per-row document index (0, 1, ...) of each token: each BOS opens a document."""
    return (inputs == BOS_ID).cumsum(dim=1, dtype=torch.int32)


def sliding_window_block_mask(docs: torch.Tensor, window: torch.Tensor, paired: bool) -> BlockMask:
    """BlockMask for causal attention within a document over the last `window` positions (key position
    q - window .. q, as FlashAttention's window_size=(window, 0)).

    paired=True is the mask of paired-head attention: the sequence is 2T long, position p holds token p // 2
    (the two heads of a pair side by side), causality and the window count positions of that sequence (so the
    window covers window / 2 tokens, and the second head of a token sees the first, not the reverse).
    Blocks are classified from the first/last position and document of each 128-position block: skipped
    (nothing allowed), full (everything allowed, no mask_mod call) or partial (mask_mod decides per element).
    The window is a tensor so that changing it does not recompile the model.
    """
    B, T = docs.shape
    L = 2 * T if paired else T
    assert L % BLOCK == 0, f"sequence length {L} must be a multiple of {BLOCK}"
    pos = torch.arange(L, device=docs.device)
    tok = pos // 2 if paired else pos
    first, last = pos[::BLOCK], pos[BLOCK - 1::BLOCK]  # (nb,)
    doc_first = docs[:, tok[::BLOCK]]  # (B, nb); documents never decrease along a row
    doc_last = docs[:, tok[BLOCK - 1::BLOCK]]
    q_first, q_last = first[:, None], last[:, None]  # query blocks along dim 0
    k_first, k_last = first[None, :], last[None, :]  # key blocks along dim 1
    any_causal = k_first <= q_last
    any_window = (q_first - k_last) <= window
    all_causal = k_last <= q_first
    all_window = (q_last - k_first) <= window
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
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= window) & (docs[b, qt] == docs[b, kt])

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

    Positions are those of the packed row (attention is relative, so a document's offset in the row does not
    matter). In paired-head layers head h of token t sits at position 2t + h % 2 (the record's layout).
    apply_yarn() rescales the frequencies when the long window grows (YaRN, applied to every layer): dimensions
    that complete many turns within the old window keep their frequency, slow ones are interpolated by old/new,
    and the attention temperature rises by 0.2*ln(new/old)+1.
    """

    def __init__(self, head_dim: int, max_len: int):
        super().__init__()
        self.max_len = 2 * max_len  # paired layers use positions up to 2T
        quarter = head_dim // 4
        freq = (1 / 1024) ** torch.linspace(0, 1, quarter, dtype=torch.float32)
        self.register_buffer("base_freq", torch.cat([freq, freq.new_zeros(quarter)]), persistent=False)
        self.register_buffer("freq", self.base_freq.clone(), persistent=False)
        self.register_buffer("mscale", torch.ones((), dtype=torch.float32), persistent=False)
        self.register_buffer("cos", torch.empty(self.max_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(self.max_len, head_dim // 2), persistent=False)
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
        self.mscale.mul_(0.2 * math.log(s) + 1)
        self._refresh()

    def forward(self, x: torch.Tensor, paired: bool = False) -> torch.Tensor:  # x: (B, T, H, D)
        T, H = x.size(1), x.size(2)
        if paired:
            parity = torch.arange(H, device=x.device) % 2
            cos = self.cos[:2 * T].view(T, 2, -1)[:, parity][None].to(x.dtype)  # (1, T, H, D/2)
            sin = self.sin[:2 * T].view(T, 2, -1)[:, parity][None].to(x.dtype)
        else:
            cos = self.cos[None, :T, None, :].to(x.dtype)
            sin = self.sin[None, :T, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def gate(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sigmoid of a linear map of the first few dims of x (w: (outputs, dims)): (..., outputs)."""
    return torch.sigmoid(F.linear(x[..., :w.size(-1)], w.to(x.dtype)))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, long_window: bool, paired: bool):
        super().__init__()
        self.cfg, self.long_window, self.paired = cfg, long_window, paired
        dim, hd = cfg.model_dim, cfg.num_heads * cfg.head_dim
        bound = math.sqrt(3) * dim ** -0.5  # uniform with std dim^-0.5
        self.qkv_w = nn.Parameter(torch.empty(3 * hd, dim, dtype=torch.bfloat16).uniform_(-bound, bound))
        self.qkv_w.muon_parts = 3  # Muon orthogonalizes q, k and v separately
        self.o_w = nn.Parameter(torch.zeros(dim, hd, dtype=torch.bfloat16))

    def forward(self, x, ve, ve_gate_w, attn_gate_w, sa_lambdas, mask: BlockMask, rotary: Rotary):
        """x: the normed block input. Gates read its first dims: the value-embedding gate 2*sigmoid per head
        (1 at init), the output gate sigmoid per head (1/2 at init)."""
        B, T, _ = x.shape
        H, D = self.cfg.num_heads, self.cfg.head_dim
        q, k, v = F.linear(x, sa_lambdas[0].to(x.dtype) * self.qkv_w).view(B, T, 3, H, D).unbind(dim=2)
        q, k = norm(q), norm(k)
        q, k = rotary(q, self.paired), rotary(k, self.paired)
        if self.long_window:
            # Partial key offset: the stationary dims of each key carry the previous token's key, so a query can
            # match "the token after X" in one layer (induction).
            q4, h2 = D // 4, D // 2
            k = torch.cat([k[:, :, :, :q4],
                           torch.cat([k[:, :1, :, q4:h2], k[:, :-1, :, q4:h2]], dim=1),
                           k[:, :, :, h2:h2 + q4],
                           torch.cat([k[:, :1, :, h2 + q4:], k[:, :-1, :, h2 + q4:]], dim=1)], dim=-1)
        if ve is not None:
            v = v + 2 * gate(x, ve_gate_w)[..., None] * ve.view(B, T, H, D)
        q = q * (self.cfg.attn_scale * rotary.mscale).to(q.dtype)
        if self.paired:
            # (B, T, H, D) -> (B, 2T, H/2, D): heads h and h + H/2 of a token become neighbouring positions, so
            # each query attends over both heads' keys and values.
            q, k, v = (t.reshape(B, 2 * T, H // 2, D) for t in (q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if q.is_cuda:
            y = flex_attention(q, k, v, block_mask=mask, scale=1.0)
        else:  # CPU smoke runs and tests: FlexAttention has no CPU backward, so use the same mask densely
            y = dense_attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, H, D) * gate(x, attn_gate_w)[..., None]
        return F.linear(y.reshape(B, T, H * D), sa_lambdas[1].to(x.dtype) * self.o_w)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, hidden = cfg.model_dim, cfg.mlp_ratio * cfg.model_dim
        bound = math.sqrt(3) * 0.5 * dim ** -0.5
        self.fc_w = nn.Parameter(torch.empty(hidden, dim, dtype=torch.bfloat16).uniform_(-bound, bound))
        self.proj_w = nn.Parameter(torch.zeros(dim, hidden, dtype=torch.bfloat16))
        self.proj_w.muon_lr_mul = 2.0  # the output projection learns at twice the rate of fc (the record's)

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.fc_w)).square(), self.proj_w)


# Fixed FP8 scales of the head (the record's): |x| <= 100 (rms-normed activations), |w| <= 1.6, and the
# gradient of the summed loss (times the gradient scale) <= 0.75. Values beyond are clamped to the format's max.
FP8_X_SCALE = 100 / 448
FP8_W_SCALE = 1.6 / 448
FP8_GRAD_SCALE = 0.75 / 448
E4M3_MAX, E5M2_MAX = 448.0, 57344.0


def fp8_head_forward(x: torch.Tensor, w: torch.Tensor):
    """logits = x @ w^T from x and w cast to e4m3 at the fixed scales (bf16 out), and the two casts."""
    x8 = (x / FP8_X_SCALE).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    w8 = (w / FP8_W_SCALE).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    one = torch.ones((), device=x.device, dtype=torch.float32)
    out = torch._scaled_mm(x8, w8.t(), scale_a=one * FP8_X_SCALE, scale_b=one * FP8_W_SCALE,
                           out_dtype=torch.bfloat16, use_fast_accum=True)
    return out, x8, w8


def fp8_head_backward(g8: torch.Tensor, g8_t: torch.Tensor, x8, w8, g_scale: float, w_dtype):
    """grad_x (bf16) and grad_w (float32 accumulation, w's dtype) from the logits' gradient in e5m2 at scale g_scale,
    given in both layouts (g8 (N, V) and g8_t = g8^T contiguous: each FP8 matmul reads its operands contiguous
    along the reduced dimension)."""
    one = torch.ones((), device=g8.device, dtype=torch.float32)
    grad_x = torch._scaled_mm(g8, w8.t().contiguous().t(), scale_a=one * g_scale, scale_b=one * FP8_W_SCALE,
                              out_dtype=torch.bfloat16)
    grad_w = torch._scaled_mm(g8_t, x8.t().contiguous().t(), scale_a=one * g_scale, scale_b=one * FP8_X_SCALE,
                              out_dtype=torch.float32)
    return grad_x, grad_w.to(w_dtype)


class FP8Head(torch.autograd.Function):
    """logits = x @ w^T with x and w in float8 e4m3 at fixed scales, bf16 output. Backward: grad_x and grad_w
    from the gradient in e5m2 (fixed scale grad_scale * 0.75/448); grad_w accumulates in float32."""

    @staticmethod
    def forward(ctx, x, w, grad_scale: float = 1.0):
        out, x8, w8 = fp8_head_forward(x, w)
        ctx.save_for_backward(x8, w8)
        ctx.g_scale = FP8_GRAD_SCALE * grad_scale
        ctx.w_dtype = w.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x8, w8 = ctx.saved_tensors
        g8 = (grad / ctx.g_scale).clamp(-E5M2_MAX, E5M2_MAX).to(torch.float8_e5m2)
        return *fp8_head_backward(g8, g8.t().contiguous(), x8, w8, ctx.g_scale, ctx.w_dtype), None


class FP8HeadMTPLoss(torch.autograd.Function):
    """FP8Head followed by fused_ce's one-pass loss, as one Function (the default; SPEEDRUN_FUSED_HEAD=0 turns it off): (x, w, targets (N, K),
    weights (K,), softcap, grad_scale) -> the one-pass loss's two outputs. Its backward makes the e5m2 gradient in
    both layouts in one Triton pass over the loss's unnormalized gradient (fused_ce.scaled_cast_both_layouts), in
    place of Inductor's fused multiply, cast and transposed copy (24.1 ms of step 46's 452.9, three times its
    bandwidth time; NOTES.md). The same math as the two Functions in a row, without the bf16 rounding of the
    gradient between them."""

    @staticmethod
    def forward(ctx, x, w, targets, weights, softcap: tuple, grad_scale: float = 1.0):
        logits, x8, w8 = fp8_head_forward(x, w)
        u, row_loss, next_loss, row_scale = fused_ce.one_pass_forward(logits, targets, weights, softcap)
        ctx.save_for_backward(x8, w8, u, row_scale)
        ctx.g_scale = FP8_GRAD_SCALE * grad_scale
        ctx.w_dtype = w.dtype
        return fused_ce.outputs(ctx, row_loss, next_loss)

    @staticmethod
    def backward(ctx, grad_total, _grad_next):
        x8, w8, u, row_scale = ctx.saved_tensors
        # grad_total stays on the device (a 0-d tensor): reading it on the host would synchronize every micro-step
        g8, g8_t = fused_ce.scaled_cast_both_layouts(u, row_scale, grad_total.float() / ctx.g_scale)
        return *fp8_head_backward(g8, g8_t, x8, w8, ctx.g_scale, ctx.w_dtype), None, None, None, None


def softcap(logits: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    a, b, c = cfg.softcap
    return a * torch.sigmoid((logits.float() + b) / c)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096):
        super().__init__()
        self.cfg = cfg
        V, dim, L, H = cfg.vocab_size, cfg.model_dim, cfg.num_layers, cfg.num_heads
        # lm_head and embedding: two tensors, the optimizer keeps them equal (one joint Adam update) until the
        # split step, then they train apart (Adam.tied).
        self.lm_head_w = nn.Parameter(torch.randn(V, dim) * 0.005)
        self.embed_w = nn.Parameter(self.lm_head_w.detach().clone())
        self.fp8_grad_scale = 1.0  # the loss's gradient scale (main sets 2 / grad_accum)
        n_ve = len(cfg.value_embed_layers)
        self.value_embeds = nn.Parameter(torch.zeros(n_ve * V, dim))  # 5 tables fused, zero init
        self.bigram_embed = nn.Parameter(torch.zeros(cfg.bigram_buckets, dim))
        self.attn = nn.ModuleList([
            None if i in cfg.no_attention_layers else Attention(
                cfg, i in cfg.long_window_layers, i in cfg.paired_head_layers)
            for i in range(L)])
        self.mlp = nn.ModuleList([MLP(cfg) for _ in range(L)])
        self.rotary = Rotary(cfg.head_dim, max_seq_len)
        n_attn = sum(a is not None for a in self.attn)
        self.attn_gates = nn.Parameter(torch.zeros(n_attn, H, cfg.gate_dims))  # zero: sigmoid 1/2
        self.ve_gates = nn.Parameter(torch.zeros(n_ve, H, cfg.gate_dims))  # zero: 2*sigmoid = 1
        self.smear_gate = nn.Parameter(torch.zeros(1, cfg.gate_dims))
        self.skip_gate = nn.Parameter(torch.zeros(1, cfg.gate_dims))
        # Scalars (Adam). Per layer: x <- resid*x + x0_lambda*x0 + bigram_lambda*bigram; sa: q/k/v and o gains
        self.resid_lambdas = nn.Parameter(torch.full((L,), 1.1))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.sa_lambdas = nn.Parameter(torch.tensor([[0.5, 1.0]] * L))
        self.bigram_lambdas = nn.Parameter(torch.full((L,), 0.1))
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(torch.full((1,), 0.5))
        self.skip_lambda = nn.Parameter(torch.full((1,), -1.5))  # sigmoid(-1.5) ~ 0.18

    @torch.no_grad()
    def set_windows(self, old: tuple, new: tuple):
        self.rotary.apply_yarn(old[1], new[1])  # the long window's change rescales every layer's rotary

    @torch.no_grad()
    def reset_windows(self):
        self.rotary.reset()

    def bigram_ids(self, inputs: torch.Tensor) -> torch.Tensor:
        """Hash of (previous, current) token per position into buckets - 1 rows; position 0 of a row has no
        previous token and gets the last bucket."""
        mod = self.cfg.bigram_buckets - 1
        cur, prev = inputs[:, 1:].long(), inputs[:, :-1].long()
        rest = torch.bitwise_xor(36313 * cur, 27191 * prev) % mod
        return torch.cat([torch.full_like(inputs[:, :1], mod), rest], dim=1)

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

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, masks: tuple, mtp_weights: torch.Tensor):
        """Training: (sum over tokens of the weighted next-k-token losses, mean next-token loss); mtp_weights is
        a float tensor, one weight per predicted token. Evaluation: (mean next-token loss, the same)."""
        cfg = self.cfg
        B, T = inputs.shape
        x = F.embedding(inputs, self.embed_w).bfloat16()
        # smear: each token's embedding takes a gated share of the previous one's
        smear = self.smear_lambda.bfloat16() * gate(x[:, 1:], self.smear_gate)
        x = torch.cat([x[:, :1], x[:, 1:] + smear * x[:, :-1]], dim=1)
        x = x0 = norm(x)
        bigram = F.embedding(self.bigram_ids(inputs), self.bigram_embed).bfloat16()
        V = cfg.vocab_size
        ve_all = self.value_embeds.view(len(cfg.value_embed_layers), V, -1)[:, inputs].bfloat16()
        resid, x0_l = self.resid_lambdas.bfloat16(), self.x0_lambdas.bfloat16()
        big_l = self.bigram_lambdas.bfloat16()
        skip = backout = None
        attn_index = 0
        for i in range(cfg.num_layers):
            if i == cfg.skip_to:
                weight = torch.sigmoid(self.skip_lambda).bfloat16() * 2 * gate(x0, self.skip_gate)
                x = x + weight * skip
            if i == 0:
                x = (resid[0] + x0_l[0]) * x + big_l[0] * bigram
            else:
                x = resid[i] * x + x0_l[i] * x0 + big_l[i] * bigram
            attn = self.attn[i]
            if attn is not None:
                ve, ve_gate_w = None, None
                if i in cfg.value_embed_layers:
                    j = cfg.value_embed_layers.index(i)
                    ve, ve_gate_w = ve_all[j], self.ve_gates[j]
                mask = masks[2] if attn.long_window else masks[1] if attn.paired else masks[0]
                x = x + attn(norm(x), ve, ve_gate_w, self.attn_gates[attn_index], self.sa_lambdas[i], mask,
                             self.rotary)
                attn_index += 1
            x = x + self.mlp[i](norm(x))
            if i == cfg.skip_from:
                skip = x
            if i == cfg.backout_layer:
                backout = x
        # back out part of an early layer's output: it served the later layers' context, not the prediction
        x = norm(x - self.backout_lambda.bfloat16() * backout).view(B * T, -1)
        if self.training:
            return self._training_loss(x, targets, mtp_weights)
        loss = self._eval_loss(x, targets.reshape(-1))
        return loss, loss

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.training and self.cfg.use_fp8_head:
            return FP8Head.apply(x, self.lm_head_w, self.fp8_grad_scale)
        if x.is_cuda:
            return F.linear(x, self.lm_head_w.bfloat16())
        return F.linear(x.float(), self.lm_head_w)  # CPU smoke: float32 is much faster than bf16 there

    def _training_loss(self, x, targets, mtp_weights):
        B, T = targets.shape
        if self.cfg.use_fused_ce:
            return self._fused_training_loss(x, targets, mtp_weights)
        z = softcap(self._logits(x), self.cfg).view(B, T, -1)
        lse = torch.logsumexp(z, dim=-1)  # one normalizer for every predicted token
        total = z.new_zeros(())
        next_token = None
        position = torch.arange(T, device=targets.device)
        for k in range(mtp_weights.size(0)):
            # Position t predicts targets[t + k]; the row's last k positions have no target for k. Every term
            # keeps the row's full length (targets rolled by k, the wrapped positions masked to 0): with
            # slices of T - k positions, Inductor's mix-order reduction fusion (torch 2.11) asserted
            # "16384 v.s. 16383" while compiling the s0 graph on the H200.
            shifted = targets if k == 0 else torch.roll(targets, -k, dims=1)
            losses = lse - z.gather(-1, shifted[..., None]).squeeze(-1)
            if k == 0:
                next_token = losses.mean()
            else:
                losses = torch.where(position < T - k, losses, 0.0)
            total = total + mtp_weights[k] * losses.sum()
        return total, next_token

    def _fused_training_loss(self, x, targets, mtp_weights):
        """The same two outputs through one Triton kernel over the logits (fused_ce.py, cfg.fused_ce_kernel): the
        normalizer, the K target terms and the logits' gradient in one program per token row, instead of the float32
        softcap, logsumexp and gathers above (their backward rereads and rewrites the logits block several times)."""
        per_token_targets = fused_ce.mtp_targets(targets, mtp_weights.size(0))  # -1 where no term
        if self.cfg.use_fused_head and x.is_cuda and self.cfg.use_fp8_head:
            return FP8HeadMTPLoss.apply(x, self.lm_head_w, per_token_targets, mtp_weights, self.cfg.softcap,
                                        self.fp8_grad_scale)
        kernel = fused_ce.KERNELS[self.cfg.fused_ce_kernel]
        return kernel.apply(self._logits(x), per_token_targets, mtp_weights, self.cfg.softcap)

    def _eval_loss(self, x, targets, chunk: int = 32768):
        """Mean next-token loss, the head in chunks of rows (a 262144-token row's float logits would be 52 GB)."""
        total = x.new_zeros((), dtype=torch.float32)
        for a in range(0, x.size(0), chunk):
            z = softcap(self._logits(x[a:a + chunk]), self.cfg)
            t = targets[a:a + chunk]
            total = total + (torch.logsumexp(z, dim=-1) - z.gather(-1, t[:, None]).squeeze(-1)).sum()
        return total / x.size(0)


# ----------------------------------------------------------------------------------------------------------------
# Optimizers

# Polar Express (Amsel, Persson, Musco, Gower 2025): degree-5 polynomial iterations for five steps, the
# coefficients the record uses (computed with a 2e-2 safety factor and a cushion of 2), after a Frobenius
# normalisation by 1 + 2e-2.
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
POLAR_EXPRESS_SAFETY = 1 + 2e-2


def polar_express(G: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T for a batch of wide matrices (..., m, n), m <= n, in bf16."""
    assert G.size(-2) <= G.size(-1)
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * POLAR_EXPRESS_SAFETY + 1e-6)
    sym = kernels.sym_mm if use_triton else kernels.reference
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = sym(X, None, 1.0, 0.0)  # X X^T
        Bm = sym(A, A, c, b)  # c A A^T + b A   (A is symmetric)
        X = torch.baddbmm(X, Bm, X, beta=a, alpha=1.0) if X.dim() == 3 else a * X + Bm @ X
    return X


def normuon_scale(v: torch.Tensor, second_moment: torch.Tensor, beta2: float, dim: int) -> torch.Tensor:
    """NorMuon's variance reduction of orthogonalized updates v (batch, m, n): each row (dim=-1) or column
    (dim=-2) is divided by the root of an EMA of its mean square (second_moment, updated in place), then the
    matrix is rescaled to its Frobenius norm before the division."""
    v = v.float()
    mean_sq = v.square().mean(dim=dim, keepdim=True)
    n = v.size(dim)
    norm_before = (mean_sq.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    second_moment.lerp_(mean_sq, 1 - beta2)
    inv_rms = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = (mean_sq * n * inv_rms.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return v * (inv_rms * norm_before / norm_after.clamp_min(1e-10))


def cautious_step(master: torch.Tensor, update: torch.Tensor, lr: float, decay: float, strict: bool) -> None:
    """master -= lr * (update + decay * master where update and master have the same sign), in place.
    Cautious weight decay: a weight decays only where the update already moves it towards zero.
    strict: same sign means product > 0 (Adam); else >= 0 (NorMuon)."""
    same = (update * master > 0) if strict else (update * master >= 0)
    master.sub_(lr * (update + decay * master * same))


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
    """NorMuon: momentum, Polar Express orthogonalization, per-row/column variance reduction and cautious weight
    decay for the bf16 weight matrices of the blocks.

    Matrices are cut into 768-row blocks oriented wide (q, k, v and o: 768x768; fc^T and proj: 768x3072), stacked
    by shape, and each GPU orthogonalizes its slice of the stack (reduce-scatter of the gradients, all-gather of
    the updates). Every GPU then applies all updates in float32 through the mantissa buffers. A matrix's lr is
    lr * sqrt(long side / short side) (2 for the MLP's 3072x768) times its muon_lr_mul (2 for proj). The
    variance statistics are per output row for the square matrices and per hidden unit (the 3072 side) for the
    MLP's. Weight decay: weight_decay * lr (scheduled) * the matrix's lr, where the update agrees in sign.
    """

    def __init__(self, params, lr: float, rank: int = 0, world_size: int = 1, use_triton: bool = True,
                 weight_decay: float = 0.0, beta2: float = 0.95):
        self.params = list(params)
        self.lr, self.momentum = lr, 0.95
        self.weight_decay, self.beta2 = weight_decay, beta2
        self.rank, self.world_size, self.use_triton = rank, world_size, use_triton
        self.mantissa = {p: torch.zeros_like(p, dtype=torch.int16) for p in self.params}
        self.lr_scale = {}
        for p in self.params:
            rows, cols = p.shape[0] // getattr(p, "muon_parts", 1), p.shape[1]
            self.lr_scale[p] = (max(rows, cols) / min(rows, cols)) ** 0.5 * getattr(p, "muon_lr_mul", 1.0)
        # groups: shape -> list of (param, slice index or None, transposed)
        self.groups: dict[tuple, list] = {}
        for p in self.params:
            rows, cols = p.shape
            parts = getattr(p, "muon_parts", 1)  # the fused q, k, v weight is three matrices
            if parts > 1:
                for j in range(parts):
                    self.groups.setdefault((rows // parts, cols), []).append((p, j, False))
            elif rows > cols:  # tall (fc): orthogonalize the transpose
                self.groups.setdefault((cols, rows), []).append((p, None, True))
            else:
                self.groups.setdefault((rows, cols), []).append((p, None, False))
        self.buffers, self.second_moments = {}, {}
        device = self.params[0].device
        for shape, members in self.groups.items():
            per_rank = -(-len(members) // world_size)
            self.buffers[shape] = torch.zeros(per_rank, *shape, dtype=torch.float32, device=device)
            m, n = shape  # square: a statistic per row; wide (m < n): per column, the hidden unit
            self.second_moments[shape] = torch.zeros(per_rank, *((m, 1) if m == n else (1, n)), device=device)

    @staticmethod
    def _view(t, index, transposed, rows_per_slice):
        if index is not None:
            t = t[index * rows_per_slice:(index + 1) * rows_per_slice]
        return t.t() if transposed else t

    @torch.no_grad()
    def step(self, grads: dict, lr_mult: float = 1.0):
        """grads: param -> float32 gradient (any positive scale: the update does not depend on it)."""
        updates = {p: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params}
        for shape, members in self.groups.items():
            per_rank = self.buffers[shape].size(0)
            stack = torch.zeros(per_rank * self.world_size, *shape, dtype=torch.float32, device=self.params[0].device)
            for i, (p, index, transposed) in enumerate(members):
                stack[i] = self._view(grads[p], index, transposed, shape[0] if index is not None else 0)
            local = reduce_scatter_mean(stack, self.rank, self.world_size) if self.world_size > 1 else stack
            buf = self.buffers[shape]
            buf.lerp_(local, 1 - self.momentum)
            nesterov = local.lerp(buf, self.momentum)
            ortho = polar_express(nesterov, self.use_triton)
            ortho = normuon_scale(ortho, self.second_moments[shape], self.beta2, -1 if shape[0] == shape[1] else -2)
            gathered = all_gather_cat(ortho, self.world_size) if self.world_size > 1 else ortho
            for i, (p, index, transposed) in enumerate(members):
                target = self._view(updates[p], index, transposed, shape[0] if index is not None else 0)
                target.copy_(gathered[i])
        lr = self.lr * lr_mult
        for p in self.params:
            master = join_float32(p.data, self.mantissa[p])
            cautious_step(master, updates[p], lr * self.lr_scale[p], self.weight_decay * lr, strict=False)
            w, m = split_float32(master)
            p.data.copy_(w)
            self.mantissa[p].copy_(m)


class Adam:
    """Adam with cautious weight decay for the float32 parameters (embeddings, head, gates, scalars), in
    parameter groups (lr, betas, wd). The step is lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); the
    decay is lr^2 * wd * weight where the step agrees in sign.

    Tied head: while `tied`, the embedding's gradient is added into the head's (fold_tied), only the head is
    updated and the embedding is set to it; untie() gives the embedding a copy of the head's state."""

    def __init__(self, groups: list[dict], eps: float = 1e-10, head=None, embed=None):
        self.groups = groups
        self.eps = eps
        self.state = {}
        self.head, self.embed = head, embed
        self.tied = head is not None and embed is not None

    def fold_tied(self, grads: dict) -> dict:
        if self.tied and self.embed in grads:
            grads = dict(grads)
            grads[self.head] = grads[self.head] + grads.pop(self.embed)
        return grads

    @torch.no_grad()
    def untie(self):
        st = self.state.get(self.head)
        if st is not None:
            self.state[self.embed] = {"step": st["step"], "m": st["m"].clone(), "v": st["v"].clone()}
        self.tied = False

    @torch.no_grad()
    def step(self, grads: dict, lr_mult: float = 1.0):
        grads = self.fold_tied(grads)
        for g in self.groups:
            b1, b2 = g["betas"]
            lr = g["lr"] * lr_mult
            for p in g["params"]:
                grad = grads.get(p)
                if grad is None or (self.tied and p is self.embed):
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)}
                st["step"] += 1
                st["m"].lerp_(grad, 1 - b1)
                st["v"].lerp_(grad.square(), 1 - b2)
                size = math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                update = st["m"] / (st["v"].sqrt() + self.eps) * size
                cautious_step(p.data, update, lr, lr * g["wd"], strict=True)
        if self.tied:
            self.embed.data.copy_(self.head.data)


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int):
    muon_params = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith(("attn.", "mlp."))]
    lr, wd = hp.adam_lr, hp.adam_weight_decay
    m = model
    adam = Adam([  # lr and wd as multiples of the base values (the record's table)
        {"params": [m.lm_head_w], "lr": lr, "betas": (0.5, 0.95), "wd": 150 * wd},
        {"params": [m.embed_w], "lr": lr, "betas": (0.5, 0.95), "wd": 150 * wd},
        {"params": [m.value_embeds, m.bigram_embed], "lr": 75 * lr, "betas": (0.75, 0.95), "wd": 5 * wd},
        {"params": [m.resid_lambdas, m.sa_lambdas, m.bigram_lambdas, m.smear_lambda, m.backout_lambda,
                    m.skip_lambda], "lr": 5 * lr, "betas": (0.9, 0.99), "wd": 0.0},
        {"params": [m.x0_lambdas], "lr": 5 * lr, "betas": (0.65, 0.95), "wd": 0.0},
        {"params": [m.attn_gates, m.ve_gates], "lr": lr, "betas": (0.9, 0.99), "wd": wd},
        {"params": [m.smear_gate], "lr": 0.01 * lr, "betas": (0.9, 0.99), "wd": 0.0},
        {"params": [m.skip_gate], "lr": 0.05 * lr, "betas": (0.9, 0.99), "wd": 0.0},
    ], head=m.lm_head_w, embed=m.embed_w)
    muon = Muon(muon_params, hp.muon_lr, rank, world_size, use_triton=model.cfg.use_triton,
                weight_decay=hp.muon_weight_decay, beta2=hp.muon_beta2)
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

    val_row = hp.val_rows * hp.val_seq_len  # stream tokens per GPU and validation micro-step
    if hp.val_tokens % (world_size * val_row):
        raise SystemExit(f"SPEEDRUN_VAL_TOKENS={hp.val_tokens} must be a multiple of {world_size * val_row}")
    train_files = find_shards(shard_folder(hp.data_path), "train")
    val_files = find_shards(shard_folder(hp.data_path), "val")
    log(f"data: {len(train_files)} train shard(s), {len(val_files)} val shard(s) in {shard_folder(hp.data_path)}; "
        f"world_size={world_size} grad_accum={grad_accum} seed={hp.seed}")

    torch.manual_seed(hp.seed)
    cfg = tiny_model_config() if hp.tiny else ModelConfig()
    cfg.use_fp8_head = on_gpu and hp.fp8_head
    cfg.use_triton = on_gpu and hp.triton
    cfg.use_fused_ce = on_gpu and hp.fused_ce and fused_ce is not None
    cfg.fused_ce_kernel = hp.fused_ce_kernel
    cfg.use_fused_head = cfg.use_fused_ce and cfg.use_fp8_head and hp.fused_head
    changed = [f"{name}={int(getattr(hp, name))}" for name in DIAGNOSTIC_SWITCHES
               if getattr(hp, name) != getattr(Hyperparameters, name)]
    if hp.fused_ce_kernel != Hyperparameters.fused_ce_kernel:
        changed.append(f"fused_ce_kernel={hp.fused_ce_kernel}")
    if changed:
        log(f"diagnostic: {' '.join(changed)} (not the recipe of the track)")

    def micro_tokens(stage: Stage) -> int:
        return stage.batch_tokens // hp.batch_divisor // hp.total_accumulation

    longest_row = max([val_row] + [micro_tokens(st) for st in (*STAGES, EXTENSION)])
    model = GPT(cfg, max_seq_len=longest_row).to(device)
    # The loss is summed over tokens and scaled by 2 / grad_accum: the same gradient for any GPU count, and the
    # size the head's fixed FP8 gradient scale is made for.
    grad_scale = 2 / grad_accum
    model.fp8_grad_scale = grad_scale
    for p in model.parameters():  # identical initial weights on every GPU
        if world_size > 1:
            dist.broadcast(p.data, 0)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    compiled = torch.compile(model, dynamic=False) if on_gpu and hp.compile else model
    # the stages' windows and every step's MTP weights on the device once: building them in a step would copy
    # host->device with a synchronize, so the host could not queue the next step while the GPU still runs the
    # last one. A stage's graph reads its weights from one buffer (a new tensor per step could recompile).
    window_tensors = {st: torch.tensor(st.windows, dtype=torch.int32, device=device) for st in (*STAGES, EXTENSION)}
    final_windows = torch.tensor(FINAL_VALIDATION_WINDOWS, dtype=torch.int32, device=device)
    total_steps = hp.num_iterations + hp.extension_iterations
    mtp_table = {st: torch.tensor([mtp_weights(s, hp) for s in range(total_steps) if stage_at(s, hp) is st]
                                  or [st.mtp_start], dtype=torch.float32, device=device) for st in (*STAGES, EXTENSION)}
    mtp_buffers = {st: torch.tensor(st.mtp_start, dtype=torch.float32, device=device) for st in (*STAGES, EXTENSION)}
    one_weight = torch.ones(1, device=device)
    bounds = {st: first for st, first, _ in stage_bounds(hp)}
    adam_grads: dict = {}  # Adam's gradients, summed over the two steps of each Adam step

    def train_step(stage: Stage, step: int, loader: DocPackLoader, muon: Muon, adam: Adam, lr_mult: float,
                   momentum: float):
        windows = window_tensors[stage]
        weights = mtp_buffers[stage]
        row = min(max(step - bounds[stage], 0), mtp_table[stage].size(0) - 1)
        weights.copy_(mtp_table[stage][row], non_blocking=True)
        grads = {}
        loss_sum = torch.zeros((), device=device)  # weighted MTP loss, to catch any non-finite value
        next_sum = torch.zeros((), device=device)  # next-token loss, comparable to val_loss
        for _ in range(grad_accum):
            inputs, targets = loader.next_batch(micro_tokens(stage))
            if on_gpu:
                inputs = inputs.pin_memory().to(device, non_blocking=True)
                targets = targets.pin_memory().to(device, non_blocking=True)
            loss, next_loss = compiled(inputs, targets, model.block_masks(inputs, windows), weights)
            (loss * grad_scale).backward()
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
        for g in adam.groups:
            for p in g["params"]:
                if p in grads:
                    if p in adam_grads:
                        adam_grads[p].add_(grads[p])
                    else:
                        adam_grads[p] = grads[p]
        if is_adam_step(step):
            folded = adam.fold_tied(adam_grads)
            if world_size > 1:
                for p in folded.values():
                    all_reduce_mean(p)
            adam.step(folded, lr_mult)
            adam_grads.clear()
        muon.momentum = momentum
        muon.step(grads, lr_mult)
        if adam.tied and step == split_step(hp):
            adam.untie()  # the embedding trains apart from the head from the next step on
        # the next-token loss, or NaN when any part of the loss was non-finite
        return torch.where(torch.isfinite(loss_sum), next_sum, torch.nan) / grad_accum

    def enter_stage(old: Stage | None, new: Stage):
        if old is not None and old.windows != new.windows:
            model.set_windows(old.windows, new.windows)

    @torch.no_grad()
    def validate(windows: torch.Tensor, batches: int | None = None) -> float:
        model.eval()
        loader = ValStream(val_files, rank, world_size)
        total = torch.zeros((), device=device)
        n = batches or hp.val_tokens // (world_size * val_row)
        for _ in range(n):
            inputs, targets = loader.next_batch(val_row)
            inputs, targets = inputs.to(device), targets.to(device)
            _, loss = compiled(inputs, targets, model.block_masks(inputs, windows), one_weight)
            total += loss
        total /= n
        if world_size > 1:
            all_reduce_mean(total)
        model.train()
        return total.item()

    @torch.no_grad()
    def forward_probe(windows: torch.Tensor) -> str:
        """After a non-finite training loss with finite weights: one validation batch through the compiled model
        (its validation graph is already compiled), the eager model, and the eager model with a bf16 head instead
        of FP8. A finite eager loss beside a non-finite compiled one points at the compiled graph; a finite bf16
        head loss beside a non-finite FP8 one at the FP8 head."""
        loader = ValStream(val_files, rank, world_size)
        inputs, targets = (t.to(device) for t in loader.next_batch(val_row))
        fp8 = cfg.use_fp8_head
        results = []
        model.eval()
        for name, forward, use_fp8 in (("compiled", compiled, fp8), ("eager", model, fp8),
                                       ("eager_bf16_head", model, False)):
            cfg.use_fp8_head = use_fp8
            try:
                masks = model.block_masks(inputs, windows)
                results.append(f"{name}:{forward(inputs, targets, masks, one_weight)[1].item():.4f}")
            except Exception as e:  # a diagnosis must not hide the report above (e.g. eager attention out of memory)
                results.append(f"{name}:failed({type(e).__name__})")
            finally:
                cfg.use_fp8_head = fp8
        model.train()
        return f"nonfinite: forward probe, one validation batch with the current weights: {' '.join(results)}"

    # -------- compile and warm-up: run every stage's graph once (an Adam step each) and the validation graph,
    # then restore the initial weights. Not part of train_time.
    sync()
    t_warm = time.perf_counter()
    warm_loader = DocPackLoader(train_files, hp.train_seq_len, rank, world_size, cycle=True)
    muon, adam = build_optimizers(model, hp, rank, world_size)
    previous = None
    for stage in (list(STAGES) + [EXTENSION]) if hp.warmup else []:
        enter_stage(previous, stage)
        t0 = time.perf_counter()
        warm_loss = train_step(stage, bounds[stage] | 1, warm_loader, muon, adam, lr_mult=0.0,
                               momentum=hp.muon_momentum_end)
        sync()
        log(f"warmup: stage {stage.name} compiled and ran one step in {1000 * (time.perf_counter() - t0):.0f}ms "
            f"(train loss {warm_loss.item():.4f})")
        if stage is STAGES[0]:  # one validation graph (the head is the same tensor layout tied or not)
            t0 = time.perf_counter()
            validate(window_tensors[stage], batches=1)
            sync()
            log(f"warmup: validation graph in {1000 * (time.perf_counter() - t0):.0f}ms")
        previous = stage
    model.load_state_dict(initial_state)
    model.reset_windows()
    adam_grads.clear()
    del warm_loader
    sync()
    log(f"compile_and_warmup_time:{1000 * (time.perf_counter() - t_warm):.0f}ms")
    for note in kernels.FALLBACKS:
        log(note)
    if on_gpu and not kernels.FALLBACKS:
        log(f"triton_configs: frozen configs for {torch.cuda.get_device_name()!r} from {kernels.CONFIG_PATH.name}")

    # -------- training
    muon, adam = build_optimizers(model, hp, rank, world_size)
    loader = DocPackLoader(train_files, hp.train_seq_len, rank, world_size, cycle=True)
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
            log(forward_probe(window_tensors[stage]))
        if world_size > 1:
            dist.destroy_process_group()
        sys.exit(1)

    sync()
    t0 = time.perf_counter()
    for step in range(total_steps + 1):
        last = step == total_steps
        new_stage = stage_at(step, hp)  # past the scheduled steps: the extension
        if new_stage is not stage:
            enter_stage(stage, new_stage)
            stage = new_stage
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
            # the windows of this step's stage; the final validation widens the long window (no YaRN)
            val_loss = validate(final_windows if last else window_tensors[stage])
            log(f"step:{step}/{total_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                f"step_avg:{training_time_ms / max(step, 1):.2f}ms")
            sync()
            t0 = time.perf_counter()
        if last:
            break
        if new_stage.name not in timings:
            timings[new_stage.name] = StageTiming(first_step=step)
        timing = timings[new_stage.name]
        step_loss = train_step(new_stage, step, loader, muon, adam, lr_multiplier(step, hp),
                               muon_momentum(step, hp))
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
