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


def _pieces_of(x, starts):
    """Split a packed row at its BOS tokens: the start offsets into the row of each piece."""
    return [i for i, t in enumerate(x.tolist()) if t == 50256]


def test_loader_packs_bos_aligned_pieces_cut_at_max_piece(tg, tmp_path):
    """One packed row of exactly `tokens` inputs: whole documents from their BOS, each cut at max_piece tokens
    (a longer document's rest is skipped), consecutive documents, the last piece cut where the row is full;
    targets are the packed stream shifted by one (the record's BOS-aligned batches)."""
    rng = np.random.default_rng(0)
    tokens, starts = make_docs(rng, 300, 5, 400)
    f = tmp_path / "fineweb_train_000001.bin"
    write_shard(f, tokens)
    loader = tg.DocPackLoader([f], max_piece=128)
    x, y = loader.next_batch(1000)
    assert x.shape == (1, 1000) and y.shape == (1, 1000)
    assert x[0, 0] == 50256 and torch.equal(x[0, 1:], y[0, :-1])
    # expected by hand: documents in order, each min(length, 128) tokens, until 1001 tokens are taken
    expect, doc = [], 0
    while len(expect) < 1001:
        end = starts[doc + 1] if doc + 1 < len(starts) else len(tokens)
        expect.extend(tokens[starts[doc]:min(end, starts[doc] + 128)].tolist())
        doc += 1
    expect = expect[:1001]
    assert x[0].tolist() == expect[:-1] and y[0].tolist() == expect[1:]
    # the next micro-batch starts at the document after the one that was cut
    x2, _ = loader.next_batch(100)
    assert x2[0, :5].tolist() == tokens[starts[doc]:starts[doc] + 5].tolist()


def test_loader_sharding_across_ranks_matches_one_rank(tg, tmp_path):
    rng = np.random.default_rng(1)
    tokens, _ = make_docs(rng, 600)
    f = tmp_path / "fineweb_train_000001.bin"
    write_shard(f, tokens)
    single = tg.DocPackLoader([f], 128, rank=0, world_size=1)
    ranks = [tg.DocPackLoader([f], 128, rank=r, world_size=4) for r in range(4)]
    for _ in range(3):
        # one optimizer step: 4 consecutive micro-batches of one rank == one micro-batch on each of 4 ranks
        whole = [single.next_batch(256)[0] for _ in range(4)]
        parts = [ld.next_batch(256)[0] for ld in ranks]
        for a, b in zip(whole, parts):
            assert torch.equal(a, b)
        assert not torch.equal(parts[0], parts[1])


def test_loader_crosses_shards_and_cycles_or_stops(tg, tmp_path, capsys):
    rng = np.random.default_rng(2)
    files = []
    for i in (1, 2):
        tokens, _ = make_docs(rng, 12, 100, 200)
        files.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        write_shard(files[-1], tokens)
    first = tg.DocPackLoader(files, 64).next_batch(256)[0]
    finite = tg.DocPackLoader(files, 64, cycle=False)
    with pytest.raises(StopIteration):
        for _ in range(100):
            finite.next_batch(256)
    assert finite.file_index == 1  # it went through the second shard before stopping
    cycling = tg.DocPackLoader(files, 64, cycle=True)
    rows = [cycling.next_batch(256)[0] for _ in range(30)]
    assert cycling.epoch >= 1 and "starting epoch 2" in capsys.readouterr().out
    assert any(torch.equal(r, first) for r in rows[1:]), "after a wrap the first micro-batch comes again"


