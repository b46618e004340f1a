"""`speedrun bench-sequential`: simulate the sequential test at the seed records' numbers.

It answers the two questions `--until-significant` raises:
  1. Does the false-positive rate stay at alpha although the test looks after every run? Campaigns whose true
     mean equals the target (the worst case of the null) at the seeds' sigma, looked at after every run from
     n=3 to the budget; next to them the naive procedure (the fixed-N t-test after every run, stop at the
     first p < 0.01), which docs/DESIGN.md "Record rules" puts at about 0.056 for n=3..20.
  2. How many runs does it take? At the seeds' means and spreads (sigma 0.0012-0.0014, means 3.2780-3.2787
     against 3.28): the fixed-N one-sided t-test's runs for 80% and 90% power (exact, noncentral t) against
     the sequential procedure's power and expected runs.
"""

from __future__ import annotations

import math
import time

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.sequential import (ALPHA, CITATION, LOSS_PRIOR, PROCEDURE, fixed_n_runs, naive_repeated_ttest_error,
                                simulate_sequential)

TARGET = 3.28
SIGMAS = (0.0012, 0.0014)
MEANS = (3.2780, 3.2787)


def bench_results(sims: int = 20000, max_runs: tuple[int, ...] = (20, 30), seed: int = 0, progress=None) -> dict:
    """All numbers of the bench as a dict (the console tables are printed from it; tests read it too)."""
    rng = np.random.default_rng(seed)
    null_rows, alt_rows = [], []
    tasks = len(SIGMAS) * len(max_runs) * 3 + len(SIGMAS) * len(MEANS) * len(max_runs)

    def tick():
        if progress is not None:
            progress()

    for sigma in SIGMAS:
        for m in max_runs:
            seq = simulate_sequential(TARGET, sigma, TARGET, sims, m, rng=rng)
            tick()
            above = simulate_sequential(TARGET + 0.5 * sigma, sigma, TARGET, sims, m, rng=rng)
            tick()
            naive = naive_repeated_ttest_error(sims, 3, m, rng=rng)
            tick()
            null_rows.append({"sigma": sigma, "max_runs": m, "sequential": seq.reject_rate, "sequential_se": seq.reject_se,
                              "sequential_runs": seq.mean_runs, "above_target": above.reject_rate,
                              "naive": naive.reject_rate, "naive_se": naive.reject_se})
    for sigma in SIGMAS:
        for mean in MEANS:
            effect = (mean - TARGET) / sigma
            n90, n80 = fixed_n_runs(effect, power=0.9), fixed_n_runs(effect, power=0.8)
            for m in max_runs:
                r = simulate_sequential(mean, sigma, TARGET, sims, m, rng=rng)
                tick()
                # The fair comparison: a fixed-N test with the power the sequential procedure reached.
                n_equal = fixed_n_runs(effect, power=min(r.reject_rate, 0.999))
                alt_rows.append({"sigma": sigma, "mean": mean, "effect": effect, "fixed_90": n90, "fixed_80": n80,
                                 "max_runs": m, "power": r.reject_rate, "mean_runs": r.mean_runs,
                                 "median_runs": float(np.median(r.runs)), "fixed_equal_power": n_equal,
                                 "saved_vs_90": n90 - r.mean_runs, "saved_vs_80": n80 - r.mean_runs,
                                 "saved_equal_power": n_equal - r.mean_runs})
    assert tasks == len(null_rows) * 3 + len(alt_rows)
    return {"sims": sims, "alpha": ALPHA, "null": null_rows, "alternatives": alt_rows}


def cmd_bench_sequential(sims: int = 20000, max_runs: tuple[int, ...] = (20, 30)) -> int:
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(width=150)
    n_tasks = len(SIGMAS) * len(max_runs) * 3 + len(SIGMAS) * len(MEANS) * len(max_runs)
    started = time.perf_counter()
    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("sim", total=n_tasks)
        res = bench_results(sims=sims, max_runs=max_runs, progress=lambda: bar.advance(task))
    elapsed = time.perf_counter() - started

    console.print(f"[bold]{PROCEDURE}[/]; prior {LOSS_PRIOR.describe()}; stop at E >= {1 / ALPHA:g}; "
                  f"{CITATION}", highlight=False)
    console.print(f"{sims} simulated campaigns per row, looks after every run from n=3; target {TARGET}; "
                  f"{elapsed:.1f} s", highlight=False)

    t = Table(title=f"False-positive rate at the null (true mean = target), alpha = {ALPHA}")
    for col in ("sigma", "max runs", "sequential (±SE)", "sequential, mean 0.5σ above", "runs used",
                "naive t-test every run (±SE)"):
        t.add_column(col, justify="right")
    for r in res["null"]:
        t.add_row(f"{r['sigma']:.4f}", str(r["max_runs"]), f"{r['sequential']:.4f} ± {r['sequential_se']:.4f}",
                  f"{r['above_target']:.4f}", f"{r['sequential_runs']:.1f}", f"{r['naive']:.4f} ± {r['naive_se']:.4f}")
    console.print(t)

    t = Table(title="Runs needed at the seed records' numbers (target 3.28)")
    for col in ("sigma", "mean", "effect (σ)", "fixed-N 90%", "fixed-N 80%", "max runs", "seq. power",
                "seq. mean runs", "seq. median", "saved vs 90%", "saved vs 80%", "fixed-N at seq. power", "saved at equal power"):
        t.add_column(col, justify="right")
    for r in res["alternatives"]:
        t.add_row(f"{r['sigma']:.4f}", f"{r['mean']:.4f}", f"{r['effect']:.2f}", str(r["fixed_90"]),
                  str(r["fixed_80"]), str(r["max_runs"]), f"{r['power']:.3f}", f"{r['mean_runs']:.1f}",
                  f"{r['median_runs']:.0f}", f"{r['saved_vs_90']:+.1f}", f"{r['saved_vs_80']:+.1f}",
                  str(r["fixed_equal_power"]), f"{r['saved_equal_power']:+.1f}")
    console.print(t)
    console.print("saved = fixed-N runs minus the sequential procedure's expected runs (positive: fewer runs). "
                  "The last two columns compare at equal power: the fixed-N runs that reach the power the "
                  "sequential procedure reached within its budget.", highlight=False)
    console.print("The sequential procedure also needs no guess of sigma or the mean in advance, and a candidate "
                  "at the target is dropped after the 'runs used' of the first table instead of a full campaign.",
                  highlight=False)
    worst = max(r["sequential"] for r in res["null"])
    ok = worst <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
    console.print(("[green]error rate within alpha[/]" if ok else "[red]error rate above alpha[/]")
                  + f": worst simulated {worst:.4f} (alpha {ALPHA})")
    return 0 if ok else 1
