"""Medium track of the speedrun harness: GPT-2-medium-class model on FineWeb to val loss 2.92.

An independent implementation of the recipe of the medium-track record "bulk transfer of the short track"
(seed 000 in the design notes, 2025-12-31): 16 layers, width 1024, 8 heads of 128, vocab padded to 50304,
attention in every layer, 4700 scheduled steps + 40 extension steps on 4096-token rows, batch ramp
131072 -> 262144 -> 393216 -> 524288 tokens, sliding windows in 128-token blocks growing to 23 blocks (27 for the
final validation), YaRN on window changes while the long window is at most 13 blocks, partial key offset on the
long-window layers, 5 value-embedding tables used twice (layers 0-4 and 11-15) with per-head gates, attention
output gates, a second token embedding mixed into every layer, smear gate, gated U-net skips, backout of layer 11,
sigmoid logit cap, multi-token prediction early, embed/lm_head split at 2/12, bf16 lm_head (no FP8), NorMuon
(Polar Express, own Triton kernel for X X^T, low-rank variance normalization, cautious weight decay) for the
block matrices and gates, Adam with cautious weight decay on odd steps for embeddings, head and scalars.

Launch:  torchrun --standalone --nproc_per_node=1 train_gpt.py  (one GPU, 8 accumulation steps)
         torchrun --standalone --nproc_per_node=8 train_gpt.py  (the record setting)
Environment: DATA_PATH (the root folder holding data/fineweb10B/fineweb_{train,val}_*.bin; default "."),
SPEEDRUN_SEED, and for smoke runs SPEEDRUN_NUM_ITERATIONS, SPEEDRUN_EXTENSION_ITERATIONS, SPEEDRUN_VAL_TOKENS,
SPEEDRUN_VAL_EVERY; SPEEDRUN_TINY=1 is a small CPU/GPU smoke model (plumbing only). Diagnostic switches (not
the recipe; the log says when one is on): SPEEDRUN_WARMUP=0 (compile lazily inside training, so train_time
includes compile), SPEEDRUN_COMPILE=0 (eager model: unfused FlexAttention, slow), SPEEDRUN_TRITON=0 (PyTorch
Polar Express), SPEEDRUN_GRAD_STATS=1 (a `grad_stats:` line per step with the largest gradient of each
parameter; synchronizes every step).

The log follows the competition's protocol (source, versions, nvidia-smi, step lines, peak memory), written to
logs/<uuid>.txt and stdout. Lines that are not step lines (compile time, per-stage step time, `train_loss:` at
each validation, `error:`/`nonfinite:` before a run stops on a non-finite loss) are extra information that log
parsers skip. Nothing is downloaded at run time: FlexAttention is the attention backend. Importing this file
does no CUDA work (the CPU tests import it to check the data loader and schedules).
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
    spec = importlib.util.spec_from_file_location("medium_track_kernels", HERE / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernels = _load_kernels()

# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters

BOS_ID = 50256  # <|endoftext|>: every document starts with it
BLOCK = 128  # FlexAttention block size; windows are counted in these blocks
DATA_SUBDIR = os.path.join("data", "fineweb10B")  # the competition's layout under DATA_PATH


@dataclass
class Hyperparameters:
    data_path: str = "."
    seed: int = 0
    num_iterations: int = 4700  # scheduled steps; every schedule below is a fraction of these
    extension_iterations: int = 40  # extra steps at the final learning rate and windows
    val_tokens: int = 10_485_760
    val_every: int = 250
    train_seq_len: int = 4096  # one row of a training micro-batch; rows start at a document start
    val_seq_len: int = 4096  # the final long window (27 blocks = 3456 tokens) fits in a row
    val_rows: int = 8  # rows per validation micro-batch per GPU
    total_accumulation: int = 8  # world_size * grad_accum_steps
    batch_divisor: int = 1  # SPEEDRUN_TINY smoke mode divides every batch by 512
    tiny: bool = False
    # diagnostic switches (SPEEDRUN_WARMUP / SPEEDRUN_COMPILE / SPEEDRUN_TRITON = 0); record runs keep them on
    warmup: bool = True
    compile: bool = True
    triton: bool = True
    grad_stats: bool = False
    # NorMuon (block matrices and gates)
    muon_lr: float = 0.015
    muon_weight_decay: float = 1.2
    muon_beta2: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup_frac: float = 300 / 4700  # of the scheduled steps
    muon_momentum_cooldown_frac: float = 50 / 4700  # back to the start value over the last steps of the run
    # Adam (embeddings, head, gates of the residual stream) and Adam for the scalars
    adam_lr: float = 0.004
    adam_betas: tuple = (0.8, 0.95)
    adam_eps: float = 1e-8
    adam_weight_decay: float = 0.005
    scalar_lr: float = 0.008
    scalar_betas: tuple = (0.9, 0.99)
    # learning-rate schedule
    cooldown_frac: float = 0.7  # linear decay over the last 70% of the scheduled steps
    final_lr_frac: float = 0.1


DIAGNOSTIC_SWITCHES = ("warmup", "compile", "triton", "grad_stats")


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
        # Smoke mode for the script's plumbing (CPU or GPU, seconds): a 4-layer width-64 model, 128-token rows,
        # batches / 512 (1 to 4 rows per micro-step), accumulation 2 // world_size (1 or 2 processes), and unless
        # set otherwise a 12-step schedule (one step per twelfth) with 2 extension steps. Not the recipe: its
        # losses mean nothing.
        hp.tiny, hp.batch_divisor, hp.total_accumulation = True, 512, 2
        hp.train_seq_len, hp.val_seq_len, hp.val_rows = 128, 128, 2
        hp.num_iterations = int(env.get("SPEEDRUN_NUM_ITERATIONS", 12))
        hp.extension_iterations = int(env.get("SPEEDRUN_EXTENSION_ITERATIONS", 2))
        hp.val_tokens = int(env.get("SPEEDRUN_VAL_TOKENS", 512))
        hp.val_every = int(env.get("SPEEDRUN_VAL_EVERY", 6))
    if hp.num_iterations < 1 or hp.extension_iterations < 0 or hp.val_every < 1 or hp.val_tokens < 1:
        raise ValueError("SPEEDRUN_* overrides must be positive (extension may be 0)")
    return hp


@dataclass
class ModelConfig:
    vocab_size: int = 50304  # 50257 padded to a multiple of 128
    num_layers: int = 16
    model_dim: int = 1024
    num_heads: int = 8
    head_dim: int = 128
    mlp_ratio: int = 4
    long_window_layers: tuple = (0, 4, 11, 15)  # long window + partial key offset; the rest the short one
    value_embed_tables: int = 5
    value_embed_layers: tuple = (0, 1, 2, 3, 4, 11, 12, 13, 14, 15)  # layer k of this list reads table k % 5
    skip_in: tuple = (2, 4, 6)  # U-net skips: outputs of these layers ...
    skip_out: tuple = (9, 10, 11)  # ... are added (last in, first out: 6->9, 4->10, 2->11) before these
    backout_layer: int = 11  # its output, times a learned lambda, is subtracted before the head
    gate_dim: int = 16  # gates read the first 16 channels of their input
    attn_scale: float = 0.1  # with QK-norm the usual 1/sqrt(128) is too small
    yarn_temperature: float = 0.2  # attention scale x (0.2 ln(new/old) + 1) on each YaRN rescale
    use_triton: bool = True


def tiny_model_config() -> ModelConfig:
    # vocab 512: token ids are folded modulo 512 (GPT.forward), so the head is 100x cheaper on a CPU
    return ModelConfig(vocab_size=512, num_layers=4, model_dim=64, num_heads=2, head_dim=32, long_window_layers=(0, 3),
                       value_embed_tables=1, value_embed_layers=(0, 3), skip_in=(1,), skip_out=(2,),
                       backout_layer=2, gate_dim=8)


# ----------------------------------------------------------------------------------------------------------------
# Training schedule. The record's batch and window schedules have 12 entries, each 1/12 of the scheduled steps;
# consecutive entries that are equal form one stage here. A stage is one compiled graph per distinct (batch rows,
# number of MTP targets, tied head); the windows are tensors, so a window change alone does not recompile.

BATCH_SCHEDULE = (131072, 262144, 393216) + (524288,) * 9
LONG_WINDOW_SCHEDULE = (3, 7, 11, 13, 15, 17, 19, 21, 23, 23, 23, 23)
EXTENSION_BATCH = 524288
EXTENSION_LONG_WINDOW = 23
FINAL_VALIDATION_LONG_WINDOW = 27  # the final validation extends the long window once more, without YaRN
YARN_MAX_LONG_WINDOW = 13  # YaRN is applied to a window change only while the new long window is <= 13 blocks
MTP_FRACTION = 1 / 4  # multi-token prediction in the first quarter of the scheduled steps
SPLIT_EMBED_STAGE = 2  # the embedding unties from the head at the start of the third twelfth (2/12)


def short_window(long_window: int) -> int:
    return min(11, long_window // 2)


@dataclass(frozen=True)
class Stage:
    name: str
    end_frac: float  # the stage covers scheduled steps with step/num_iterations < end_frac
    batch_tokens: int  # tokens per optimizer step across all GPUs and accumulation steps
    windows: tuple  # (short, long) sliding windows in 128-token blocks
    mtp_targets: int  # how many next tokens the loss predicts (weights per step: mtp_weights_table)
    tied_head: bool  # the embedding shares the lm_head weight until 2/12 of training


def _build_stages() -> tuple:
    stages, twelfths = [], len(BATCH_SCHEDULE)
    for k in range(twelfths):
        batch, long = BATCH_SCHEDULE[k], LONG_WINDOW_SCHEDULE[k]
        # MTP: 3 targets in the first third of its quarter, 2 in the second third (= twelfths 0 and 1)
        mtp = 3 if k == 0 else 2 if k == 1 else 1
        stage = Stage(f"s{len(stages)}", (k + 1) / twelfths, batch, (short_window(long), long), mtp,
                      k < SPLIT_EMBED_STAGE)
        if stages and (stages[-1].batch_tokens, stages[-1].windows, stages[-1].mtp_targets,
                       stages[-1].tied_head) == (batch, stage.windows, mtp, stage.tied_head):
            stages[-1] = Stage(stages[-1].name, stage.end_frac, batch, stage.windows, mtp, stage.tied_head)
        else:
            stages.append(stage)
    return tuple(stages)


STAGES = _build_stages()  # s0..s8: twelfths 0..7 one each, 8..11 together (batch and windows stop changing)
EXTENSION = Stage("ext", math.inf, EXTENSION_BATCH,
                  (short_window(EXTENSION_LONG_WINDOW), EXTENSION_LONG_WINDOW), 1, False)
FINAL_VALIDATION_WINDOWS = (short_window(EXTENSION_LONG_WINDOW), FINAL_VALIDATION_LONG_WINDOW)


def stage_at(step: int, hp: Hyperparameters) -> Stage:
    if step >= hp.num_iterations:
        return EXTENSION
    frac = step / hp.num_iterations
    for stage in STAGES:
        if frac < stage.end_frac:
            return stage
    return STAGES[-1]


def mtp_weights(step: int, hp: Hyperparameters) -> tuple:
    """Loss weights of the next 1, 2, 3 tokens: (1, 0.5, 0.25 -> 0) then (1, 0.5 -> 0) then (1,), each part
    decaying linearly over its third of the first quarter of the scheduled steps (the record's schedule)."""
    x = step / (hp.num_iterations * MTP_FRACTION)
    if x < 1 / 3:
        return (1.0, 0.5, 0.25 * (1 - 3 * x))
    if x < 2 / 3:
        return (1.0, 0.5 * (1 - (3 * x - 1)))
    return (1.0,)


def lr_multiplier(step: int, hp: Hyperparameters) -> float:
    """The record's schedule: a peak that follows the batch ramp (1.0, then 1.52, 1.73 and 2.0 after 1/12, 2/12
    and 3/12 of the scheduled steps), a linear decay over the last cooldown_frac to final_lr_frac, then
    final_lr_frac during the extension."""
    if step > hp.num_iterations:
        return hp.final_lr_frac
    x = step / hp.num_iterations
    peak = 2.0 if x > 3 / 12 else 1.73 if x > 2 / 12 else 1.52 if x > 1 / 12 else 1.0
    if x >= 1 - hp.cooldown_frac:
        w = (1 - x) / hp.cooldown_frac
        return w * peak + (1 - w) * hp.final_lr_frac
    return peak


def muon_momentum(step: int, hp: Hyperparameters) -> float:
    """0.85 -> 0.95 over the first 300/4700 of the scheduled steps, back to 0.85 over the last 50/4700 of the
    whole run (extension included)."""
    warm = max(1, round(hp.muon_momentum_warmup_frac * hp.num_iterations))
    cool = max(1, round(hp.muon_momentum_cooldown_frac * hp.num_iterations))
    lo, hi = hp.muon_momentum_start, hp.muon_momentum_end
    cooldown_start = hp.num_iterations + hp.extension_iterations - cool
    if step < warm:
        return lo + step / warm * (hi - lo)
    if step > cooldown_start:
        return hi - (step - cooldown_start) / cool * (hi - lo)
    return hi


def adam_steps_at(step: int) -> bool:
    """Adam (embeddings, head, scalars) steps on odd steps only, on the gradients of that step and the one
    before (the record's choice: half the Adam work and communication)."""
    return step % 2 == 1


def stage_first_steps(hp: Hyperparameters) -> dict:
    """The stages a run goes through, in order, each with its first step."""
    first = {}
    for step in range(hp.num_iterations + hp.extension_iterations):
        first.setdefault(stage_at(step, hp), step)
    return first


def training_tokens(hp: Hyperparameters) -> int:
    """Tokens the schedule consumes (all GPUs): what [data] train_shards in track.toml is computed from."""
    total = hp.num_iterations + hp.extension_iterations
    return sum(stage_at(s, hp).batch_tokens // hp.batch_divisor for s in range(total))


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
    first shard when the shards run out (small proxy data), and says so. tokens_read counts the tokens the rows
    cover plus the ones skipped between them (how far into the data the run got).
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


def find_shards(data_path: str, split: str) -> list[str]:
    folder = os.path.join(data_path, DATA_SUBDIR)
    files = sorted(glob.glob(os.path.join(folder, f"fineweb_{split}_*.bin")))
    if not files:
        raise FileNotFoundError(f"no fineweb_{split}_*.bin shards in {folder!r} (DATA_PATH is the folder holding "
                                f"{DATA_SUBDIR}/)")
    return files


# ----------------------------------------------------------------------------------------------------------------
# Attention masks: document masking + causal sliding window, built at block level for FlexAttention


def document_ids(inputs: torch.Tensor) -> torch.Tensor:
    """Per-row document index (0, 1, ...) of each token: rows start at a BOS, each BOS opens a document."""
    return (inputs == BOS_ID).cumsum(dim=1, dtype=torch.int32)


def sliding_window_block_mask(docs: torch.Tensor, window_tokens: torch.Tensor) -> BlockMask:
    """BlockMask for causal attention within a document and within `window_tokens` positions.

    Blocks are classified from the first/last token and document of each 128-token block: skipped (nothing
    allowed), full (everything allowed, no mask_mod call) or partial (mask_mod decides per element). The window
    is a tensor so that changing it does not recompile the model.
    """
    B, T = docs.shape
    assert T % BLOCK == 0, f"sequence length {T} must be a multiple of {BLOCK}"
    pos = torch.arange(T, device=docs.device)
    first_tok = pos[::BLOCK]  # (nb,)
    last_tok = pos[BLOCK - 1::BLOCK]
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
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window_tokens) & (docs[b, q_idx] == docs[b, kv_idx])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod)