def test_validation_stream_is_contiguous_and_split_by_rank(tg, tmp_path):
    """Validation reads the stream as it is (no BOS alignment, nothing skipped), as the record does: micro-step
    j of rank r is chunk j * world + r; 1 rank x 2 micro-steps == 2 ranks x 1."""
    rng = np.random.default_rng(3)
    tokens, _ = make_docs(rng, 40)
    f = tmp_path / "fineweb_val_000000.bin"
    write_shard(f, tokens)
    one = tg.ValStream([f])
    x0, y0 = one.next_batch(300)
    x1, _ = one.next_batch(300)
    assert x0[0].tolist() == tokens[:300].tolist() and y0[0].tolist() == tokens[1:301].tolist()
    assert x1[0].tolist() == tokens[300:600].tolist()
    two = [tg.ValStream([f], rank=r, world_size=2).next_batch(300)[0] for r in (0, 1)]
    assert torch.equal(two[0], x0) and torch.equal(two[1], x1)
    with pytest.raises(StopIteration):
        for _ in range(len(tokens) // 300 + 1):
            one.next_batch(300)


def test_find_shards_errors_clearly(tg, tmp_path):
    with pytest.raises(FileNotFoundError, match="DATA_PATH"):
        tg.find_shards(str(tmp_path), "train")
    # DATA_PATH is the folder holding data/fineweb10B/, as for the competition's scripts
    assert Path(tg.shard_folder(str(tmp_path))) == tmp_path / "data" / "fineweb10B"
    assert tg.read_hyperparameters({}).data_path == "."


def test_stage_schedule_boundaries(tg):
    """The record's stages: thirds of the scheduled steps at round(n/3) and round(2n/3), then the extension
    (windows (6, 13)); the final validation widens the long window to 20 blocks."""
    hp = tg.Hyperparameters()
    assert hp.num_iterations + hp.extension_iterations == 1575
    names = [tg.stage_at(s, hp).name for s in (0, 511, 512, 1022, 1023, 1534, 1535, 1574, 1575)]
    # 1535/3 = 511.67 -> 512; 2/3 -> 1023.33 -> 1023
    assert names == ["s0", "s0", "s1", "s1", "s2", "s2", "ext", "ext", "ext"]
    assert [tg.stage_at(s, hp).batch_tokens for s in (0, 512, 1023, 1535)] == [131072, 262144, 393216, 393216]
    assert [tg.stage_at(s, hp).windows for s in (0, 512, 1023, 1535)] == [(1, 3), (3, 7), (5, 11), (6, 13)]
    assert tg.FINAL_VALIDATION_WINDOWS == (6, 20)
    assert tg.split_step(hp) == 1023 and tg.split_step(hp) % 2 == 1
    for stage in tg.STAGES + (tg.EXTENSION,):  # every micro-batch is a whole number of 128-token blocks
        assert stage.batch_tokens % (hp.total_accumulation * tg.BLOCK) == 0


def test_schedules_scale_with_num_iterations(tg):
    hp = tg.read_hyperparameters({"SPEEDRUN_NUM_ITERATIONS": "120", "SPEEDRUN_EXTENSION_ITERATIONS": "8"})
    assert hp.num_iterations == 120 and hp.extension_iterations == 8
    assert tg.stage_at(39, hp).name == "s0" and tg.stage_at(40, hp).name == "s1"
    assert tg.stage_at(79, hp).name == "s1" and tg.stage_at(80, hp).name == "s2"
    assert tg.stage_at(119, hp).name == "s2" and tg.stage_at(120, hp).name == "ext"
    assert tg.split_step(hp) == 81  # 80 | 1: an Adam step
    with pytest.raises(ValueError):
        tg.read_hyperparameters({"SPEEDRUN_VAL_EVERY": "0"})


def test_learning_rate_schedule_stage_multipliers_and_cooldown(tg):
    """lr = stage lr_mul (1, 1.52, 1.73), blended linearly to 0.1 from int(0.45 n) to n; 0.1 in the extension."""
    hp = tg.Hyperparameters()
    n = hp.num_iterations
    cd = int(n * 0.45)  # 690
    assert tg.lr_multiplier(0, hp) == 1.0 and tg.lr_multiplier(511, hp) == 1.0
    assert tg.lr_multiplier(512, hp) == pytest.approx(1.52)
    assert tg.lr_multiplier(cd - 1, hp) == pytest.approx(1.52)
    t = 1 / (n - cd)
    assert tg.lr_multiplier(cd + 1, hp) == pytest.approx(1.52 * (1 - t) + 0.1 * t)
    t = (1023 - cd) / (n - cd)
    assert tg.lr_multiplier(1023, hp) == pytest.approx(1.73 * (1 - t) + 0.1 * t)  # s2's multiple inside the blend
    assert tg.lr_multiplier(n, hp) == pytest.approx(0.1) and tg.lr_multiplier(n + 39, hp) == pytest.approx(0.1)
    assert tg.lr_multiplier(n - 1, hp) == pytest.approx(1.73 / (n - cd) + 0.1 * (n - cd - 1) / (n - cd))


def test_muon_momentum_warms_up_and_cools_down(tg):
    hp = tg.Hyperparameters()
    total = hp.num_iterations + hp.extension_iterations
    assert tg.muon_momentum(0, hp) == pytest.approx(0.85)
    assert tg.muon_momentum(150, hp) == pytest.approx(0.90)
    assert tg.muon_momentum(300, hp) == pytest.approx(0.95)
    assert tg.muon_momentum(total - 50, hp) == pytest.approx(0.95)  # cool-down starts after total - 50
    assert tg.muon_momentum(total - 25, hp) == pytest.approx(0.90)
    assert tg.muon_momentum(total, hp) == pytest.approx(0.85)
    short = tg.read_hyperparameters({"SPEEDRUN_NUM_ITERATIONS": "120", "SPEEDRUN_EXTENSION_ITERATIONS": "8"})
    # scaled: warm-up round(300 * 120 / 1535) = 23 steps, cool-down round(50 * 120 / 1535) = 4 steps
    assert tg.muon_momentum(23, short) == pytest.approx(0.95) and tg.muon_momentum(22, short) < 0.95
    assert tg.muon_momentum(124, short) == pytest.approx(0.95) and tg.muon_momentum(126, short) == pytest.approx(0.90)


def test_mtp_weights_decay_within_stages_and_adam_runs_on_odd_steps(tg):
    hp = tg.Hyperparameters()
    assert tg.mtp_weights(0, hp) == (1.0, 0.5, 0.25)
    assert tg.mtp_weights(256, hp) == pytest.approx((1.0, 0.5, 0.125))  # halfway through s0 (0..511)
    assert tg.mtp_weights(512, hp) == (1.0, 0.5)
    assert tg.mtp_weights(1022, hp) == pytest.approx((1.0, 0.5 / 511))
    assert tg.mtp_weights(1023, hp) == (1.0,) and tg.mtp_weights(1574, hp) == (1.0,)
    assert [tg.is_adam_step(s) for s in range(4)] == [False, True, False, True]


def test_block_mask_matches_dense_mask(tg):
    """Window of W positions inclusive (key q-W..q, FlashAttention's window_size=(W, 0)); paired: causality and
    the window count positions of the 2T sequence, documents are those of token p // 2."""
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
                return (k <= q) & (q - k <= w * 128) & (docs[b, qt] == docs[b, kt])

            ref = create_block_mask(mm, 2, None, L, L, device="cpu")
            # same blocks visited, same blocks marked full (no mask evaluation)
            assert torch.equal(mine.to_dense() > 0, ref.to_dense() > 0), (paired, w)
            assert torch.equal(mine.full_kv_num_blocks, ref.full_kv_num_blocks), (paired, w)
            # and the element mask is the intended one
            q = torch.arange(L)
            dense = mine.mask_mod(torch.tensor(0), 0, q[:, None], q[None, :])
            assert torch.equal(dense, mm(torch.tensor(0), 0, q[:, None], q[None, :]))
            one = mine.mask_mod(torch.tensor(1), 0, q[:, None], q[None, :])  # row 1: one document up to 400
            assert one[w * 128 + 5, 5] and not one[w * 128 + 6, 5], "inclusive window of W positions"
            if paired:  # the second head of token 3 sees the first; the first does not see the second
                assert one[7, 6] and not one[6, 7]


def test_yarn_keeps_fast_and_stretches_slow_frequencies(tg):
    r = tg.Rotary(128, 512)
    before = r.freq.clone()
    r.apply_yarn(3, 7)
    s = 7 / 3
    assert torch.equal(r.freq[32:], before[32:]) and (r.freq[32:] == 0).all(), "stationary dims stay still"
    assert r.freq[0] == before[0], "fast dimensions keep their frequency"
    assert r.freq[31] == pytest.approx(before[31].item() / s), "slow dimensions are interpolated"
    assert r.mscale.item() == pytest.approx(0.2 * math.log(s) + 1)
    r.reset()
    assert torch.equal(r.freq, before) and r.mscale.item() == 1.0


def test_paired_rotary_puts_head_h_of_token_t_at_position_2t_plus_h_mod_2(tg):
    r = tg.Rotary(32, 64)
    x = torch.randn(1, 10, 4, 32)
    got = r(x, paired=True)
    # rotate each (token, head) alone at its position through the unpaired path (a 1-token sequence at 0 is the
    # identity, so build the position by shifting a long sequence)
    for t in range(10):
        for h in range(4):
            pos = 2 * t + h % 2
            seq = torch.zeros(1, pos + 1, 1, 32)
            seq[0, pos, 0] = x[0, t, h]
            assert torch.allclose(got[0, t, h], r(seq)[0, pos, 0], atol=1e-6), (t, h)


def test_model_forward_small_cpu(tg):
    torch.manual_seed(0)
    cfg = tg.ModelConfig(num_layers=4, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(2,),
                         long_window_layers=(3,), paired_head_layers=(0,), value_embed_layers=(0, 3),
                         skip_from=1, skip_to=2, backout_layer=2, bigram_buckets=1000, use_fp8_head=False,
                         use_triton=False)
    model = tg.GPT(cfg, max_seq_len=256)
    inp = torch.randint(0, 50000, (2, 256))
    inp[:, 0] = 50256
    tgt = torch.randint(0, 50000, (2, 256))
    with torch.no_grad():
        masks = model.block_masks(inp, torch.tensor([1, 2]))
        total, nxt = model(inp, tgt, masks, torch.tensor([1.0, 0.5]))
        model.eval()
        val, val2 = model(inp, tgt, masks, torch.tensor([1.0]))
    assert nxt.item() == pytest.approx(math.log(50304), abs=0.1)
    # summed over tokens: 512 next-token losses + 0.5 x 510 next-but-one losses
    assert total.item() == pytest.approx(nxt.item() * (512 + 0.5 * 510), rel=0.02)
    assert val.item() == pytest.approx(nxt.item(), abs=1e-5) and val is val2  # eval: the plain mean
    assert model.attn[2] is None  # the MLP-only layer
    assert torch.equal(model.embed_w, model.lm_head_w)  # the embedding starts as the head


def _head_only_model(tg):
    """A GPT with only its config and a 40 x 16 head: enough for the losses."""
    cfg = tg.ModelConfig(model_dim=16, vocab_size=40, use_fp8_head=False, use_triton=False)
    model = tg.GPT.__new__(tg.GPT)
    torch.nn.Module.__init__(model)
    model.cfg = cfg
    model.lm_head_w = torch.nn.Parameter(torch.randn(40, 16))
    return model


def test_training_loss_keeps_every_intermediate_at_the_rows_full_length(tg):
    """On the H200 (torch 2.11) Inductor's mix-order reduction fusion asserted "16384 v.s. 16383" when the
    next-k-token losses were slices of T - k positions: no intermediate of the loss may be T - 1 or T - 2 long."""
    from torch.fx.experimental.proxy_tensor import make_fx
    model = _head_only_model(tg)
    B, T = 2, 11
    graph = make_fx(lambda x, t, w: model._training_loss(x, t, w))(
        torch.randn(B * T, 16), torch.randint(0, 40, (B, T)), torch.tensor([1.0, 0.5, 0.25]))
    shapes = [tuple(n.meta["val"].shape) for n in graph.graph.nodes
              if isinstance(n.meta.get("val"), torch.Tensor)]
    assert any(T in s for s in shapes)  # the trace saw the row
    short = [s for s in shapes if T - 1 in s or T - 2 in s]
    assert not short, f"intermediates shorter than the row: {short}"


def test_training_loss_is_the_weighted_sum_of_softcapped_cross_entropies(tg):
    torch.manual_seed(0)
    model = _head_only_model(tg)
    B, T = 2, 7
    x = torch.randn(B * T, 16)
    tgt = torch.randint(0, 40, (B, T))
    w = torch.tensor([1.0, 0.5, 0.25])
    total, nxt = model._training_loss(x, tgt, w)
    z = 23 * torch.sigmoid((x @ model.lm_head_w.t() + 5) / 7.5)
    z = z.view(B, T, 40)
    want = 0.0
    for k in range(3):
        ce = torch.nn.functional.cross_entropy(z[:, :T - k].reshape(-1, 40), tgt[:, k:].reshape(-1), reduction="sum")
        want = want + w[k] * ce
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    assert nxt.item() == pytest.approx(torch.nn.functional.cross_entropy(z.reshape(-1, 40), tgt.reshape(-1)).item(),
                                       rel=1e-5)
    ev = model._eval_loss(x, tgt.reshape(-1), chunk=5)  # chunked head: same mean
    assert ev.item() == pytest.approx(nxt.item(), rel=1e-5)


def test_gates_start_neutral_and_the_skip_and_backout_paths_carry_gradient(tg):
    """Zero-initialised gates: attention output x 1/2, value embeddings x 1, smear 0; the one skip (layer
    skip_from -> skip_to) and the backout both reach the loss (their scalars get gradient)."""
    torch.manual_seed(0)
    cfg = tg.tiny_model_config()
    cfg.use_fp8_head = cfg.use_triton = False
    model = tg.GPT(cfg, max_seq_len=256)
    with torch.no_grad():
        for m in model.mlp:
            m.proj_w.normal_(0, 0.02)
        for a in model.attn:
            if a is not None:
                a.o_w.normal_(0, 0.02)
    x = torch.randn(1, 5, cfg.model_dim)
    w = torch.zeros(3, cfg.gate_dims)
    assert torch.equal(tg.gate(x, w), torch.full((1, 5, 3), 0.5))
    inp = torch.randint(0, 300, (1, 256))
    inp[0, 0] = 50256
    total, _ = model(inp, torch.randint(0, 300, (1, 256)), model.block_masks(inp, torch.tensor([1, 2])),
                     torch.tensor([1.0]))
    total.backward()
    for p in (model.skip_lambda, model.backout_lambda, model.smear_lambda, model.x0_lambdas, model.attn_gates,
              model.skip_gate):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.smear_gate.grad.abs().sum() == 0  # smear_lambda = 0 at init: no gradient through its gate yet


def test_bigram_hash_matches_the_formula_and_stays_in_range(tg):
    model = tg.GPT(tg.ModelConfig(num_layers=1, model_dim=64, num_heads=2, head_dim=32, no_attention_layers=(0,),
                                  long_window_layers=(), paired_head_layers=(), value_embed_layers=(),
                                  skip_from=-1, skip_to=-1, backout_layer=0, use_fp8_head=False,
                                  use_triton=False), max_seq_len=256)
    ids = torch.arange(50304).reshape(-1, 131)[:, :128]
    ids = torch.cat([ids, ids.flip(0)], dim=1)
    b = model.bigram_ids(ids)
    mod = 5 * 50304 - 1
    assert b.min() >= 0 and b.max() < 5 * 50304 and (b[:, 0] == mod).all()
    assert b[3, 7].item() == ((36313 * ids[3, 7].item()) ^ (27191 * ids[3, 6].item())) % mod


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


def test_normuon_scale_matches_hand_formula(tg):
    """Per row (dim -1) or per column (dim -2): divide by sqrt(EMA of the mean square), then restore the
    matrix's Frobenius norm; the EMA buffer is updated in place."""
    torch.manual_seed(0)
    v = torch.randn(2, 4, 6)
    for dim, shape in ((-1, (2, 4, 1)), (-2, (2, 1, 6))):
        buf = torch.full(shape, 0.5)
        got = tg.normuon_scale(v.clone(), buf, 0.9, dim)
        for b in range(2):
            ms = v[b].square().mean(dim=dim, keepdim=True)
            ema = 0.5 * 0.9 + 0.1 * ms
            assert torch.allclose(buf[b], ema)
            scaled = v[b] / ema.sqrt()
            want = scaled * v[b].norm() / scaled.norm()
            assert torch.allclose(got[b], want, atol=1e-6)
        assert got.norm(dim=(-2, -1)).allclose(v.norm(dim=(-2, -1)))


def test_cautious_step_decays_only_where_the_update_agrees_in_sign(tg):
    w = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0])
    u = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.0])
    strict, loose = w.clone(), w.clone()
    tg.cautious_step(strict, u, lr=0.1, decay=0.2, strict=True)
    tg.cautious_step(loose, u, lr=0.1, decay=0.2, strict=False)
    same = torch.tensor([True, False, False, True, False])
    assert torch.allclose(strict, w - 0.1 * (u + 0.2 * w * same))
    same[4] = True  # a zero update counts as agreeing for NorMuon (>= 0), not for Adam (> 0)
    assert torch.allclose(loose, w - 0.1 * (u + 0.2 * w * same))


