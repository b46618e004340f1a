"""CPU tests of the short track's training code: shard reading, the BOS-aligned loader, rank sharding,
the schedules at their boundaries, block masks, YaRN, mantissa split, Polar Express math.

The track is imported by path (it never imports the harness, and the harness never imports it)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_module, run_collective_worker
from harness.logs import parse_log

TRACK = Path(__file__).resolve().parents[1] / "tracks" / "short"


@pytest.fixture(scope="module")
def tg():
    return load_module("short_train_gpt_cpu", TRACK / "train_gpt.py")


def write_shard(path: Path, tokens, magic=20240520, version=1, count=None):
    header = np.zeros(256, dtype="<i4")
    header[:3] = [magic, version, len(tokens) if count is None else count]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def make_docs(rng, n_docs, min_len=5, max_len=400, vocab=50000):
    """Token stream of documents, each BOS followed by tokens != BOS; returns (tokens, doc start offsets).
    A small vocab makes the stream learnable (the unigram distribution) for the end-to-end runs."""
    out, starts = [], []
    for _ in range(n_docs):
        starts.append(len(out))
        n = int(rng.integers(min_len, max_len))
        out.append(50256)
        out.extend(rng.integers(0, vocab, n).tolist())
    return np.array(out), starts


def test_read_shard_checks_header_and_size(tg, tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, [50256, 1, 2, 3])
    assert tg.read_shard(good).tolist() == [50256, 1, 2, 3]
    bad_magic = tmp_path / "magic.bin"
    write_shard(bad_magic, [1, 2], magic=1234)
    with pytest.raises(ValueError, match="bad header"):
        tg.read_shard(bad_magic)
    short = tmp_path / "short.bin"
    write_shard(short, [1, 2, 3], count=10)
    with pytest.raises(ValueError, match="header says 10 tokens"):
        tg.read_shard(short)


def test_loader_rows_start_at_bos_and_targets_are_shifted(tg, tmp_path):
    rng = np.random.default_rng(0)
    tokens, starts = make_docs(rng, 300)
    write_shard(tmp_path / "fineweb_train_000001.bin", tokens)
    loader = tg.BosRowLoader([tmp_path / "fineweb_train_000001.bin"], seq_len=256)
    x, y = loader.next_batch(4)
    assert x.shape == (4, 256) and y.shape == (4, 256)
    assert (x[:, 0] == 50256).all(), "every row starts at a document start"
    assert torch.equal(x[:, 1:], y[:, :-1]), "targets are inputs shifted by one"
    # each row is a contiguous slice of the shard starting at a BOS, and rows never overlap
    offsets = []
    for row in x.numpy():
        hits = [s for s in starts if np.array_equal(tokens[s:s + 256], row)]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert all(b >= a + 256 for a, b in zip(offsets, offsets[1:]))
    # the next row starts at the first BOS at or after the previous row's end
    assert offsets[1] == min(s for s in starts if s >= offsets[0] + 256)


def test_loader_sharding_across_ranks_matches_one_rank(tg, tmp_path):
    rng = np.random.default_rng(1)
    tokens, _ = make_docs(rng, 600)
    f = tmp_path / "fineweb_train_000001.bin"
    write_shard(f, tokens)
    single = tg.BosRowLoader([f], 128, rank=0, world_size=1)
    ranks = [tg.BosRowLoader([f], 128, rank=r, world_size=4) for r in range(4)]
    for _ in range(3):
        whole, _ = single.next_batch(8)  # one micro-batch of 4 ranks x 2 rows == 8 rows of one rank
        parts = [ld.next_batch(2)[0] for ld in ranks]
        assert torch.equal(torch.cat(parts), whole)
        assert not torch.equal(parts[0], parts[1])


def test_loader_crosses_shards_and_cycles_or_stops(tg, tmp_path, capsys):
    rng = np.random.default_rng(2)
    files = []
    for i in (1, 2):
        tokens, _ = make_docs(rng, 12, 100, 200)
        files.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        write_shard(files[-1], tokens)
    first_row = tg.BosRowLoader(files, 64).next_batch(1)[0]
    finite = tg.BosRowLoader(files, 64, cycle=False)
    with pytest.raises(StopIteration):
        for _ in range(100):
            finite.next_batch(1)
    assert finite.file_index == 1  # it went through the second shard before stopping
    cycling = tg.BosRowLoader(files, 64, cycle=True)
    rows = [cycling.next_batch(1)[0] for _ in range(30)]
    assert cycling.epoch >= 1 and "starting epoch 2" in capsys.readouterr().out
    assert any(torch.equal(r, first_row) for r in rows[1:]), "after a wrap the first row comes again"


def test_find_shards_errors_clearly(tg, tmp_path):
    with pytest.raises(FileNotFoundError, match="DATA_PATH"):
        tg.find_shards(str(tmp_path), "train")
    # DATA_PATH is the folder holding data/fineweb10B/, as for the competition's scripts
    assert Path(tg.shard_folder(str(tmp_path))) == tmp_path / "data" / "fineweb10B"
    assert tg.read_hyperparameters({}).data_path == "."


def test_stage_schedule_boundaries(tg):
    hp = tg.Hyperparameters()
    assert hp.num_iterations + hp.extension_iterations == 1575
    n = hp.num_iterations
    names = [tg.stage_at(s, hp).name for s in (0, 511, 512, 1023, 1024, 1279, 1280, 1534, 1535, 1574)]
    # 1535/3 = 511.67: step 511 is still stage 0; 2/3 -> 1023.33; 5/6 -> 1279.17
    assert names == ["s0", "s0", "s1", "s1", "s2", "s2", "s3", "s3", "ext", "ext"]
    assert [tg.stage_at(s, hp).batch_tokens for s in (0, 512, 1024, 1535)] == [131072, 262144, 393216, 393216]
    assert [tg.stage_at(s, hp).windows for s in (0, 512, 1024, 1280, 1535)] == [(1, 3), (3, 7), (5, 11), (6, 13),
                                                                                  (6, 20)]
    # batch changes exactly where windows change (seed 003); MTP only early; embedding split at 2/3
    assert tg.stage_at(1023, hp).tied_head and not tg.stage_at(1024, hp).tied_head
    assert tg.stage_at(0, hp).mtp_weights[0] == 1.0 and len(tg.stage_at(0, hp).mtp_weights) == 3
    assert tg.stage_at(1024, hp).mtp_weights == (1.0,)
    for stage in tg.STAGES + (tg.EXTENSION,):  # every batch splits into whole 2048-token rows per micro-step
        assert stage.batch_tokens % (hp.total_accumulation * hp.train_seq_len) == 0
    assert n == 1535


def test_schedules_scale_with_num_iterations(tg):
    hp = tg.read_hyperparameters({"SPEEDRUN_NUM_ITERATIONS": "300", "SPEEDRUN_EXTENSION_ITERATIONS": "6"})
    assert hp.num_iterations == 300 and hp.extension_iterations == 6
    assert tg.stage_at(99, hp).name == "s0" and tg.stage_at(100, hp).name == "s1"
    assert tg.stage_at(200, hp).name == "s2" and tg.stage_at(300, hp).name == "ext"
    with pytest.raises(ValueError):
        tg.read_hyperparameters({"SPEEDRUN_VAL_EVERY": "0"})


def test_learning_rate_and_momentum_schedules(tg):
    hp = tg.Hyperparameters()
    n = hp.num_iterations
    assert tg.lr_multiplier(0, hp) == 1.0
    assert tg.lr_multiplier(math.floor(n * 0.5) - 1, hp) == 1.0
    assert tg.lr_multiplier(n, hp) == pytest.approx(hp.final_lr_frac)
    assert tg.lr_multiplier(n + 39, hp) == pytest.approx(hp.final_lr_frac)  # held during the extension
    mid = tg.lr_multiplier(round(n * 0.75), hp)
    assert mid == pytest.approx(0.55, abs=0.01)
    lrs = [tg.lr_multiplier(s, hp) for s in range(n + 40)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "never increases"
    assert tg.muon_momentum(0, hp) == pytest.approx(0.85)
    assert tg.muon_momentum(300, hp) == pytest.approx(0.95)
    assert tg.muon_momentum(150, hp) == pytest.approx(0.90)


def test_block_mask_matches_dense_mask(tg):
    from torch.nn.attention.flex_attention import create_block_mask
    inp = torch.randint(0, 50000, (2, 512))
    inp[:, 0] = 50256
    inp[0, 129] = 50256
    inp[1, 400] = 50256
    docs = tg.document_ids(inp)
    for paired in (False, True):
        for w in (1, 3):
            L = 1024 if paired else 512
            mine = tg.sliding_window_block_mask(docs, torch.tensor(w * 128), paired)

            def mm(b, h, q, k):
                qt, kt = (q // 2, k // 2) if paired else (q, k)
                return (kt <= qt) & (qt - kt < w * 128) & (docs[b, qt] == docs[b, kt])

            ref = create_block_mask(mm, 2, None, L, L, device="cpu")
            # same blocks visited, same blocks marked full (no mask evaluation)
            assert torch.equal(mine.to_dense() > 0, ref.to_dense() > 0), (paired, w)
            assert torch.equal(mine.full_kv_num_blocks, ref.full_kv_num_blocks), (paired, w)
            # and the element mask is the intended one
            q = torch.arange(L)
            assert torch.equal(mine.mask_mod(torch.tensor(0), 0, q[:, None], q[None, :]),
                               mm(torch.tensor(0), 0, q[:, None], q[None, :]))


def test_yarn_keeps_fast_and_stretches_slow_frequencies(tg):
    r = tg.Rotary(128, 512)
    before = r.freq.clone()
    r.apply_yarn(3, 7)
    s = 7 / 3
    assert torch.equal(r.freq[32:], before[32:]) and (r.freq[32:] == 0).all(), "stationary dims stay still"
    assert r.freq[0] == before[0], "fast dimensions keep their frequency"
    assert r.freq[31] == pytest.approx(before[31].item() / s), "slow dimensions are interpolated"
    assert r.mscale.item() == pytest.approx(0.1 * math.log(s) + 1)
    r.reset()
    assert torch.equal(r.freq, before) and r.mscale.item() == 1.0


def test_mantissa_split_is_exact(tg):
    x = torch.randn(1000) * torch.logspace(-8, 8, 1000)
    w, m = tg.split_float32(x)
    assert w.dtype == torch.bfloat16 and m.dtype == torch.int16
    assert torch.equal(tg.join_float32(w, m), x)
    assert ((w.float() - x).abs() <= x.abs() * 2 ** -7).all(), "bf16 part is the truncated value"


def test_polar_express_orthogonalizes_in_float(tg):
    g = torch.randn(2, 64, 256)
    x = tg.polar_express(g, use_triton=False).float()
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25


def test_model_forward_small_cpu(tg):
    torch.manual_seed(0)
    cfg = tg.ModelConfig(num_layers=4, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(2,),
                         long_window_layers=(3,), paired_head_layers=(0,), value_embed_layers=(0, 3),
                         bigram_buckets=1000, use_fp8_head=False, use_triton=False)
    model = tg.GPT(cfg, max_seq_len=256)
    inp = torch.randint(0, 50000, (2, 256))
    inp[:, 0] = 50256
    with torch.no_grad():
        masks = model.block_masks(inp, torch.tensor([1, 2]))
        loss, nxt = model(inp, torch.randint(0, 50000, (2, 256)), masks, (1.0, 0.5))
    assert nxt.item() == pytest.approx(math.log(50304), abs=0.1)
    assert loss.item() > nxt.item()  # MTP adds the weighted next-but-one loss
    assert model.attn[2] is None  # the MLP-only layer


def _tiny_run(tmp_path, data_dir, name, nproc):
    """Run the real script in SPEEDRUN_TINY mode on CPU (directly, or under torchrun with gloo)."""
    import os
    import subprocess

    run_dir = tmp_path / name
    run_dir.mkdir()
    env = dict(os.environ, SPEEDRUN_TINY="1", SPEEDRUN_NUM_ITERATIONS="4", SPEEDRUN_EXTENSION_ITERATIONS="1",
               SPEEDRUN_VAL_EVERY="2", SPEEDRUN_VAL_TOKENS="1024", DATA_PATH=str(data_dir.parents[1]), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, str(TRACK / "train_gpt.py")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + cmd[1:]
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = list((run_dir / "logs").glob("*.txt"))
    assert len(logs) == 1, "only rank 0 writes a log"
    return proc, logs[0]


def test_training_script_end_to_end_tiny_cpu(tmp_path):
    """The real script as a process in its SPEEDRUN_TINY smoke mode on CPU: warm-up of every stage, validation,
    the competition log protocol in stdout and logs/<uuid>.txt, a log the parser accepts; and the same run on
    2 processes (2 ranks x 1 accumulation step == 1 rank x 2 steps: sharded loader rows, Muon reduce-scatter and
    all-gather, Adam and validation all-reduce) gives the same validation losses."""
    import re

    rng = np.random.default_rng(6)
    data_dir = tmp_path / "data" / "fineweb10B"  # DATA_PATH=tmp_path: the competition's layout
    data_dir.mkdir(parents=True)
    write_shard(data_dir / "fineweb_train_000001.bin", make_docs(rng, 800, 20, 400, vocab=300)[0])
    write_shard(data_dir / "fineweb_val_000000.bin", make_docs(rng, 60, 20, 400, vocab=300)[0])
    proc, log_path = _tiny_run(tmp_path, data_dir, "one", 1)
    assert re.fullmatch(r"[0-9a-f-]{36}\.txt", log_path.name)
    text = log_path.read_text()
    assert proc.stdout == text, "stdout carries exactly the log file's lines"
    source = (TRACK / "train_gpt.py").read_text()
    assert text.startswith(source), "the log starts with the full source"
    rest = text[len(source):].splitlines()
    assert rest[1] == "=" * 100
    assert rest[2].startswith("Running Python ") and re.match(r"Running PyTorch \S+ compiled for CUDA ", rest[3])
    assert rest[4].startswith("Running Triton version ")
    lines = text.splitlines()
    step_lines = [ln for ln in lines if ln.startswith("step:")]
    assert step_lines[0].startswith("step:0/5 val_loss:") and step_lines[0].endswith("ms")
    assert re.fullmatch(r"step:1/5 train_time:\d+ms step_avg:[\d.]+ms", step_lines[1])
    assert re.fullmatch(r"step:5/5 val_loss:\d+\.\d{4} train_time:\d+ms step_avg:[\d.]+ms", step_lines[-1])
    assert re.fullmatch(r"peak memory allocated: \d+ MiB reserved: \d+ MiB", lines[-1])
    assert any(ln.startswith("compile_and_warmup_time:") for ln in lines)
    train_losses = [ln for ln in lines if ln.startswith("train_loss: ")]  # at the validations of steps 2, 4, 5
    assert [ln.split()[2] for ln in train_losses] == ["1-2", "3-4", "5-5"]
    assert all(math.isfinite(float(re.search(r"mean:(\S+)", ln).group(1))) for ln in train_losses)
    for stage in ("s0", "s1", "s2", "s3", "ext"):
        assert any(ln.startswith(f"warmup: stage {stage} ") for ln in lines)
    one = [float(re.search(r"val_loss:([\d.]+)", ln).group(1)) for ln in step_lines if "val_loss" in ln]
    assert len(one) == 4 and one[0] == pytest.approx(math.log(50304), abs=0.1)
    assert one[-1] < one[0] - 0.1, "training moves the validation loss"
    parsed = parse_log(text)
    assert parsed.reached_final and parsed.final_step == 5 and parsed.total_steps == 5
    assert parsed.final_val_loss == pytest.approx(one[-1])
    _, log2 = _tiny_run(tmp_path, data_dir, "two", 2)
    two = [float(v) for v in re.findall(r"^step:\d+/\d+ val_loss:([\d.]+)", log2.read_text(), re.M)]
    assert two == pytest.approx(one, abs=2e-3)


def test_track_toml_frozen_hashes_match_files():
    """A frozen file changes only together with its sha256 in track.toml (a new record)."""
    from harness.tracks import load_track

    track = load_track("short")
    assert set(track.frozen) == {"train_gpt.py", "kernels.py", "triton_configs.json"}
    assert track.frozen_mismatches() == []
    assert track.final_step == 1575 and track.nproc == 8 and track.target == 3.28


# ---------------------------------------------------------------------------------------------------------------
# Divergence on the first H100 proxy run (val_loss nan at step 30/64): the suspects checked on CPU, and the guard
# that stops a run whose training loss is not finite.


def _tiny_data(tmp_path):
    rng = np.random.default_rng(7)
    data_dir = tmp_path / "data" / "fineweb10B"  # DATA_PATH=tmp_path: the competition's layout
    data_dir.mkdir(parents=True)
    write_shard(data_dir / "fineweb_train_000001.bin", make_docs(rng, 400, 20, 400, vocab=300)[0])
    write_shard(data_dir / "fineweb_val_000000.bin", make_docs(rng, 30, 20, 400, vocab=300)[0])
    return data_dir


def _main_in_process(tg, monkeypatch, tmp_path):
    """The real main() in SPEEDRUN_TINY mode inside this process (so tests can wrap its pieces); returns the log."""
    if torch.cuda.is_available():
        pytest.skip("in-process tiny runs are CPU checks (on a GPU main() would compile the model)")
    data_dir = _tiny_data(tmp_path)
    env = dict(SPEEDRUN_TINY="1", SPEEDRUN_NUM_ITERATIONS="4", SPEEDRUN_EXTENSION_ITERATIONS="1",
               SPEEDRUN_VAL_EVERY="2", SPEEDRUN_VAL_TOKENS="512", DATA_PATH=str(data_dir.parents[1]))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    return run_dir


def _full_state(model):
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})  # incl. non-persistent
    return state


def _poison_training_weight(tg, monkeypatch, after_step):
    """Make one weight NaN in the training optimizer's step `after_step` (the first Muon ran the warm-up)."""
    real_step = tg.Muon.step
    calls = {}

    def poisoned_step(self, grads, lr_mult=1.0):
        real_step(self, grads, lr_mult)
        n = calls[id(self)] = calls.get(id(self), 0) + 1
        if len(calls) == 2 and n == after_step:
            self.params[0].data[0, 0] = float("nan")  # attn.0.qkv_w

    monkeypatch.setattr(tg.Muon, "step", poisoned_step)


