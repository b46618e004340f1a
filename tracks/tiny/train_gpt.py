"""tiny track: a small GPT trained on CPU (or GPU) on a corpus this script generates itself.

It exists so the whole harness pipeline (launch, log parsing, statistics, record, verify) runs anywhere in
about a minute. Like the competition's scripts it is standalone (it never imports the harness) and writes
the competition's log format, so one parser serves every track.

The corpus is a random sparse order-2 Markov source over a small vocabulary, drawn from a fixed seed. Its
entropy rate is computed exactly, so the log states the lowest validation loss any model can reach.

    python tracks/tiny/train_gpt.py
    torchrun --standalone --nproc_per_node=2 tracks/tiny/train_gpt.py    # gloo on CPU, nccl on GPU

Environment: SPEEDRUN_SEED (model init and data order; the corpus never changes), SPEEDRUN_NUM_ITERATIONS,
SPEEDRUN_VAL_EVERY (0: validate only at the end), SPEEDRUN_VAL_TOKENS.
"""

import hashlib
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The corpus: a random sparse order-2 Markov source


@dataclass
class Source:
    vocab_size: int = 16
    successors: int = 3  # tokens that may follow each context (a, b); the rest have probability 0
    seed: int = 1234  # fixed: every run of every seed sees the same corpus


def transition_table(src: Source) -> torch.Tensor:
    """P[a, b, c] = probability that c follows (a, b). float64, rows sum to 1."""
    V, k = src.vocab_size, src.successors
    g = torch.Generator().manual_seed(src.seed)
    # argsort of uniforms picks a random subset; unlike randperm its output is fixed by the generator alone.
    chosen = torch.rand(V, V, V, generator=g, dtype=torch.float64).argsort(dim=-1)[..., :k]
    # -log(U) is Exp(1); normalised Exp(1) weights are a Dirichlet(1) draw over the chosen successors.
    weights = -torch.log1p(-torch.rand(V, V, k, generator=g, dtype=torch.float64))
    P = torch.zeros(V, V, V, dtype=torch.float64)
    P.scatter_(-1, chosen, weights / weights.sum(-1, keepdim=True))
    return P


def stationary_pairs(P: torch.Tensor, tol: float = 1e-15, max_iters: int = 100_000) -> torch.Tensor:
    """pi[a, b]: stationary distribution of the pair chain (a, b) -> (b, c), by power iteration.

    The lazy chain (pi + pi P) / 2 has the same stationary distributions and is aperiodic, so the iteration
    converges whatever the structure of the random graph."""
    V = P.shape[0]
    pi = torch.full((V, V), 1.0 / V**2, dtype=torch.float64)
    for _ in range(max_iters):
        nxt = 0.5 * (pi + torch.einsum("ab,abc->bc", pi, P))
        if (nxt - pi).abs().max().item() < tol:
            return nxt / nxt.sum()
        pi = nxt
    raise RuntimeError("stationary distribution did not converge")


def xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))


def entropy_rate(P: torch.Tensor, pi: torch.Tensor) -> float:
    """H(X_t | X_{t-2}, X_{t-1}) in nats: the loss floor once a model sees two tokens of context."""
    return -(pi * xlogx(P).sum(-1)).sum().item()


def first_step_entropy(pi: torch.Tensor) -> float:
    """H(X_1 | X_0) in nats: the floor for the first prediction of a window, which has one token of context."""
    p_b_given_a = pi / pi.sum(-1, keepdim=True)
    return -(pi * torch.log(p_b_given_a.clamp_min(1e-300)) * (pi > 0)).sum().item()


def window_loss_floor(P: torch.Tensor, pi: torch.Tensor, seq_len: int) -> float:
    """Lowest mean loss on windows of seq_len predictions that start at a stationary pair (our val rows)."""
    return (first_step_entropy(pi) + (seq_len - 1) * entropy_rate(P, pi)) / seq_len