def _plain_normuon(grad, buf, second, momentum, beta2, wide_dim):
    buf.lerp_(grad, 1 - momentum)
    nest = grad.lerp(buf, momentum)
    tall = nest.shape[0] > nest.shape[1]
    o = tg_polar(nest.t() if tall else nest).float()
    o = o.t() if tall else o
    ms = o.square().mean(dim=wide_dim, keepdim=True)
    second.lerp_(ms, 1 - beta2)
    scaled = o / second.sqrt()
    return scaled * o.norm() / scaled.norm()


def tg_polar(x):
    return _TG.polar_express(x[None], use_triton=False)[0]


def test_muon_step_matches_plain_per_matrix_normuon(tg):
    """Muon.step (stacked by shape, q/k/v split, tall matrices transposed) against a plain per-matrix NorMuon:
    momentum + nesterov, Polar Express, variance reduction per row (square) or per hidden unit (the long side),
    lr * sqrt(long/short) * muon_lr_mul, cautious weight decay wd * lr * lr_matrix, float32 master."""
    global _TG
    _TG = tg
    torch.manual_seed(0)
    shapes = [(3 * 16, 16), (16, 16), (64, 16), (16, 64)]
    params = [torch.nn.Parameter((torch.randn(s) * 0.2).bfloat16()) for s in shapes]
    params[0].muon_parts = 3
    params[3].muon_lr_mul = 2.0
    muon = tg.Muon(params, lr=0.02, use_triton=False, weight_decay=1.2, beta2=0.9)
    masters = [p.detach().float().clone() for p in params]
    state = {}
    for step in range(3):
        grads = {p: torch.randn(p.shape) for p in params}
        muon.momentum = 0.9
        muon.step(grads, lr_mult=0.5)
        lr = 0.02 * 0.5
        for i, p in enumerate(params):
            blocks = list(grads[p].split(16)) if i == 0 else [grads[p]]
            upd = []
            for j, g in enumerate(blocks):
                rows, cols = g.shape
                dim = -1 if rows >= cols else -2  # per row of square/tall, per column of wide: the long side
                if (i, j) not in state:
                    state[i, j] = (torch.zeros_like(g), torch.zeros((rows, 1) if dim == -1 else (1, cols)))
                upd.append(_plain_normuon(g, *state[i, j], 0.9, 0.9, dim))
            u = torch.cat(upd)
            scale = {0: 1.0, 1: 1.0, 2: 2.0, 3: 4.0}[i]
            same = (u * masters[i]) >= 0
            masters[i] = masters[i] - lr * scale * (u + 1.2 * lr * masters[i] * same)
    for i, p in enumerate(params):
        joined = tg.join_float32(p.data, muon.mantissa[p])
        assert torch.allclose(joined, masters[i], rtol=0, atol=1e-3), (i, (joined - masters[i]).abs().max())