@pytest.mark.slow
def test_warmup_restores_state_and_a_nonfinite_weight_stops_before_validation(tg, monkeypatch, tmp_path):
    """One real main() run (SPEEDRUN_TINY, in this process) checking two things.

    1. The warm-up runs one optimizer step of every stage graph (embed/head split, window changes) and a
    validation, then restores. At the second build_optimizers() call (the start of training) every parameter and
    every buffer (rotary tables, YaRN frequencies and temperature, which state_dict() leaves out) must equal its
    value at the first call bit for bit, the head must be tied again, the new optimizers fresh, and every stage
    graph must have given a finite loss.
    2. A weight that the optimizer step of step 2 makes NaN stops the run at the validation of step 2, before
    val_loss:nan is printed, with exit code 1 and the name of the weight."""
    run_dir = _main_in_process(tg, monkeypatch, tmp_path)
    real = tg.build_optimizers
    seen = {}

    def spy(model, hp, rank, world_size):
        muon, adam = real(model, hp, rank, world_size)
        if "before" not in seen:
            seen["before"], seen["tied"] = _full_state(model), model.tied
            return muon, adam
        after = _full_state(model)
        assert after.keys() == seen["before"].keys()
        for name, value in seen["before"].items():
            assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
        assert model.tied is True and seen["tied"] is True
        assert adam.state == {} and all((b == 0).all() for b in muon.buffers.values())
        assert all((m == 0).all() for m in muon.mantissa.values())
        seen["checked"] = True
        return muon, adam

    monkeypatch.setattr(tg, "build_optimizers", spy)
    _poison_training_weight(tg, monkeypatch, after_step=2)
    with pytest.raises(SystemExit) as stop:
        tg.main()
    assert seen.get("checked") and stop.value.code == 1
    lines = next((run_dir / "logs").glob("*.txt")).read_text().splitlines()
    warm = [ln for ln in lines if ln.startswith("warmup: stage ")]
    assert len(warm) == 5
    for ln in warm:  # every stage graph gives a finite loss at initialisation (~ln 50304, MTP adds more)
        loss = float(ln.rsplit("train loss ", 1)[1].rstrip(")"))
        assert math.isfinite(loss) and loss > 10, ln
    steps = [ln for ln in lines if ln.startswith("step:")]
    assert steps[-1].startswith("step:2/5 train_time:")
    assert [ln.split()[0] for ln in steps if "val_loss:" in ln] == ["step:0/5"], "no validation of NaN weights"
    assert any(ln.startswith("train_loss: steps 1-2 last:") and "nonfinite" not in ln for ln in lines)
    assert ("error: a weight or optimizer state is not finite after step 2 (the training loss was finite up to "
            "there); stopping the run before validation") in lines
    assert "nonfinite: parameters: attn.0.qkv_w" in lines, "only the poisoned weight, no step ran after it"


