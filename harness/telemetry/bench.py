"""GPU loads for telemetry tests, and the sampler-overhead A/B benchmark.

    python -m harness.telemetry.bench overhead --rounds 8 --steps 120 --out overhead.json

The A/B runs a training-like loop (a small GPT-style stack in bf16 autocast with fused AdamW) for a fixed
number of steps, alternately with and without the sampler process running (ABBA order, so drift in clock
or temperature hits both arms alike), and reports the with/without step-time ratio of each pair: median,
spread, and a bootstrap 95% interval of the median.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.telemetry import start_sampler, summarize_run


def matmul_load(seconds: float, n: int = 8192, device: str = "cuda") -> int:
    """Sustained bf16 GEMMs (the H100 reaches its power cap within ~0.1 s); returns the GEMM count."""
    import torch  # deferred: the CPU tests import this module for ab_stats, without torch's import cost

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    count = 0
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(8):
            a @ b
        torch.cuda.synchronize()
        count += 8
    return count


class TrainLike:
    """A training-like step: forward/backward of a small causal transformer and an AdamW update."""

    def __init__(self, d: int = 1024, layers: int = 6, heads: int = 8, seq: int = 1024, batch: int = 16,
                 vocab: int = 8192, device: str = "cuda", seed: int = 0):
        import torch  # deferred, as in matmul_load
        from torch import nn

        torch.manual_seed(seed)
        self.torch = torch
        layer = lambda: nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                                   norm_first=True, activation="gelu")
        self.emb = nn.Embedding(vocab, d).to(device)
        self.blocks = nn.ModuleList([layer() for _ in range(layers)]).to(device)
        self.head = nn.Linear(d, vocab, bias=False).to(device)
        params = list(self.emb.parameters()) + list(self.blocks.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        self.mask = nn.Transformer.generate_square_subsequent_mask(seq, device=device)
        g = torch.Generator(device=device).manual_seed(seed)
        self.x = torch.randint(0, vocab, (batch, seq), device=device, generator=g)
        self.y = torch.roll(self.x, -1, dims=1)

    def step(self, want_loss: bool = False) -> float | None:
        torch = self.torch
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = self.emb(self.x)
            for blk in self.blocks:
                h = blk(h, src_mask=self.mask, is_causal=True)
            logits = self.head(h)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.y.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach()) if want_loss else None

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, synchronized at both ends."""
        self.torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.torch.cuda.synchronize()
        return time.perf_counter() - t

    def run_for(self, seconds: float, loss_every: int = 0) -> list[list[float]]:
        """Train for about `seconds`; returns [[step, loss], ...] every `loss_every` steps (0: none)."""
        end = time.time() + seconds
        n, curve = 0, []
        while time.time() < end:
            want = loss_every > 0 and n % loss_every == 0
            loss = self.step(want_loss=want)
            if want:
                curve.append([n, round(loss, 4)])
            n += 1
        self.torch.cuda.synchronize()
        return curve


def overhead_ab(rounds: int, steps: int, hz: float = 10.0, gpu: int = 0, warmup_steps: int = 20) -> dict:
    """Interleaved A/B of step time without (A) and with (B) the sampler process; ABBA order."""
    model = TrainLike()
    model.run(warmup_steps)
    order = []
    for r in range(rounds):
        order += ["A", "B"] if r % 2 == 0 else ["B", "A"]
    times = {"A": [], "B": []}
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(order):
            handle = None
            if arm == "B":
                handle = start_sampler(Path(tmp) / f"r{i}", [gpu], hz)
                if handle is None:
                    raise RuntimeError("sampler could not start (no NVML?)")
            model.run(5)  # settle after the sampler's start-up burst, outside the timed part
            t = model.run(steps)
            if handle is not None:
                handle.stop()
                s = summarize_run(Path(tmp) / f"r{i}", None)
                gaps.append(s["max_gap_s"])
            times[arm].append(t / steps * 1000.0)
    return {"rounds": rounds, "steps_per_round": steps, "hz": hz, **ab_stats(times["A"], times["B"]),
            "sampler_max_gap_s": max(gaps) if gaps else None}


def ab_stats(without_ms: list[float], with_ms: list[float], boot: int = 2000) -> dict:
    """Ratios with/without of each round's pair (the two arms of one ABBA round ran back to back, so
    slow drift cancels within a pair): median, IQR, range, and a bootstrap 95% interval of the median."""
    if len(without_ms) != len(with_ms) or not without_ms:
        raise ValueError("need one 'with' and one 'without' time per round")
    ratios = [b / a for a, b in zip(without_ms, with_ms)]
    rng = random.Random(0)  # fixed: the same times always give the same interval
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(boot))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {
        "step_ms_without": list(without_ms),
        "step_ms_with": list(with_ms),
        "ratios_with_over_without": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": [q[0], q[2]],
        "ratio_min_max": [min(ratios), max(ratios)],
        "ratio_median_boot95": [meds[int(0.025 * boot)], meds[int(0.975 * boot) - 1]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.telemetry.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead", help="A/B the sampler's cost on a training-like loop")
    o.add_argument("--rounds", type=int, default=8)
    o.add_argument("--steps", type=int, default=120)
    o.add_argument("--hz", type=float, default=10.0)
    o.add_argument("--gpu", type=int, default=0)
    o.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    res = overhead_ab(a.rounds, a.steps, a.hz, a.gpu)
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    r, lo, hi = res["ratio_median"], *res["ratio_median_boot95"]
    print(f"sampler overhead: step time with/without = {r:.5f} (median of {len(res['ratios_with_over_without'])} "
          f"ABBA pairs; IQR {res['ratio_iqr'][0]:.5f}-{res['ratio_iqr'][1]:.5f}; "
          f"bootstrap 95% of median {lo:.5f}-{hi:.5f}); step {statistics.median(res['step_ms_without']):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