def test_adam_matches_hand_formula_with_cautious_decay_and_tied_head(tg):
    """Adam: bias-corrected step lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps), cautious decay lr^2*wd*w; tied:
    the embedding's gradient joins the head's, the embedding is set to the head; untie copies the state."""
    torch.manual_seed(0)
    head, embed, other = (torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3))
    embed.data.copy_(head.data)
    adam = tg.Adam([{"params": [head], "lr": 0.1, "betas": (0.5, 0.95), "wd": 2.0},
                    {"params": [embed], "lr": 0.1, "betas": (0.5, 0.95), "wd": 2.0},
                    {"params": [other], "lr": 0.3, "betas": (0.9, 0.99), "wd": 0.0}], eps=1e-10, head=head,
                   embed=embed)
    ref = {"w": head.detach().clone(), "m": torch.zeros(5, 3), "v": torch.zeros(5, 3)}
    ow, om, ov = other.detach().clone(), torch.zeros(5, 3), torch.zeros(5, 3)
    for t in (1, 2):
        gh, ge, go = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
        adam.step({head: gh, embed: ge, other: go}, lr_mult=0.5)
        g = gh + ge
        ref["m"] = 0.5 * ref["m"] + 0.5 * g
        ref["v"] = 0.95 * ref["v"] + 0.05 * g * g
        lr = 0.05
        u = ref["m"] / (ref["v"].sqrt() + 1e-10) * lr * (1 - 0.95 ** t) ** 0.5 / (1 - 0.5 ** t)
        ref["w"] = ref["w"] - u - (u * ref["w"] > 0) * lr * lr * 2.0 * ref["w"]
        om, ov = 0.9 * om + 0.1 * go, 0.99 * ov + 0.01 * go * go
        ow = ow - 0.15 * (1 - 0.99 ** t) ** 0.5 / (1 - 0.9 ** t) * om / (ov.sqrt() + 1e-10)
    assert torch.allclose(head.data, ref["w"], atol=1e-6) and torch.equal(embed.data, head.data)
    assert torch.allclose(other.data, ow, atol=1e-6)
    assert embed not in adam.state
    adam.untie()
    assert adam.state[embed]["step"] == 2 and torch.equal(adam.state[embed]["m"], adam.state[head]["m"])
    before = head.detach().clone()
    adam.step({head: torch.zeros(5, 3), embed: torch.randn(5, 3)})
    assert not torch.equal(embed.data, head.data) and torch.allclose(head.data, before, atol=0.2)


