"""The tiny track: its corpus math, its log protocol, its determinism, and a 2-process gloo run.

The training runs are real (subprocesses of the script, as the harness launches it) but short. They are
launched together by one module fixture so the file stays fast on 2 cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from harness.tracks import REPO_ROOT, load_track

SCRIPT = REPO_ROOT / "tracks" / "tiny" / "train_gpt.py"
SEPARATOR = "=" * 100
STEPS = 40
VAL_EVERY = 20
VAL_LINE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
TRAIN_LINE = re.compile(r"^step:(\d+)/(\d+) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
PEAK_LINE = re.compile(r"^peak memory allocated: \d+ MiB reserved: \d+ MiB$")
INFO_PREFIXES = ("corpus: ", "loss floor: ", "seed:")


def load_script():
    """The script as a module (its main() guard keeps importing it from training).

    Its Hyperparameters read SPEEDRUN_* at import, so those are hidden to get the defaults."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SPEEDRUN_")}
    try:
        spec = importlib.util.spec_from_file_location("tiny_train_gpt", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.update(saved)
    return module


# -----------------------------------------------------------------------------
# Corpus math


@pytest.fixture(scope="module")
def tg():
    return load_script()


@pytest.fixture(scope="module")
def source(tg):
    P = tg.transition_table(tg.Source())
    return P, tg.stationary_pairs(P)


def test_transition_table_is_sparse_and_normalised(tg, source):
    P, _ = source
    src = tg.Source()
    assert P.shape == (src.vocab_size,) * 3
    assert torch.allclose(P.sum(-1), torch.ones(P.shape[:2], dtype=torch.float64), atol=1e-12)
    assert ((P > 0).sum(-1) == src.successors).all()
    # The corpus is fixed: rebuilding it gives the same bits.
    assert torch.equal(P, tg.transition_table(src))


def test_stationary_distribution_is_stationary(source):
    P, pi = source
    assert abs(pi.sum().item() - 1) < 1e-12
    assert (pi >= 0).all()
    assert torch.allclose(torch.einsum("ab,abc->bc", pi, P), pi, atol=1e-13)


def test_entropy_functions_on_sources_with_known_answers(tg):
    V = 5
    uniform = torch.full((V, V, V), 1.0 / V, dtype=torch.float64)
    pi = tg.stationary_pairs(uniform)
    assert torch.allclose(pi, torch.full((V, V), 1.0 / V**2, dtype=torch.float64))
    assert tg.entropy_rate(uniform, pi) == pytest.approx(math.log(V), abs=1e-12)
    assert tg.first_step_entropy(pi) == pytest.approx(math.log(V), abs=1e-12)
    # A deterministic cycle c = (b + 1) mod V: nothing to learn once two tokens are seen, nor after one.
    cycle = torch.zeros(V, V, V, dtype=torch.float64)
    for a in range(V):
        for b in range(V):
            cycle[a, b, (b + 1) % V] = 1.0
    pi = tg.stationary_pairs(cycle)
    assert tg.entropy_rate(cycle, pi) == pytest.approx(0.0, abs=1e-12)
    assert tg.first_step_entropy(pi) == pytest.approx(0.0, abs=1e-12)
    # The window floor averages one first-step prediction with seq_len - 1 full-context ones.
    P = tg.transition_table(tg.Source())
    pi = tg.stationary_pairs(P)
    h, h1 = tg.entropy_rate(P, pi), tg.first_step_entropy(pi)
    assert h1 > h
    assert tg.window_loss_floor(P, pi, 64) == pytest.approx((h1 + 63 * h) / 64, rel=1e-12)


def test_entropy_rate_matches_monte_carlo_estimate(tg, source):
    """-log P(x_t | x_{t-2}, x_{t-1}) averaged over sampled text converges to the exact entropy rate."""
    P, pi = source
    rows = tg.sample_rows(P, pi, 4096, 65, torch.Generator().manual_seed(7))
    nll = -torch.log(P[rows[:, :-2], rows[:, 1:-1], rows[:, 2:]])
    assert torch.isfinite(nll).all(), "a transition of probability 0 was sampled"
    # Rows are independent; positions within a row are not, so the standard error uses row means.
    row_means = nll.mean(1)
    stderr = row_means.std().item() / math.sqrt(len(row_means))
    assert abs(nll.mean().item() - tg.entropy_rate(P, pi)) < 5 * stderr
    # source_nll scores whole windows: one first-step prediction, then full-context ones.
    window_means = torch.tensor([tg.source_nll(P, pi, rows[i : i + 1]) for i in range(len(rows))], dtype=torch.float64)
    assert tg.source_nll(P, pi, rows) == pytest.approx(window_means.mean().item(), rel=1e-9)
    stderr = window_means.std().item() / math.sqrt(len(window_means))
    assert abs(window_means.mean().item() - tg.window_loss_floor(P, pi, 64)) < 5 * stderr
    # The first prediction of a row sees one token: its loss is H(X_1 | X_0) under the stationary pairs.
    p_b_given_a = pi / pi.sum(-1, keepdim=True)
    first = -torch.log(p_b_given_a[rows[:, 0], rows[:, 1]])
    assert abs(first.mean().item() - tg.first_step_entropy(pi)) < 5 * first.std().item() / math.sqrt(len(first))


def test_rows_start_at_the_stationary_distribution(tg, source):
    P, pi = source
    V = P.shape[0]
    rows = tg.sample_rows(P, pi, 20000, 10, torch.Generator().manual_seed(3))
    for t in (0, 8):  # stationary start: the pair distribution is the same at every position
        counts = torch.bincount(rows[:, t] * V + rows[:, t + 1], minlength=V * V).double()
        expected = pi.flatten() * len(rows)
        seen = expected > 0
        assert counts[~seen].sum() == 0
        chi2 = (((counts - expected) ** 2)[seen] / expected[seen]).sum().item()
        dof = int(seen.sum()) - 1
        assert chi2 < dof + 6 * math.sqrt(2 * dof)  # ~4 sigma of a chi-square with dof degrees


# -----------------------------------------------------------------------------
# Real runs


def run_env(seed: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_")}
    env.update(
        SPEEDRUN_SEED=str(seed),
        SPEEDRUN_NUM_ITERATIONS=str(STEPS),
        SPEEDRUN_VAL_EVERY=str(VAL_EVERY),
        SPEEDRUN_VAL_TOKENS="4096",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four real runs started together, each in its own cwd (never the script's folder)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    plan = {
        "seed0": ([sys.executable, str(SCRIPT)], 0),
        "seed0_again": ([sys.executable, str(SCRIPT)], 0),
        "seed1": ([sys.executable, str(SCRIPT)], 1),
        "gloo2": (torchrun + [str(SCRIPT)], 0),
    }
    procs = {}
    for name, (cmd, seed) in plan.items():
        cwd = tmp_path_factory.mktemp(name)
        proc = subprocess.Popen(cmd, cwd=cwd, env=run_env(seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs[name] = (proc, cwd)
    out = {}
    for name, (proc, cwd) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
        out[name] = {"cwd": cwd, "stdout": stdout, "logs": sorted((cwd / "logs").glob("*.txt"))}
    return out


def log_text(run) -> str:
    assert len(run["logs"]) == 1, f"expected one log file, found {run['logs']}"
    return run["logs"][0].read_text(encoding="utf-8")


def val_losses(text: str) -> list[tuple[int, float]]:
    return [(int(m[1]), float(m[3])) for m in map(VAL_LINE.match, text.splitlines()) if m]


def test_log_starts_with_the_exact_source_and_header(runs):
    run = runs["seed0"]
    assert re.fullmatch(r"logs/[0-9a-f-]{36}\.txt", run["stdout"].splitlines()[0])
    text = log_text(run)
    source, sep1, rest = text.partition("\n" + SEPARATOR + "\n")
    assert sep1, "no separator line after the source"
    # print(code, file=f) adds one '\n': the text before the separator line, less that '\n' (which the
    # partition leaves out), is the file byte for byte.
    assert hashlib.sha256(source.encode("utf-8")).hexdigest() == hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    header, sep2, body = rest.partition("\n" + SEPARATOR + "\n")
    assert sep2, "no separator line after the header"
    lines = header.splitlines()
    assert lines[0] == f"Running Python {sys.version}"  # the run used this interpreter
    assert lines[1] == f"Running PyTorch {torch.__version__} compiled for CUDA {torch.version.cuda}"
    has_triton = importlib.util.find_spec("triton") is not None
    assert lines[2].startswith("Running Triton version ") == has_triton
    if shutil.which("nvidia-smi") is None:
        assert lines[-1] == "nvidia-smi is not available"
    assert body.strip(), "nothing after the header"


def test_step_lines_follow_the_protocol(runs):
    run = runs["seed0"]
    body = log_text(run).split(SEPARATOR + "\n")[-1]
    lines = body.rstrip("\n").splitlines()
    assert PEAK_LINE.match(lines[-1]), lines[-1]
    val_steps, train_steps = [], []
    for line in lines[:-1]:
        if m := VAL_LINE.match(line):
            val_steps.append(int(m[1]))
        elif m := TRAIN_LINE.match(line):
            train_steps.append(int(m[1]))
        else:
            assert line.startswith(INFO_PREFIXES), f"unexpected line: {line!r}"
        if m:
            assert int(m[2]) == STEPS
    assert val_steps == list(range(0, STEPS + 1, VAL_EVERY))
    assert train_steps == list(range(1, STEPS))  # the last step is reported by the final val line
    final = VAL_LINE.match(lines[-2])
    assert final and int(final[1]) == int(final[2]) == STEPS
    # Training time only grows, and step_avg is train_time over steps done.
    times = [int(m[3] if m.re is TRAIN_LINE else m[4]) for m in (VAL_LINE.match(x) or TRAIN_LINE.match(x) for x in lines[:-1]) if m]
    assert times == sorted(times) and times[-1] > 0
    assert float(final[5]) == pytest.approx(int(final[4]) / STEPS, abs=0.5 / STEPS + 0.01)
    # The harness follows progress on stdout: it carries the same step lines.
    step_lines = [x for x in lines if x.startswith("step:")]
    assert [x for x in run["stdout"].splitlines() if x.startswith("step:")] == step_lines


def test_loss_decreases_and_stays_above_the_floor(runs, tg, source):
    losses = [loss for _, loss in val_losses(log_text(runs["seed0"]))]
    assert losses[-1] < losses[0] - 0.3
    P, pi = source
    floor = re.search(r"the source itself scores (\d+\.\d{4}) on this val set", log_text(runs["seed0"]))
    # The val set is held out: no model beats the source's own probabilities on it, up to sampling luck.
    assert losses[-1] > float(floor[1]) - 0.02
    assert abs(float(floor[1]) - tg.window_loss_floor(P, pi, 64)) < 0.05  # 4096 predictions: close to the mean
    assert f"entropy rate {tg.entropy_rate(P, pi):.4f} nats/token" in log_text(runs["seed0"])


def test_same_seed_same_losses_other_seed_other_losses(runs):
    a = val_losses(log_text(runs["seed0"]))
    assert a == val_losses(log_text(runs["seed0_again"]))
    b = val_losses(log_text(runs["seed1"]))
    assert [s for s, _ in a] == [s for s, _ in b]
    assert a[0][1] != b[0][1] and a[-1][1] != b[-1][1]


def test_two_process_gloo_run_matches_one_process(runs):
    run = runs["gloo2"]
    text = log_text(run)  # only rank 0 writes a log
    assert "world_size:2" in text
    two, one = val_losses(text), val_losses(log_text(runs["seed0"]))
    assert [s for s, _ in two] == [s for s, _ in one]
    # Both ranks shard one global batch and all-reduce: the same math, up to summation order.
    for (_, l2), (_, l1) in zip(two, one):
        assert abs(l2 - l1) < 2e-3


# -----------------------------------------------------------------------------
# track.toml


def test_track_toml_matches_the_script(tg):
    track = load_track("tiny")
    assert track.name == "tiny" and track.script == SCRIPT.resolve()
    assert track.frozen_mismatches() == []
    assert "train_gpt.py" in track.frozen
    assert track.uses_gpu is False and track.nproc == 1
    assert track.final_step == tg.Hyperparameters.num_iterations
    P = tg.transition_table(tg.Source())
    pi = tg.stationary_pairs(P)
    assert track.target > tg.window_loss_floor(P, pi, tg.GPTConfig.seq_len)