def source_nll(P: torch.Tensor, pi: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean loss of the source's own probabilities on windows `rows` (what a perfect model would score)."""
    p_b_given_a = pi / pi.sum(-1, keepdim=True)
    first = torch.log(p_b_given_a[rows[:, 0], rows[:, 1]]).sum()
    rest = torch.log(P[rows[:, :-2], rows[:, 1:-1], rows[:, 2:]]).sum()
    return -(first + rest).item() / (rows.shape[0] * (rows.shape[1] - 1))


def sample_rows(P: torch.Tensor, pi: torch.Tensor, n_rows: int, length: int, g: torch.Generator) -> torch.Tensor:
    """n_rows independent stretches of the source, each `length` tokens, started from the stationary pairs."""
    V = P.shape[0]
    # Inverse-CDF sampling. Dividing by the last entry makes every CDF end at exactly 1.0, and
    # searchsorted(right=True) never returns a token of probability 0.
    pair_cdf = pi.flatten().cumsum(0)
    pair_cdf = pair_cdf / pair_cdf[-1]
    cdf = P.cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    rows = torch.empty(n_rows, length, dtype=torch.long)
    start = torch.searchsorted(pair_cdf, torch.rand(n_rows, generator=g, dtype=torch.float64), right=True)
    rows[:, 0], rows[:, 1] = start // V, start % V
    for t in range(2, length):
        u = torch.rand(n_rows, 1, generator=g, dtype=torch.float64)
        rows[:, t] = torch.searchsorted(cdf[rows[:, t - 2], rows[:, t - 1]], u, right=True).squeeze(1)
    return rows


# -----------------------------------------------------------------------------
# The model: a small nanoGPT (pre-norm blocks, learned positions, tied embedding)


@dataclass
class GPTConfig:
    vocab_size: int = 16  # the source's vocabulary
    seq_len: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 init; output projections shrink with depth so the residual stream starts small.
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied output embedding
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


# -----------------------------------------------------------------------------
# Training


@dataclass
class Hyperparameters:
    seed: int = int(os.environ.get("SPEEDRUN_SEED", "0"))
    num_iterations: int = int(os.environ.get("SPEEDRUN_NUM_ITERATIONS", "300"))
    val_every: int = int(os.environ.get("SPEEDRUN_VAL_EVERY", "50"))
    val_tokens: int = int(os.environ.get("SPEEDRUN_VAL_TOKENS", "32768"))
    batch_rows: int = 32  # global batch: 32 windows of 64 predictions, split across ranks
    train_rows: int = 8192  # fixed training corpus: 8192 windows (~530k tokens); 300 steps read 9600 windows
    val_pool_rows: int = 4096  # fixed validation pool: at most 262144 predictions
    lr: float = 1e-2
    lr_warmup_steps: int = 10
    cooldown_frac: float = 0.5  # the learning rate decays linearly to 0 over the last half
    untimed_steps: int = 3  # steps before the timed run (warm allocator and caches); their effect is undone


def main():
    args, src = Hyperparameters(), Source()
    cfg = GPTConfig(vocab_size=src.vocab_size)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # One thread: a model this small gains little from more, a run's speed then does not depend on the
        # machine's core count or on other load, and the math is the same everywhere.
        torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    master = rank == 0
    assert args.batch_rows % world == 0, "the global batch must split evenly across ranks"

    logfile = None
    if master:
        os.makedirs("logs", exist_ok=True)
        logfile = f"logs/{uuid.uuid4()}.txt"
        print(logfile, flush=True)

    def print0(s, console=True):
        if master:
            with open(logfile, "a", encoding="utf-8") as f:
                print(s, file=f)
            if console:
                print(s, flush=True)

    def sync():
        if use_cuda:
            torch.cuda.synchronize()

    # The log starts with this file's source, so a log says exactly what code produced it.
    with open(os.path.abspath(__file__), "rb") as f:
        print0(f.read().decode("utf-8"), console=False)
    print0("=" * 100)
    print0(f"Running Python {sys.version}")
    print0(f"Running PyTorch {torch.__version__} compiled for CUDA {torch.version.cuda}")
    try:
        import triton

        print0(f"Running Triton version {triton.__version__}")
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        print0(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
    else:
        print0("nvidia-smi is not available")
    print0("=" * 100)

    # Every rank builds the same corpus (it is cheap) so no rank waits on another for data.
    P = transition_table(src)
    pi = stationary_pairs(P)
    # Each split has its own generator, and validation reads a prefix of a fixed pool, so no setting
    # changes the training corpus and a smaller SPEEDRUN_VAL_TOKENS reads a subset of the same windows.
    val_pool = sample_rows(P, pi, args.val_pool_rows, cfg.seq_len + 1, torch.Generator().manual_seed(src.seed + 1))
    train_data = sample_rows(P, pi, args.train_rows, cfg.seq_len + 1, torch.Generator().manual_seed(src.seed + 2))
    digest = hashlib.sha256(val_pool.numpy().tobytes() + train_data.numpy().tobytes()).hexdigest()
    val_rows = min(args.val_pool_rows, max(world, args.val_tokens // cfg.seq_len // world * world))
    val_data = val_pool[:val_rows]
    print0(
        f"corpus: order-2 Markov source, vocab {src.vocab_size}, {src.successors} successors per context, "
        f"seed {src.seed}, train {train_data.numel()} tokens, val {val_rows * cfg.seq_len} predictions, "
        f"sha256 {digest[:16]}"
    )
    print0(
        f"loss floor: entropy rate {entropy_rate(P, pi):.4f} nats/token, "
        f"val window floor {window_loss_floor(P, pi, cfg.seq_len):.4f} (first prediction sees one token), "
        f"the source itself scores {source_nll(P, pi, val_data):.4f} on this val set"
    )
    print0(f"seed:{args.seed} world_size:{world} device:{device.type} threads:{torch.get_num_threads()}")
    val_data, train_data = val_data.to(device), train_data.to(device)

    torch.manual_seed(args.seed)
    model = GPT(cfg).to(device)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    data_gen = torch.Generator().manual_seed(args.seed)  # data order; the same on every rank
    local_rows = args.batch_rows // world

    def next_batch(order_gen):
        rows = torch.randint(len(train_data), (args.batch_rows,), generator=order_gen).to(device)
        rows = rows[rank * local_rows : (rank + 1) * local_rows]  # this rank's shard of the global batch
        return train_data[rows, :-1], train_data[rows, 1:]

    def train_step(x, y, lr, opt):
        loss = model(x, y) / (args.batch_rows * cfg.seq_len)  # mean over the global batch
        loss.backward()
        if world > 1:
            # One flat all-reduce; summing the per-rank shares gives the global-batch gradient.
            flat = torch.cat([p.grad.flatten() for p in params])
            dist.all_reduce(flat)
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)

    def make_optimizer():
        return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step):
        n = args.num_iterations
        return args.lr * min(1.0, (step + 1) / args.lr_warmup_steps, (n - step) / (args.cooldown_frac * n))

    @torch.no_grad()
    def evaluate():
        model.eval()
        mine = val_data[rank::world]
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, prediction count
        for i in range(0, len(mine), 256):
            chunk = mine[i : i + 256]
            total[0] += model(chunk[:, :-1], chunk[:, 1:]).double()
            total[1] += chunk[:, 1:].numel()
        if world > 1:
            dist.all_reduce(total)
        model.train()
        return (total[0] / total[1]).item()

    # Warm-up: a few untimed steps on batches from a separate generator, then back to the initial state,
    # so the timed run starts warm but its math is unchanged (the competition does the same for compile).
    opt = make_optimizer()
    warm_gen = torch.Generator().manual_seed(10_000 + args.seed)
    for _ in range(args.untimed_steps):
        train_step(*next_batch(warm_gen), args.lr, opt)
    model.load_state_dict(initial_state)
    opt = make_optimizer()

    n = args.num_iterations
    training_time_ms = 0.0
    sync()
    t0 = time.perf_counter()
    for step in range(n + 1):
        last_step = step == n
        if last_step or (args.val_every > 0 and step % args.val_every == 0):
            sync()
            training_time_ms += 1000 * (time.perf_counter() - t0)  # validation is not training time
            val_loss = evaluate()
            print0(
                f"step:{step}/{n} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                f"step_avg:{training_time_ms / max(step, 1):.2f}ms"
            )
            sync()
            t0 = time.perf_counter()
        if last_step:
            break
        train_step(*next_batch(data_gen), lr_at(step), opt)
        if step + 1 < n:  # the last step is reported by the final validation line
            approx_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
            print0(f"step:{step + 1}/{n} train_time:{approx_ms:.0f}ms step_avg:{approx_ms / (step + 1):.2f}ms")

    if use_cuda:
        allocated = torch.cuda.max_memory_allocated() // 2**20
        reserved = torch.cuda.max_memory_reserved() // 2**20
    else:
        # CPU has no allocator statistics: report the process's peak resident set size for both numbers.
        # ru_maxrss is KiB on Linux and bytes on macOS.
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        allocated = reserved = maxrss // (2**20 if sys.platform == "darwin" else 2**10)
    print0(f"peak memory allocated: {allocated} MiB reserved: {reserved} MiB")
    if world > 1:
        # Both ranks leave together: a rank tearing gloo down while the other still talks aborts (SIGABRT).
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