def test_build_optimizers_uses_the_record_table(tg):
    cfg = tg.tiny_model_config()
    cfg.use_fp8_head = cfg.use_triton = False
    model = tg.GPT(cfg, max_seq_len=256)
    muon, adam = tg.build_optimizers(model, tg.Hyperparameters(), 0, 1)
    by_param = {p: g for g in adam.groups for p in g["params"]}
    def of(p):
        g = by_param[p]
        return round(g["lr"], 6), g["betas"], round(g["wd"], 6)
    assert of(model.lm_head_w) == of(model.embed_w) == (0.008, (0.5, 0.95), 0.75)
    assert of(model.value_embeds) == of(model.bigram_embed) == (0.6, (0.75, 0.95), 0.025)
    assert of(model.resid_lambdas) == of(model.skip_lambda) == (0.04, (0.9, 0.99), 0.0)
    assert of(model.x0_lambdas) == (0.04, (0.65, 0.95), 0.0)
    assert of(model.attn_gates) == (0.008, (0.9, 0.99), 0.005)
    assert of(model.smear_gate) == (8e-05, (0.9, 0.99), 0.0) and of(model.skip_gate) == (0.0004, (0.9, 0.99), 0.0)
    assert adam.tied and muon.weight_decay == 1.2 and muon.beta2 == 0.95
    assert muon.lr_scale[model.mlp[0].fc_w] == 2.0 and muon.lr_scale[model.mlp[0].proj_w] == 4.0
    assert muon.lr_scale[model.attn[0].qkv_w] == 1.0 and muon.lr_scale[model.attn[0].o_w] == 1.0


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
    for stage in ("s0", "s1", "s2", "ext"):
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
    # every code file beside the script is loaded by it (kernels, fused cross-entropy, configs): all frozen
    code = {p.name for p in TRACK.iterdir() if p.suffix in (".py", ".json")}
    assert set(track.frozen) == code and {"train_gpt.py", "kernels.py", "fused_ce.py"} <= code
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
            seen["before"], seen["tied"] = _full_state(model), adam.tied
            return muon, adam
        after = _full_state(model)
        assert after.keys() == seen["before"].keys()
        for name, value in seen["before"].items():
            assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
        assert adam.tied is True and seen["tied"] is True
        assert adam.state == {} and all((b == 0).all() for b in muon.buffers.values())
        assert all((b == 0).all() for b in muon.second_moments.values())
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
    assert len(warm) == 4
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