# ----------------------------------------------------------------------------------------------------------------
# Model


def dense_attention(q, k, v, mask: BlockMask, scale) -> torch.Tensor:
    """Attention with the block mask's element mask materialized (CPU only: small sizes)."""
    B, L = q.size(0), q.size(2)
    idx = torch.arange(L, device=q.device)
    allowed = torch.stack([mask.mask_mod(torch.tensor(b), 0, idx[:, None], idx[None, :]) for b in range(B)])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary embedding on half the frequencies; the other half of each head (dims 32-64, 96-128) is stationary.
    One table for every layer (the record's): YaRN rescales it when the long window grows.

    apply_yarn() rescales the frequencies (YaRN): dimensions that complete many turns within the old window keep
    their frequency, slow ones are interpolated by old/new, and the attention scale grows by
    temperature*ln(new/old)+1.
    """

    def __init__(self, head_dim: int, max_len: int, temperature: float):
        super().__init__()
        self.max_len, self.temperature = max_len, temperature
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
        self.mscale.mul_(self.temperature * math.log(s) + 1)
        self._refresh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H, D)
        T = x.size(1)
        cos = self.cos[None, :T, None, :].to(x.dtype)
        sin = self.sin[None, :T, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def gate(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A gate's pre-activation from the first w.size(1) channels of x (the record's 16-channel gates)."""
    return F.linear(x[..., :w.size(1)], w.to(x.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, long_window: bool, value_embed: bool):
        super().__init__()
        self.cfg, self.long_window = cfg, long_window
        dim, hd = cfg.model_dim, cfg.num_heads * cfg.head_dim
        bound = math.sqrt(3) * dim ** -0.5
        # float32 master weights (Muon updates them in float32); the forward reads them in bf16
        self.qkv_w = nn.Parameter(torch.empty(3 * hd, dim).uniform_(-bound, bound))
        self.qkv_w.muon_parts = 3  # Muon orthogonalizes q, k and v separately
        self.o_w = nn.Parameter(torch.zeros(dim, hd))
        # per-head output gate sigmoid(W x[:16]), zero init (0.5); value-embedding gate 2*sigmoid(W x[:16]) (1.0)
        self.attn_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_dim))
        self.ve_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_dim)) if value_embed else None
        # NorMuon step multipliers (the record's effective ones, see NorMuon)
        self.qkv_w.muon_lr_mul = self.o_w.muon_lr_mul = 2.0
        for g in (self.attn_gate_w, self.ve_gate_w):
            if g is not None:
                g.muon_lr_mul = 0.1

    def forward(self, x, ve, sa_lambdas, mask: BlockMask, rotary: Rotary):
        B, T, _ = x.shape
        H, D = self.cfg.num_heads, self.cfg.head_dim
        # sa_lambdas[0] scales q, k, v (only v matters after QK-norm), sa_lambdas[1] the output projection. It
        # scales the weight, as the record does: scaling the product kept both the product and the scaled copy
        # for the backward (2 x 384 MiB per layer at 16 x 4096 tokens, 6 GB in all; measured on an H200)
        q, k, v = F.linear(x, sa_lambdas[0] * self.qkv_w.bfloat16()).view(B, T, 3, H, D).unbind(dim=2)
        q, k = norm(q), norm(k)
        q, k = rotary(q), rotary(k)
        if self.long_window:
            # Partial key offset: the stationary dims of each key carry the previous token's key, so a query can
            # match "the token after X" in one layer (induction).
            q4, h2 = D // 4, D // 2
            k = torch.cat([k[:, :, :, :q4],
                           torch.cat([k[:, :1, :, q4:h2], k[:, :-1, :, q4:h2]], dim=1),
                           k[:, :, :, h2:h2 + q4],
                           torch.cat([k[:, :1, :, h2 + q4:], k[:, :-1, :, h2 + q4:]], dim=1)], dim=-1)
        if ve is not None:
            v = v + 2 * torch.sigmoid(gate(x, self.ve_gate_w))[..., None] * ve.view(B, T, H, D)
        scale = self.cfg.attn_scale * rotary.mscale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if q.is_cuda:
            y = flex_attention(q * scale.to(q.dtype), k, v, block_mask=mask, scale=1.0)
        else:  # CPU smoke runs and tests: FlexAttention has no CPU backward, so use the same mask densely
            y = dense_attention(q * scale.to(q.dtype), k, v, mask, scale=1.0)
        y = y.transpose(1, 2) * torch.sigmoid(gate(x, self.attn_gate_w))[..., None]
        return sa_lambdas[1] * F.linear(y.reshape(B, T, H * D), self.o_w.bfloat16())


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, hidden = cfg.model_dim, cfg.mlp_ratio * cfg.model_dim
        bound = math.sqrt(3) * 0.5 * dim ** -0.5
        self.fc_w = nn.Parameter(torch.empty(hidden, dim).uniform_(-bound, bound))
        self.proj_w = nn.Parameter(torch.zeros(dim, hidden))
        self.fc_w.muon_lr_mul, self.proj_w.muon_lr_mul = 2.0, 4.0
        self.proj_w.muon_unit_dim = -2  # NorMuon: proj's hidden units are its columns (fc's are its rows)

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.fc_w.bfloat16())).square(), self.proj_w.bfloat16())


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096):
        super().__init__()
        self.cfg = cfg
        V, dim, L = cfg.vocab_size, cfg.model_dim, cfg.num_layers
        # lm_head and embedding are one tensor for the first 2/12 of training (tied), then split (split_embed).
        self.lm_head_w = nn.Parameter(torch.randn(V, dim) * 0.005)
        self.embed_w = nn.Parameter(torch.zeros(V, dim))
        self.tied = True
        self.embed2_w = nn.Parameter(torch.randn(V, dim))  # second embedding, mixed in by x0_lambdas[:, 1]
        self.value_embeds = nn.Parameter(torch.zeros(cfg.value_embed_tables * V, dim))  # tables fused, zero init
        self.attn = nn.ModuleList([Attention(cfg, i in cfg.long_window_layers, i in cfg.value_embed_layers)
                                   for i in range(L)])
        self.mlp = nn.ModuleList([MLP(cfg) for _ in range(L)])
        self.rotary = Rotary(cfg.head_dim, max_seq_len, cfg.yarn_temperature)
        n_skip = len(cfg.skip_in)
        self.smear_gate_w = nn.Parameter(torch.zeros(1, cfg.gate_dim))
        self.skip_gate_w = nn.Parameter(torch.zeros(n_skip, cfg.gate_dim))
        self.x0_lambdas = nn.Parameter(torch.zeros(L, 2))  # weights of x0 and of the second embedding per layer
        # scalars (their own Adam): x <- r_i x + ..., 1.05 init; (v, out) scales per layer; smear and backout gains
        self.resid_lambdas = nn.Parameter(torch.full((L,), 1.05))
        self.sa_lambdas = nn.Parameter(torch.tensor([[0.5, 1.0]] * L))
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(torch.full((1,), 0.5))
        self.skip_lambdas = nn.Parameter(torch.full((n_skip,), -1.5))  # sigmoid(-1.5) = 0.18
        # Adam step and weight-decay multipliers (the record's)
        for p, lr_mul, wd_mul in ((self.lm_head_w, 1.0, 150.0), (self.embed_w, 1.0, 150.0),
                                  (self.embed2_w, 75.0, 5.0), (self.value_embeds, 75.0, 5.0),
                                  (self.smear_gate_w, 0.01, 0.0), (self.skip_gate_w, 0.01, 0.0),
                                  (self.x0_lambdas, 5.0, 0.0), (self.resid_lambdas, 5.0, 0.0),
                                  (self.sa_lambdas, 5.0, 0.0), (self.smear_lambda, 5.0, 0.0),
                                  (self.backout_lambda, 5.0, 0.0), (self.skip_lambdas, 5.0, 0.0)):
            p.adam_lr_mul, p.adam_wd_mul = lr_mul, wd_mul

    @torch.no_grad()
    def split_embed(self):
        """End of tying: the embedding starts from the current head weight and trains on its own."""
        self.embed_w.copy_(self.lm_head_w)
        self.tied = False

    @torch.no_grad()
    def set_windows(self, old: tuple, new: tuple):
        if new[1] != old[1] and new[1] <= YARN_MAX_LONG_WINDOW:
            self.rotary.apply_yarn(old[1], new[1])

    @torch.no_grad()
    def reset_windows(self):
        self.rotary.reset()

    @staticmethod
    def block_masks(inputs: torch.Tensor, windows: torch.Tensor) -> tuple:
        """The batch's attention masks (short window, long window). windows: int tensor (short, long) in blocks,
        a tensor so that a window change does not recompile. Built outside the compiled model and passed in (built
        inside it, the short track's masks had wrong blocks on the H100: see tracks/short/NOTES.md)."""
        docs = document_ids(inputs)
        return (sliding_window_block_mask(docs, windows[0] * BLOCK),
                sliding_window_block_mask(docs, windows[1] * BLOCK))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, masks: tuple, mtp_weights: torch.Tensor):
        """Training: (sum over tokens of the weighted next-k-token losses, mean next-token loss). Evaluation
        (model.eval()): (mean next-token loss, the same). mtp_weights: float tensor, one weight per target; its
        length is the number of targets. masks: block_masks(inputs, windows)."""
        cfg = self.cfg
        B, T = inputs.shape
        V = cfg.vocab_size
        if V <= BOS_ID:  # the smoke model's small vocabulary (the masks were built from the real ids)
            inputs, targets = inputs % V, targets % V
        embed_w = self.lm_head_w if self.tied else self.embed_w
        x = F.embedding(inputs, embed_w).bfloat16()
        # smear: each token adds a gated share of the previous token's embedding
        smear = self.smear_lambda.bfloat16() * torch.sigmoid(gate(x[:, 1:], self.smear_gate_w))
        x = torch.cat([x[:, :1], x[:, 1:] + smear * x[:, :-1]], dim=1)
        x = x0 = norm(x)
        x02 = norm(F.embedding(inputs, self.embed2_w).bfloat16())
        ve_all = self.value_embeds.view(cfg.value_embed_tables, V, -1)[:, inputs].bfloat16()
        resid, x0_l = self.resid_lambdas.bfloat16(), self.x0_lambdas.bfloat16()
        skips, backout = [], None
        for i in range(cfg.num_layers):
            if i in cfg.skip_out:
                j = cfg.skip_out.index(i)
                weight = torch.sigmoid(self.skip_lambdas[j]).bfloat16() * 2 * torch.sigmoid(
                    gate(x0, self.skip_gate_w[j:j + 1]))
                x = x + weight * skips.pop()
            if i == 0:
                x = (resid[0] + x0_l[0, 0]) * x + x0_l[0, 1] * x02
            else:
                x = resid[i] * x + x0_l[i, 0] * x0 + x0_l[i, 1] * x02
            ve = None
            if i in cfg.value_embed_layers:
                ve = ve_all[cfg.value_embed_layers.index(i) % cfg.value_embed_tables]
            attn = self.attn[i]
            mask = masks[1] if attn.long_window else masks[0]
            x = x + attn(norm(x), ve, self.sa_lambdas[i].bfloat16(), mask, self.rotary)
            x = x + self.mlp[i](norm(x))
            if i in cfg.skip_in:
                skips.append(x)
            if i == cfg.backout_layer:
                backout = x
        # back out what the first layers wrote for the context of later ones, not for the prediction itself
        x = norm(x - self.backout_lambda.bfloat16() * backout).view(B * T, -1)
        if not x.is_cuda:  # CPU smoke: float32 is much faster than bf16 there
            logits = F.linear(x.float(), self.lm_head_w)
        elif self.training:
            # bf16 logits, as the record trains: the backward of the gathers below then scatters into a bf16
            # (tokens x vocab) buffer, not a float32 one (6.1 GB less at the s3 peak, measured on an H200);
            # the cap and the logsumexp are still computed in float32 (fused into the kernels that read them)
            logits = F.linear(x, self.lm_head_w.bfloat16())
        else:  # validation in float32, as the record evaluates (no backward, so no such buffer)
            logits = F.linear(x, self.lm_head_w.bfloat16()).float()
        logits = 23 * torch.sigmoid((logits + 5) / 7.5)  # the record's logit cap: values in (0, 23)
        # cross-entropy of every target from one logsumexp: the (k+1)-th next token of position t is
        # targets[t + k]; the row's last k positions have none
        lse = logits.float().logsumexp(dim=-1).view(B, T)
        logits = logits.view(B, T, V)
        next_token = lse - logits.gather(-1, targets[..., None]).squeeze(-1).float()
        if not self.training:
            return next_token.mean(), next_token.mean()
        loss = mtp_weights[0] * next_token.sum()
        for k in range(1, mtp_weights.size(0)):
            ce = lse[:, :-k] - logits[:, :-k].gather(-1, targets[:, k:, None]).squeeze(-1).float()
            loss = loss + mtp_weights[k] * ce.sum()
        return loss, next_token.mean()