@pytest.mark.slow
def test_nonfinite_training_loss_stops_the_run_with_a_report(tg, monkeypatch, tmp_path):
    """From step 4 on the training forward returns a NaN loss (its gradient stays finite, so the weights do):
    the run stops at the next step with exit code 1, says from which step the loss is not finite, that no weight
    is, and probes one validation batch through the compiled and the eager model (finite here: the fault is in
    the training forward only), instead of going on to print val_loss:nan at the next validation. The training
    losses are printed at each validation on a line the log protocol ignores (`train_loss:`, not `step:`)."""
    run_dir = _main_in_process(tg, monkeypatch, tmp_path)
    real_step, real_forward = tg.Muon.step, tg.GPT.forward
    calls = {}

    def counting_step(self, grads, lr_mult=1.0):
        real_step(self, grads, lr_mult)
        calls[id(self)] = calls.get(id(self), 0) + 1

    def faulty_forward(self, *args):
        loss, next_loss = real_forward(self, *args)
        if len(calls) == 2 and list(calls.values())[1] >= 3 and torch.is_grad_enabled():  # training, step 4 on
            nan = torch.tensor(float("nan"))  # the value becomes NaN, the gradient is the real one
            loss, next_loss = loss + (nan - loss.detach()), next_loss + (nan - next_loss.detach())
        return loss, next_loss

    monkeypatch.setattr(tg.Muon, "step", counting_step)
    monkeypatch.setattr(tg.GPT, "forward", faulty_forward)
    with pytest.raises(SystemExit) as stop:
        tg.main()
    assert stop.value.code == 1
    lines = next((run_dir / "logs").glob("*.txt")).read_text().splitlines()
    steps = [ln for ln in lines if ln.startswith("step:")]
    assert steps[-1].startswith("step:4/5 train_time:"), "stopped right after the first non-finite step"
    vals = [ln for ln in steps if "val_loss:" in ln]
    assert [ln.split()[0] for ln in vals] == ["step:0/5", "step:2/5"] and "nan" not in vals[1]
    reports = [ln for ln in lines if ln.startswith("train_loss: ")]
    assert len(reports) == 2 and reports[0].startswith("train_loss: steps 1-2 last:")
    assert "first_nonfinite" not in reports[0]
    assert reports[1].startswith("train_loss: steps 3-4 ") and reports[1].endswith("first_nonfinite_step:4")
    assert "error: the training loss is not finite from step 4 on (checked at step 4); stopping the run" in lines
    before = next(ln for ln in lines if ln.startswith("nonfinite: training losses of the steps before step 4: "))
    assert len(before.rsplit(": ", 1)[1].split()) == 3
    assert all(math.isfinite(float(v)) for v in before.rsplit(": ", 1)[1].split())
    assert "nonfinite: parameters: none" in lines
    probe = next(ln for ln in lines if ln.startswith("nonfinite: forward probe, "))
    losses = dict(item.split(":") for item in probe.rsplit(": ", 1)[1].split())
    assert losses.keys() == {"compiled", "eager", "eager_bf16_head"}
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert len(set(losses.values())) == 1, "on CPU the three are the same float32 model"