def test_fp8_head_fixed_scales_stay_finite_saturate_and_match_float(tg):
    """Fixed FP8 scales (|x| <= 100, |w| <= 1.6, |grad| <= 0.75 x grad scale): zero inputs give zeros, values
    beyond the range saturate instead of turning into NaN, and in range the head and both gradients stay close to
    float32 (grad_w now from FP8 too, accumulated in float32)."""
    try:
        torch._scaled_mm(torch.zeros(16, 16, dtype=torch.float8_e4m3fn),
                         torch.zeros(16, 16, dtype=torch.float8_e4m3fn).t(), scale_a=torch.tensor(1.0),
                         scale_b=torch.tensor(1.0), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        pytest.skip("torch._scaled_mm has no CPU kernel in this torch")
    torch.manual_seed(0)
    N, D, V = 256, 64, 512
    x = torch.nn.functional.rms_norm(torch.randn(N, D), (D,)).bfloat16()
    for w in (torch.zeros(V, D), torch.randn(V, D) * 0.05, torch.randn(V, D) * 50):  # the last saturates
        for xin in (x, torch.zeros_like(x), x * 1000):
            xin = xin.clone().requires_grad_()
            w = w.clone().requires_grad_()
            out = tg.FP8Head.apply(xin, w, 0.25)
            for upstream in (torch.zeros_like(out), torch.randn_like(out) * 1e3):
                gx, gw = torch.autograd.grad(out, (xin, w), upstream, retain_graph=True)
                assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
            if 0 < w.abs().max() < 1.6 and 0 < xin.abs().max() < 100:
                ref = xin.detach().float() @ w.detach().t()
                assert ((out.float() - ref).norm() / ref.norm()).item() < 0.06
                g = torch.randn_like(out) * 0.05
                gx, gw = torch.autograd.grad(out, (xin, w), g, retain_graph=True)
                gx_ref, gw_ref = g.float() @ w.detach(), g.float().t() @ xin.detach().float()
                assert ((gx.float() - gx_ref).norm() / gx_ref.norm()).item() < 0.15
                assert ((gw - gw_ref).norm() / gw_ref.norm()).item() < 0.15
    # saturation: a weight beyond 1.6 acts as 1.6
    w = torch.full((V, D), 10.0)
    out = tg.FP8Head.apply(torch.ones(4, D).bfloat16(), w)
    assert torch.allclose(out.float(), torch.full((4, V), 1.6 * D), rtol=0.02)


def test_optimizers_stay_finite_with_zero_tiny_and_large_gradients(tg):
    """Muon (Polar Express on a zero / tiny / huge momentum, the mantissa split) and Adam (eps 1e-10 with zero and
    tiny gradients) never produce a non-finite weight. A zero gradient leaves every Adam weight as it was (no
    update, so no cautious decay) and decays each Muon matrix by exactly 1 - lr_matrix * wd * lr."""
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
    muon_names = {n for n, p in model.named_parameters() if p in muon.mantissa}
    for n, p in model.named_parameters():
        if n in muon_names:
            factor = 1 - hp.muon_lr * muon.lr_scale[p] * hp.muon_weight_decay * hp.muon_lr
            want = start[n].float() * factor
            got = tg.join_float32(p.data, muon.mantissa[p])
            assert torch.allclose(got, want, rtol=1e-6, atol=0), n
        else:
            assert torch.equal(p.detach(), start[n]), n
    for scale in (1e-30, 1e-3, 1e3, 1e30):
        grads = {p: torch.randn(p.shape) * scale for p in model.parameters()}
        adam.step({p: grads[p] for g in adam.groups for p in g["params"]})
        muon.step(grads)
        for n, p in model.named_parameters():
            assert torch.isfinite(p).all(), (scale, n)
    # NorMuon keeps each update's Frobenius norm that of the Polar Express output (singular values < 1.15), so a
    # matrix moves per step by at most lr * scale * (1.15 sqrt(min side) + wd * lr * |W|), whatever the gradient
    for p in muon.params:
        name = next(n for n, q in model.named_parameters() if q is p)
        rows, cols = p.shape[0] // getattr(p, "muon_parts", 1), p.shape[1]
        parts = getattr(p, "muon_parts", 1)
        bound = 5 * hp.muon_lr * muon.lr_scale[p] * (1.15 * (parts * min(rows, cols)) ** 0.5
                                                     + hp.muon_weight_decay * hp.muon_lr * start[name].float().norm())
        assert (p.float() - start[name].float()).norm() < bound, name


def test_polar_express_polynomials_stay_bounded(tg):
    """After the 1.02 Frobenius normalisation every singular value is in [0, 1/1.02]; each of the five
    polynomials must keep it below 2 (a value past ~1.5 would blow up in the next one), and the result must land
    near 1 for singular values >= 1e-3."""
    x = torch.linspace(0, 1, 100001, dtype=torch.float64) / tg.POLAR_EXPRESS_SAFETY
    y = x.clone()
    for a, b, c in tg.POLAR_EXPRESS_COEFFS:
        y = a * y + b * y ** 3 + c * y ** 5
        assert y.min() >= 0 and y.max() < 2
    assert y.max() < 1.15 and y[x * tg.POLAR_EXPRESS_SAFETY >= 1e-3].min() > 0.84


def test_diagnostic_switches_parse_and_reject_other_values(tg):
    hp = tg.read_hyperparameters({})
    assert (hp.warmup, hp.compile, hp.fp8_head, hp.triton, hp.fused_ce, hp.grad_stats) == (True,) * 5 + (False,)
    hp = tg.read_hyperparameters({"SPEEDRUN_WARMUP": "0", "SPEEDRUN_FP8_HEAD": "0", "SPEEDRUN_FUSED_CE": "0",
                                  "SPEEDRUN_GRAD_STATS": "1"})
    assert (hp.warmup, hp.compile, hp.fp8_head, hp.triton, hp.fused_ce, hp.grad_stats) == (
        False, True, False, True, False, True)
    with pytest.raises(ValueError, match="SPEEDRUN_TRITON must be 0 or 1"):
        tg.read_hyperparameters({"SPEEDRUN_TRITON": "off"})


def test_the_tracks_kernel_modules_import_by_their_own_name(tg):
    """Dynamo imports the module of an autograd.Function it traces by that module's name: fused_ce.py, loaded by path
    without a sys.modules entry, failed under torch.compile on the H200 ("No module named 'short_track_fused_ce'")."""
    import importlib
    modules = [tg.kernels] + ([tg.fused_ce] if tg.fused_ce is not None else [])
    for module in modules:
        assert importlib.import_module(module.__name__) is module
    if tg.fused_ce is not None:
        assert {k.__module__ for k in tg.fused_ce.KERNELS.values()} == {tg.fused_ce.__name__}


def test_fused_ce_kernel_is_chosen_by_name(tg):
    assert tg.read_hyperparameters({}).fused_ce_kernel == "one_pass"
    assert tg.read_hyperparameters({"SPEEDRUN_FUSED_CE_KERNEL": "two_pass"}).fused_ce_kernel == "two_pass"
    with pytest.raises(ValueError, match="SPEEDRUN_FUSED_CE_KERNEL must be one of one_pass, two_pass"):
        tg.read_hyperparameters({"SPEEDRUN_FUSED_CE_KERNEL": "fast"})
    if tg.fused_ce is not None:  # the names the track accepts are the kernels fused_ce.py has
        assert set(tg.FUSED_CE_KERNELS) == set(tg.fused_ce.KERNELS)


def test_fused_head_is_on_by_default_and_only_with_the_one_pass_kernel(tg):
    assert tg.read_hyperparameters({}).fused_head is True
    assert tg.read_hyperparameters({"SPEEDRUN_FUSED_HEAD": "0"}).fused_head is False
    # the two-pass diagnostic runs without the fused head, which is built on the one-pass kernel
    assert tg.read_hyperparameters({"SPEEDRUN_FUSED_CE_KERNEL": "two_pass"}).fused_head is False
    assert tg.read_hyperparameters({"SPEEDRUN_FUSED_CE_KERNEL": "two_pass", "SPEEDRUN_FUSED_HEAD": "0"}).fused_head is False
    with pytest.raises(ValueError, match="SPEEDRUN_FUSED_HEAD=1 runs the one-pass kernel"):
        tg.read_hyperparameters({"SPEEDRUN_FUSED_HEAD": "1", "SPEEDRUN_FUSED_CE_KERNEL": "two_pass"})
    with pytest.raises(ValueError, match="SPEEDRUN_FUSED_HEAD must be 0 or 1"):
        tg.read_hyperparameters({"SPEEDRUN_FUSED_HEAD": "yes"})


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