# ----------------------------------------------------------------------------------------------------------------
# Optimizers

# Polar Express (Amsel, Persson, Musco, Gower 2025): degree-5 polynomial iterations; the record's coefficients,
# computed for 5 iterations with safety factor 2e-2 and cushion 2, after a Frobenius normalisation by 1.02.
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def polar_express(G: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T for a batch of wide matrices (..., m, n), m <= n, in bf16."""
    assert G.size(-2) <= G.size(-1)
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    sym = kernels.sym_mm if use_triton else kernels.reference
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = sym(X, None, 1.0, 0.0)  # X X^T
        Bm = sym(A, A, c, b)  # c A A^T + b A   (A is symmetric)
        X = torch.baddbmm(X, Bm, X, beta=a, alpha=1.0) if X.dim() == 3 else a * X + Bm @ X
    return X


def normuon_normalize(v: torch.Tensor, second_moment: torch.Tensor, beta2: float, dim: int) -> torch.Tensor:
    """NorMuon's low-rank variance normalisation of orthogonalized updates v (batch, m, n), float32.

    The mean square of v along `dim` (one value per hidden unit) is tracked with an EMA (beta2); each unit is
    divided by the root of its EMA, then every matrix is rescaled to the Frobenius norm it had before."""
    mean_sq = v.square().mean(dim=dim, keepdim=True)
    second_moment.lerp_(mean_sq, 1 - beta2)
    step = second_moment.clamp_min(1e-10).rsqrt()
    before = v.norm(dim=(-2, -1), keepdim=True)
    scaled = v * step
    after = scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return scaled * (before / after)


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


@dataclass
class MuonMember:
    param: nn.Parameter
    index: int | None  # which of the param's muon_parts, or None for the whole matrix
    transposed: bool  # stored tall: orthogonalized as its transpose
    lr_mul: float
    unit_dim: int  # NorMuon: the axis (in the stacked, wide orientation) whose mean square is one value per unit


class NorMuon:
    """Nesterov momentum + Polar Express + NorMuon variance normalisation + cautious weight decay, for the float32
    weight matrices of the blocks and the attention / value-embedding gates.

    Matrices are cut into q, k, v and o (1024 x 1024), fc^T and proj (1024 x 4096) and the gates (8 x 16), stacked
    by shape, and each GPU orthogonalizes its slice of the stack (reduce-scatter of the gradients, all-gather of
    the updates); every GPU then applies all updates. Learning-rate multipliers are the record's effective ones:
    it sizes its step by its fused parameters' shapes (q|k|v|o and fc, proj stored as 4096 x 1024 each), so the
    attention and fc matrices get 2x, proj 4x (2 from the shape, 2 of its own) and the gates 0.1x.
    The update (the record's): w <- w - lr_mul*lr*u - [u*w >= 0] * w * lr_mul*lr * wd*lr.
    """

    def __init__(self, params, lr: float, weight_decay: float, beta2: float, rank: int = 0, world_size: int = 1,
                 use_triton: bool = True):
        self.params = list(params)
        self.lr, self.weight_decay, self.beta2, self.momentum = lr, weight_decay, beta2, 0.95
        self.rank, self.world_size, self.use_triton = rank, world_size, use_triton
        self.groups: dict[tuple, list[MuonMember]] = {}
        for p in self.params:
            rows, cols = p.shape
            parts = getattr(p, "muon_parts", 1)  # the fused q, k, v weight is three matrices
            lr_mul = getattr(p, "muon_lr_mul", 1.0)
            unit_dim = getattr(p, "muon_unit_dim", -1)  # in the stored orientation: -1 rows are units, -2 columns
            if parts > 1:
                for j in range(parts):
                    self._add(MuonMember(p, j, False, lr_mul, unit_dim), (rows // parts, cols))
            elif rows > cols:  # tall (fc): orthogonalize the transpose; its units (rows) become columns
                self._add(MuonMember(p, None, True, lr_mul, -3 - unit_dim), (cols, rows))
            else:
                self._add(MuonMember(p, None, False, lr_mul, unit_dim), (rows, cols))
        self.unit_dims = {}
        for shape, members in self.groups.items():
            dims = {m.unit_dim for m in members}
            assert len(dims) == 1, f"matrices of shape {shape} disagree on their NorMuon axis"
            self.unit_dims[shape] = dims.pop()
        self.momentum_buffers, self.second_moments = {}, {}
        device = self.params[0].device
        for shape, members in self.groups.items():
            per_rank = -(-len(members) // world_size)
            self.momentum_buffers[shape] = torch.zeros(per_rank, *shape, device=device)
            moment_shape = (per_rank, shape[0], 1) if self.unit_dims[shape] == -1 else (per_rank, 1, shape[1])
            self.second_moments[shape] = torch.zeros(moment_shape, device=device)

    def _add(self, member: MuonMember, shape: tuple):
        self.groups.setdefault(shape, []).append(member)

    @staticmethod
    def _view(t, member: MuonMember, shape: tuple):
        if member.index is not None:
            t = t[member.index * shape[0]:(member.index + 1) * shape[0]]
        return t.t() if member.transposed else t

    @torch.no_grad()
    def step(self, lr_mult: float = 1.0):
        """Uses and clears p.grad (float32, summed over accumulation steps and divided by their number)."""
        lr = self.lr * lr_mult
        updates = {}
        for shape, members in self.groups.items():
            per_rank = self.momentum_buffers[shape].size(0)
            stack = torch.zeros(per_rank * self.world_size, *shape, device=self.params[0].device)
            for i, m in enumerate(members):
                stack[i] = self._view(m.param.grad, m, shape)
            local = reduce_scatter_mean(stack, self.rank, self.world_size) if self.world_size > 1 else stack
            buf = self.momentum_buffers[shape]
            buf.lerp_(local, 1 - self.momentum)
            nesterov = local.lerp(buf, self.momentum)
            ortho = polar_express(nesterov, self.use_triton).float()
            ortho = normuon_normalize(ortho, self.second_moments[shape], self.beta2, self.unit_dims[shape])
            updates[shape] = all_gather_cat(ortho, self.world_size) if self.world_size > 1 else ortho
        for shape, members in self.groups.items():
            for i, m in enumerate(members):
                w = self._view(m.param.data, m, shape)
                u = updates[shape][i]
                step_lr = m.lr_mul * lr
                decay = (u * w >= 0).float() * (step_lr * self.weight_decay * lr)
                w.sub_(w * decay + u * step_lr)
        for p in self.params:
            p.grad = None


class Adam:
    """Adam with the record's cautious weight decay, in parameter groups (lr, betas, eps, wd); each parameter may
    carry adam_lr_mul and adam_wd_mul. The update: u = lr' * m / (sqrt(v) + eps) * sqrt(1-b2^t) / (1-b1^t) with
    lr' = lr * lr_mul; w <- w - u - [u*w > 0] * w * lr'^2 * wd * wd_mul."""

    def __init__(self, groups: list[dict]):
        self.groups = groups
        self.state = {}

    @torch.no_grad()
    def step(self, lr_mult: float = 1.0):
        """Uses and clears p.grad of its parameters (a parameter without a gradient is skipped)."""
        for g in self.groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                grad = p.grad
                if grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)}
                st["step"] += 1
                st["m"].lerp_(grad, 1 - b1)
                st["v"].lerp_(grad.square(), 1 - b2)
                lr = g["lr"] * lr_mult * getattr(p, "adam_lr_mul", 1.0)
                step_size = lr * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                update = st["m"] / (st["v"].sqrt() + g["eps"]) * step_size
                wd = lr * lr * g["weight_decay"] * getattr(p, "adam_wd_mul", 1.0)
                if wd:
                    update += (update * p > 0) * p * wd
                p.sub_(update)
                p.grad = None

    @torch.no_grad()
    def copy_state(self, src: nn.Parameter, dst: nn.Parameter):
        """At the embed/head split the embedding starts with the head's moments and step count (the record's)."""
        if src in self.state:
            self.state[dst] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self.state[src].items()}


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int):
    scalars = [model.resid_lambdas, model.sa_lambdas, model.smear_lambda, model.backout_lambda, model.skip_lambdas]
    muon_params = [p for n, p in model.named_parameters() if n.startswith(("attn.", "mlp."))]
    adam = Adam([
        {"params": [model.lm_head_w, model.embed_w, model.embed2_w, model.value_embeds, model.smear_gate_w,
                    model.skip_gate_w, model.x0_lambdas],
         "lr": hp.adam_lr, "betas": hp.adam_betas, "eps": hp.adam_eps, "weight_decay": hp.adam_weight_decay},
        {"params": scalars, "lr": hp.scalar_lr, "betas": hp.scalar_betas, "eps": hp.adam_eps,
         "weight_decay": hp.adam_weight_decay},
    ])
    muon = NorMuon(muon_params, hp.muon_lr, hp.muon_weight_decay, hp.muon_beta2, rank, world_size,
                   use_triton=model.cfg.use_triton)
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


def grad_stats_line(model: nn.Module) -> str:
    """Largest |gradient| (averaged over accumulation steps) of every parameter, and the largest |weight| of the
    embeddings and scalars. A diagnostic: it waits for the GPU."""
    groups = {name.removesuffix("_w"): p.grad.abs().max().item() for name, p in model.named_parameters()
              if p.grad is not None}
    weights = {n: p.detach().abs().max().item() for n, p in model.named_parameters()
               if not n.startswith(("attn.", "mlp."))}
    return ("grad_stats: " + " ".join(f"{k}:{v:.3g}" for k, v in groups.items())
            + " | max|w| " + " ".join(f"{k}:{v:.3g}" for k, v in weights.items()))


def nonfinite_report(model: nn.Module, muon: NorMuon, adam: Adam) -> list[str]:
    """Where the non-finite values are after a non-finite training loss (parameters, optimizer state)."""
    def bad(t: torch.Tensor) -> bool:
        return not bool(torch.isfinite(t).all())

    names = {p: n for n, p in model.named_parameters()}
    params = [n for n, p in model.named_parameters() if bad(p)]
    adam_state = [f"{names[p]}.{k}" for p, st in adam.state.items() for k in ("m", "v") if bad(st[k])]
    muon_state = [f"{kind}{tuple(shape)}" for kind, table in (("momentum", muon.momentum_buffers),
                                                             ("second_moment", muon.second_moments))
                  for shape, buf in table.items() if bad(buf)]
    return [
        f"nonfinite: parameters: {', '.join(params) or 'none'}",
        f"nonfinite: adam state: {', '.join(adam_state) or 'none'}; muon state: {', '.join(muon_state) or 'none'}",
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
        raise SystemExit("the medium track needs CUDA (SPEEDRUN_TINY=1 runs a small smoke version on CPU)")
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
    train_files = find_shards(hp.data_path, "train")
    val_files = find_shards(hp.data_path, "val")
    log(f"data: {len(train_files)} train shard(s), {len(val_files)} val shard(s) in "
        f"{os.path.join(hp.data_path, DATA_SUBDIR)}; world_size={world_size} grad_accum={grad_accum} seed={hp.seed}")

    torch.manual_seed(hp.seed)
    cfg = tiny_model_config() if hp.tiny else ModelConfig()
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
    # the stages' windows and the MTP weights of every step on the device once: building them in a step would
    # copy host->device with a synchronize, so the host could not queue the next step while the GPU still runs
    window_tensors = {st: torch.tensor(st.windows, dtype=torch.int32, device=device) for st in (*STAGES, EXTENSION)}
    final_windows = torch.tensor(FINAL_VALIDATION_WINDOWS, dtype=torch.int32, device=device)
    total_steps = hp.num_iterations + hp.extension_iterations
    mtp_table = torch.zeros(total_steps, 3)
    for s in range(total_steps):
        weights = mtp_weights(s, hp)[:stage_at(s, hp).mtp_targets]
        mtp_table[s, :len(weights)] = torch.tensor(weights)
    mtp_table = mtp_table.to(device)
    eval_weights = torch.ones(1, device=device)

    def train_step(step: int, stage: Stage, loader: BosRowLoader, muon: NorMuon, adam: Adam, lr_mult: float,
                   momentum: float, adam_now: bool):
        rows = stage.batch_tokens // hp.batch_divisor // hp.total_accumulation // hp.train_seq_len
        windows = window_tensors[stage]
        weights = mtp_table[step, :stage.mtp_targets]
        loss_sum = torch.zeros((), device=device)  # weighted MTP loss, to catch any non-finite value
        next_sum = torch.zeros((), device=device)  # next-token loss, comparable to val_loss
        for _ in range(grad_accum):
            inputs, targets = loader.next_batch(rows)
            if on_gpu:
                inputs = inputs.pin_memory().to(device, non_blocking=True)
                targets = targets.pin_memory().to(device, non_blocking=True)
            loss, next_loss = compiled(inputs, targets, model.block_masks(inputs, windows), weights)
            (loss / grad_accum).backward()  # float32 parameters: autograd sums the micro-steps into p.grad
            loss_sum += loss.detach()
            next_sum += next_loss.detach()
        if hp.grad_stats:
            log(grad_stats_line(model))
        muon.momentum = momentum
        muon.step(lr_mult)
        if adam_now:  # else the Adam parameters keep their gradients and the next step adds its own
            for g in adam.groups:
                for p in g["params"]:
                    if p.grad is not None and world_size > 1:
                        all_reduce_mean(p.grad)
            adam.step(lr_mult)
        # the next-token loss, or NaN when any part of the loss was non-finite
        return torch.where(torch.isfinite(loss_sum), next_sum, torch.nan) / grad_accum

    def enter_stage(old: Stage | None, new: Stage, adam: Adam):
        if old is not None and old.windows != new.windows:
            model.set_windows(old.windows, new.windows)
        if (old is None or old.tied_head) and not new.tied_head:
            model.split_embed()
            adam.copy_state(model.lm_head_w, model.embed_w)

    @torch.no_grad()
    def validate(windows: torch.Tensor, batches: int | None = None) -> float:
        model.eval()
        loader = BosRowLoader(val_files, hp.val_seq_len, rank, world_size, cycle=False)
        total = torch.zeros((), device=device)
        n = batches or hp.val_tokens // val_chunk
        for _ in range(n):
            inputs, targets = loader.next_batch(hp.val_rows)
            inputs, targets = inputs.to(device), targets.to(device)
            _, loss = compiled(inputs, targets, model.block_masks(inputs, windows), eval_weights)
            total += loss
        total /= n
        if world_size > 1:
            all_reduce_mean(total)
        model.train()
        return total.item()

    @torch.no_grad()
    def forward_probe(windows: torch.Tensor) -> str:
        """After a non-finite training loss with finite weights: one validation batch through the compiled model
        (its validation graph is already compiled) and the eager model. A finite eager loss beside a non-finite
        compiled one points at the compiled graph."""
        loader = BosRowLoader(val_files, hp.val_seq_len, rank, world_size, cycle=False)
        inputs, targets = (t.to(device) for t in loader.next_batch(hp.val_rows))
        results = []
        model.eval()
        for name, forward in (("compiled", compiled), ("eager", model)):
            try:
                masks = model.block_masks(inputs, windows)
                results.append(f"{name}:{forward(inputs, targets, masks, eval_weights)[1].item():.4f}")
            except Exception as e:  # a diagnosis must not hide the report above (e.g. eager attention out of memory)
                results.append(f"{name}:failed({type(e).__name__})")
        model.train()
        return f"nonfinite: forward probe, one validation batch with the current weights: {' '.join(results)}"

    # -------- compile and warm-up: run every stage's graph once and the validation graphs, then restore the
    # initial weights. Not part of train_time.
    sync()
    t_warm = time.perf_counter()
    warm_loader = BosRowLoader(train_files, hp.train_seq_len, rank, world_size, cycle=True)
    muon, adam = build_optimizers(model, hp, rank, world_size)
    previous = None
    run_stages = stage_first_steps(hp)
    for stage, step in (run_stages.items() if hp.warmup else ()):
        enter_stage(previous, stage, adam)
        t0 = time.perf_counter()
        warm_loss = train_step(step, stage, warm_loader, muon, adam, lr_mult=0.0, momentum=hp.muon_momentum_end,
                               adam_now=True)
        sync()
        log(f"warmup: stage {stage.name} compiled and ran one step in {1000 * (time.perf_counter() - t0):.0f}ms "
            f"(train loss {warm_loss.item():.4f})")
        # validation graphs: with the first stage's head (tied) and, after the last stage, the final one (untied)
        for windows in ([window_tensors[stage]] if previous is None else []) + (
                [final_windows] if stage is list(run_stages)[-1] else []):
            t0 = time.perf_counter()
            validate(windows, batches=1)
            sync()
            log(f"warmup: validation graph ({'tied' if model.tied else 'untied'} head) "
                f"in {1000 * (time.perf_counter() - t0):.0f}ms")
        previous = stage
    model.zero_grad(set_to_none=True)
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
                enter_stage(None, stage, adam)
            # the final validation uses the extended windows (the long one once more, without YaRN)
            val_loss = validate(final_windows if last else window_tensors[stage])
            log(f"step:{step}/{total_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                f"step_avg:{training_time_ms / max(step, 1):.2f}ms")
            sync()
            t0 = time.perf_counter()
        if last:
            break
        new_stage = stage_at(step, hp)
        if new_stage is not stage:
            enter_stage(stage, new_stage, adam)
            stage = new_stage
        if new_stage.name not in timings:
            timings[new_stage.name] = StageTiming(first_step=step)
        timing = timings[new_stage.name]
        step_loss = train_step(step, new_stage, loader, muon, adam, lr_multiplier(step, hp),
                               muon_momentum(step, hp), adam_steps_at(step) or step + 1 == total_steps)
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