def test_train_loss_line_format(tg):
    losses = torch.tensor([5.0, 4.0, 3.5, float("nan"), float("nan")])
    assert tg.train_loss_line(losses, 1, 3) == "train_loss: steps 1-3 last:3.5000 mean:4.1667"
    assert tg.train_loss_line(losses, 3, 5).endswith("first_nonfinite_step:4")
    assert not tg.train_loss_line(losses, 1, 1).startswith("step:")


def test_fp8_head_stays_finite_with_zero_weight_zero_grad_and_matches_float(tg):
    """Dynamic FP8 scales divide by an amax: a zero weight, input or gradient must not give inf/NaN, and the
    head must stay close to float32 with the init scale and with a trained-size weight."""
    try:
        torch._scaled_mm(torch.zeros(16, 16, dtype=torch.float8_e4m3fn),
                         torch.zeros(16, 16, dtype=torch.float8_e4m3fn).t(), scale_a=torch.tensor(1.0),
                         scale_b=torch.tensor(1.0), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        pytest.skip("torch._scaled_mm has no CPU kernel in this torch")
    torch.manual_seed(0)
    N, D, V = 256, 64, 512
    x = torch.nn.functional.rms_norm(torch.randn(N, D), (D,)).bfloat16()
    for w in (torch.zeros(V, D), torch.randn(V, D) * 0.005, torch.randn(V, D) * 0.3):
        for xin in (x, torch.zeros_like(x)):
            xin = xin.clone().requires_grad_()
            w = w.clone().requires_grad_()
            out = tg.FP8Head.apply(xin, w)
            for upstream in (torch.zeros_like(out), torch.randn_like(out) * 1e-6):
                gx, gw = torch.autograd.grad(out, (xin, w), upstream, retain_graph=True)
                assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
            if w.abs().max() > 0 and xin.abs().max() > 0:
                ref = xin.detach().float() @ w.detach().t()
                assert ((out.float() - ref).norm() / ref.norm()).item() < 0.06


def test_optimizers_stay_finite_with_zero_tiny_and_large_gradients(tg):
    """Muon (Polar Express on a zero / tiny / huge momentum, the mantissa split) and Adam (eps 1e-10 with zero and
    tiny gradients) never produce a non-finite weight; a zero gradient leaves every weight exactly as it was."""
    torch.manual_seed(0)
    cfg = tg.tiny_model_config()
    cfg.use_fp8_head = cfg.use_triton = False
    model = tg.GPT(cfg, max_seq_len=256)
    hp = tg.read_hyperparameters({})
    muon, adam = tg.build_optimizers(model, hp, 0, 1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    zero = {p: torch.zeros(p.shape) for p in model.parameters()}
    adam.step({p: zero[p] for g in adam.groups for p in g["params"]})
    muon.step(zero)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), start[n]), n
    for scale in (1e-30, 1e-3, 1e3, 1e30):
        grads = {p: torch.randn(p.shape) * scale for p in model.parameters()}
        adam.step({p: grads[p] for g in adam.groups for p in g["params"]})
        muon.step(grads)
        for n, p in model.named_parameters():
            assert torch.isfinite(p).all(), (scale, n)
    # Muon moves a matrix by lr * scale * (Polar Express output) per step, whatever the gradient's size: an entry
    # is at most the largest singular value (< 1.13, the composed polynomials' maximum on [0, 1]), scale <= 2 (fc)
    for p in muon.params:
        name = next(n for n, q in model.named_parameters() if q is p)
        assert (p.float() - start[name].float()).abs().max() < 4 * hp.muon_lr * 2 * 1.13, name


def test_bigram_hash_stays_in_range(tg):
    model = tg.GPT(tg.ModelConfig(num_layers=1, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(0,),
                                  long_window_layers=(), paired_head_layers=(), value_embed_layers=(),
                                  use_fp8_head=False, use_triton=False), max_seq_len=256)
    ids = torch.arange(50304).reshape(-1, 131)[:, :128]
    ids = torch.cat([ids, ids.flip(0)], dim=1)
    b = model.bigram_ids(ids)
    assert b.min() >= 0 and b.max() < 5 * 50304


def test_polar_express_polynomials_stay_bounded(tg):
    """After the 1.01 Frobenius normalisation every singular value is in [0, 1]; each of the five polynomials
    must keep it below 2 (a value past ~1.5 would blow up in the next one), and the result must land near 1 for
    singular values >= 1e-2 (the coefficients are for a 1e-3 lower end)."""
    x = torch.linspace(0, 1, 100001, dtype=torch.float64)
    y = x.clone()
    for a, b, c in tg.POLAR_EXPRESS_COEFFS:
        y = a * y + b * y ** 3 + c * y ** 5
        assert y.min() >= 0 and y.max() < 2
    assert y.max() < 1.13 and y[x >= 1e-2].min() > 0.85


def test_diagnostic_switches_parse_and_reject_other_values(tg):
    hp = tg.read_hyperparameters({})
    assert (hp.warmup, hp.compile, hp.fp8_head, hp.triton, hp.grad_stats) == (True, True, True, True, False)
    hp = tg.read_hyperparameters({"SPEEDRUN_WARMUP": "0", "SPEEDRUN_FP8_HEAD": "0", "SPEEDRUN_GRAD_STATS": "1"})
    assert (hp.warmup, hp.compile, hp.fp8_head, hp.triton, hp.grad_stats) == (False, True, False, True, True)
    with pytest.raises(ValueError, match="SPEEDRUN_TRITON must be 0 or 1"):
        tg.read_hyperparameters({"SPEEDRUN_TRITON": "off"})


def test_diagnostic_run_says_so_skips_warmup_and_logs_grad_stats(tg, monkeypatch, tmp_path):
    """SPEEDRUN_WARMUP=0 SPEEDRUN_GRAD_STATS=1: a `diagnostic:` line (which `speedrun verify` refuses for a
    claim), no warm-up lines, and one `grad_stats:` line per training step naming every parameter."""
    run_dir = _main_in_process(tg, monkeypatch, tmp_path)
    monkeypatch.setenv("SPEEDRUN_WARMUP", "0")
    monkeypatch.setenv("SPEEDRUN_GRAD_STATS", "1")
    tg.main()
    lines = next((run_dir / "logs").glob("*.txt")).read_text().splitlines()
    assert "diagnostic: warmup=0 grad_stats=1 (not the recipe of the track)" in lines
    assert not any(ln.startswith("warmup:") for ln in lines)
    stats = [ln for ln in lines if ln.startswith("grad_stats: ")]
    assert len(stats) == 5  # 4 scheduled + 1 extension step
    names = {item.split(":")[0] for item in stats[-1].split(" | ")[0].split()[1:]}
    assert {"lm_head", "embed", "value_embeds", "attn.0.qkv", "mlp.3.proj"} <= names  # untied by the end
    assert all(math.isfinite(float(item.rsplit(":", 1)[1])) for item in stats[-1].split()[1:]
               if ":" in item and item != "max|w|")


def test_collectives_and_muon_on_two_gloo_ranks_match_one_rank(tmp_path):
    """Real torchrun, 2 CPU processes: the gloo branch of reduce-scatter/all-gather/all-reduce, and Muon with each
    rank orthogonalizing its slice gives the weights of one rank fed the mean gradient (tests/gpu has the NCCL run)."""
    results = run_collective_worker(2, tmp_path, "gloo")
    assert [(r["rank"], r["backend"]) for r in results] == [(0, "gloo"), (1, "gloo")]
    for r in results:
        assert r["reduce_scatter_mean"] < 1e-6 and r["all_gather_cat"] == 0.0 and r["all_reduce_mean"] < 1e-6
        assert r["muon_vs_one_rank"] < 1e-6 and r["weights_differ_between_ranks"] == 0.0
        # 5 matrices of 128x128 (q, k, v, two more) over 2 ranks: 3 slices each, one padded
        assert r["muon_slices_per_rank"] == {"(128, 128)": 3, "(128, 512)": 2}


def test_frozen_triton_configs_cover_every_gpu_count(tg):
    """On K GPUs each rank orthogonalizes ceil(n/K) matrices of a shape, so the Triton kernel sees other batch
    sizes than on one GPU. Every shape the real model's Muon groups give on 1, 2, 4 and 8 GPUs must be a
    problem of the autotuner and have a frozen H100 config (else the run silently uses the default config)."""
    import json

    with torch.device("meta"):  # the real model's shapes without allocating its weights
        model = tg.GPT(tg.ModelConfig(), max_seq_len=2048)
    muon_params = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith(("attn.", "mlp."))]
    frozen = json.loads((TRACK / "triton_configs.json").read_text())["configs"]["NVIDIA H100 80GB HBM3"]["3.6.0"]
    problems = {tg.kernels.key_of(p) for p in tg.kernels.PROBLEMS}
    for world in (1, 2, 4, 8):
        muon = tg.Muon(muon_params, lr=0.02, rank=0, world_size=world, use_triton=False)
        needed = set()
        for (m, k), buf in muon.buffers.items():
            needed |= {tg.kernels.problem_key(buf.size(0), m, k, False), tg.kernels.problem_key(buf.size(0), m, m, True)}
        assert needed <= problems, (world, needed - problems)
        assert needed <= set(frozen), (world, needed - set(frozen))
    assert len(problems) == 16  # 2 shapes x 2 products x 4 GPU counts, no duplicate keys
