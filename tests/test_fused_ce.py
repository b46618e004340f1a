"""The fused softcapped multi-token cross-entropy (tracks/short/fused_ce.py) against autograd on the plain formula
(its reference_loss, in float64): on CPU through Triton's interpreter (skipped where triton is not installed), and the
target layout in plain torch."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "tracks/short/fused_ce.py"
# The head of a child's test body: torch, and fused_ce.py as `m`
LOAD_FUSED_CE = textwrap.dedent(f'''
    import importlib.util, torch
    spec = importlib.util.spec_from_file_location("fused_ce", {str(MODULE)!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
''')


def _load():
    pytest.importorskip("triton")
    return load_module("short_fused_ce", MODULE)


def _run_ok(code: str, env: dict, timeout: int) -> None:
    """Run a test body in a child Python (the interpreter's TRITON_INTERPRET must be set before triton is
    imported), which prints "ok" at its end."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok"), out.stdout


def test_mtp_targets_shift_each_column_and_mark_the_rows_end():
    torch = pytest.importorskip("torch")
    m = _load()
    targets = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    out = m.mtp_targets(targets, 3).view(2, 4, 3)
    assert out[0].tolist() == [[5, 6, 7], [6, 7, 8], [7, 8, -1], [8, -1, -1]]
    assert out[1, :, 0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("impl", ["SoftcappedMTPCrossEntropy", "SoftcappedMTPCrossEntropyOnePass"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_matches_autograd_on_the_formula_under_the_interpreter(dtype, impl, triton_interpreter):
    code = LOAD_FUSED_CE + textwrap.dedent(f'''
        torch.manual_seed(0)
        B, T, V, K = 2, 5, 1000, 3          # V not a multiple of the block: the masked tail is exercised
        A, Bc, C = 23.0, 5.0, 7.5
        logits = (torch.randn(B * T, V) * 8).to(torch.{dtype})
        targets = torch.randint(0, V, (B, T))
        targets[0, 1:] = 7  # positions whose next-k targets are the same token: their weights add at one column
        weights = torch.tensor([1.0, 0.5, 0.25])
        tk = m.mtp_targets(targets, K)
        # the formula in float64 through autograd
        x = logits.double().requires_grad_(True)
        total, nxt = m.reference_loss(x, tk, weights, (A, Bc, C))
        (total * 3.0).backward()
        lg = logits.clone().requires_grad_(True)
        got_total, got_next = m.{impl}.apply(lg, tk, weights, (A, Bc, C), 256)
        (got_total * 3.0).backward()
        tol = 1e-5 if lg.dtype == torch.float32 else 1e-2
        assert abs(got_total.item() - total.item()) <= 1e-5 * abs(total.item()), (got_total.item(), total.item())
        assert abs(got_next.item() - nxt.item()) <= 1e-5 * abs(nxt.item())
        assert not got_next.requires_grad
        ref = x.grad
        err = (lg.grad.double() - ref).abs().max().item()
        assert err <= tol * ref.abs().max().item(), err
        # each target column gets its negative weight: the gradient is not just the softmax part
        assert (lg.grad.double() * ref).sum() > 0
        print("ok", got_total.item(), err)
    ''')
    _run_ok(code, triton_interpreter, timeout=300)


@pytest.mark.parametrize("kernel", ["one_pass", "two_pass"])
def test_track_model_loss_and_gradients_equal_with_the_fused_kernel(triton_interpreter, kernel):
    """train_gpt.py's fused path (cfg.use_fused_ce) against its plain path on the tiny model, under the interpreter:
    the same total and next-token loss and the same gradient on every parameter, with MTP weights on three targets
    (the row's last positions have fewer)."""
    code = textwrap.dedent(f'''
        import importlib.util, sys, torch
        spec = importlib.util.spec_from_file_location("tg", {str(REPO / "tracks/short/train_gpt.py")!r})
        tg = sys.modules["tg"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(tg)
        assert tg.fused_ce is not None
        torch.manual_seed(0)
        cfg = tg.tiny_model_config(); cfg.use_fp8_head = cfg.use_triton = False
        cfg.fused_ce_kernel = {kernel!r}
        model = tg.GPT(cfg, max_seq_len=256)
        with torch.no_grad():  # non-zero output projections: gradient reaches every layer
            for m in model.mlp: m.proj_w.normal_(0, 0.02)
        inp = torch.randint(0, 300, (1, 256)); inp[0, 0] = 50256
        tgt = torch.randint(0, 50304, (1, 256))
        masks = model.block_masks(inp, torch.tensor([1, 2]))
        w = torch.tensor([1.0, 0.5, 0.25])
        out = {{}}
        for fused in (False, True):
            model.zero_grad(set_to_none=True)
            cfg.use_fused_ce = fused
            total, nxt = model(inp, tgt, masks, w)
            (total * 0.5).backward()
            out[fused] = (total.item(), nxt.item(), {{n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.grad is not None}})
        (t0, n0, g0), (t1, n1, g1) = out[False], out[True]
        assert abs(t1 - t0) <= 1e-5 * abs(t0), (t0, t1)
        assert abs(n1 - n0) <= 1e-5 * abs(n0), (n0, n1)
        assert g0.keys() == g1.keys() and len(g0) > 10
        for name in g0:
            err = (g1[name] - g0[name]).abs().max().item()
            # the model's forward reads bf16 weights: a float32 rounding difference in the logits' gradient can move
            # a gradient by one bf16 step (seen: 0.0039 on embed_w's largest entry 2.74), not more
            assert err <= 1e-2 * g0[name].abs().max().item() + 1e-9, (name, err, g0[name].abs().max().item())
        print("ok", t0, t1)
    ''')
    _run_ok(code, triton_interpreter, timeout=600)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scaled_cast_writes_both_layouts_under_the_interpreter(dtype, triton_interpreter):
    """fused_ce.scaled_cast_both_layouts on ragged tiles (N, V not multiples of the tile): out is
    u * row_scale * factor in the output dtype, out_t its transpose, every element written (the outputs start as
    empty memory: a missed masked edge shows as garbage, an out-of-bounds store as a wrong neighbour). float16 for
    a narrowing store that the interpreter rounds as torch does (its bfloat16 rounding differs by an ulp)."""
    code = LOAD_FUSED_CE + textwrap.dedent(f'''
        torch.manual_seed(0)
        N, V = 37, 300
        u = torch.randn(N, V).bfloat16()
        row_scale = torch.rand(N) * 3
        factor = torch.tensor(2.5)
        out, out_t = m.scaled_cast_both_layouts(u, row_scale, factor, dtype=torch.{dtype}, bm=16, bn=64, num_warps=4)
        want = (u.float() * (row_scale * factor)[:, None]).to(torch.{dtype})
        assert out.shape == (N, V) and out_t.shape == (V, N) and out_t.is_contiguous()
        assert torch.equal(out, want), (out.float() - want.float()).abs().max()
        assert torch.equal(out_t, want.t())
        print("ok")
    ''')
    _run_ok(code, triton_interpreter, timeout=300)


def test_scaled_cast_saturates_e5m2_under_the_interpreter(triton_interpreter):
    """In e5m2 the cast clamps at the format's largest finite value (a plain cast would give inf, and inf in the
    head's FP8 matmuls would poison both gradients). Only the saturated entries and the signs are checked here:
    Triton 3.6's interpreter rounds float32 -> e5m2 with a dropped carry (7.72 becomes 4, not 8), which the GPU
    test compares bit for bit against torch's cast on the hardware."""
    code = LOAD_FUSED_CE + textwrap.dedent(f'''
        torch.manual_seed(0)
        N, V = 20, 70
        u = torch.randn(N, V).bfloat16()
        row_scale = torch.full((N,), 1.0); row_scale[:5] = 1e6   # rows 0-4 far past 57344
        out, out_t = m.scaled_cast_both_layouts(u, row_scale, torch.tensor(1.0), bm=16, bn=32, num_warps=4)
        assert out.dtype == torch.float8_e5m2 and out_t.dtype == torch.float8_e5m2
        got = out.float()
        big = (u.float() * row_scale[:, None]).abs() > 57344
        assert big[:5].float().mean() > 0.9
        assert torch.equal(got[big], 57344.0 * u.float()[big].sign())
        assert torch.isfinite(got).all() and torch.equal(got.sign(), u.float().sign())
        assert torch.equal(out_t.float(), got.t())
        print("ok")
    ''')
    _run_ok(code, triton_interpreter, timeout=300)


def test_fp8_head_mtp_loss_equals_the_head_then_the_loss_on_cpu(triton_interpreter):
    """train_gpt.py's FP8HeadMTPLoss (SPEEDRUN_FUSED_HEAD=1) against FP8Head followed by the one-pass loss, on CPU
    (torch._scaled_mm runs there; the kernels through the interpreter): the same two outputs bit for bit (the same
    forward), and grad_x and grad_w to within the e5m2 rounding of the two paths' gradients (the two Functions round
    the gradient to bf16 before the e5m2 cast, the one Function does not). The cast kernel's e5m2 store goes through
    float32 and torch's cast here (the interpreter's e5m2 rounding is off, see above): what is checked is which
    layout feeds which matmul, the row scale, grad_total and the FP8 gradient scale."""
    code = textwrap.dedent(f'''
        import importlib.util, sys, torch
        spec = importlib.util.spec_from_file_location("tg", {str(REPO / "tracks/short/train_gpt.py")!r})
        tg = sys.modules["tg"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(tg)
        fce = tg.fused_ce
        cast = fce.scaled_cast_both_layouts
        fce.scaled_cast_both_layouts = lambda u, s, f: tuple(
            t.clamp(-57344, 57344).to(torch.float8_e5m2) for t in cast(u, s, f, dtype=torch.float32))
        torch.manual_seed(0)
        N, D, V = 96, 64, 640
        x = (torch.randn(N, D) * 20).bfloat16()        # |x| well inside the head's fixed FP8 range (100)
        w = torch.randn(V, D) * 0.3
        targets = fce.mtp_targets(torch.randint(0, V, (2, N // 2)), 3)
        weights = torch.tensor([1.0, 0.5, 0.25])
        softcap = (23.0, 5.0, 7.5)
        grad_scale, upstream = 0.25, 3.0
        runs = {{}}
        for one in (False, True):
            xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            if one:
                total, nxt = tg.FP8HeadMTPLoss.apply(xi, wi, targets, weights, softcap, grad_scale)
            else:
                logits = tg.FP8Head.apply(xi, wi, grad_scale)
                total, nxt = fce.SoftcappedMTPCrossEntropyOnePass.apply(logits, targets, weights, softcap, 256)
            (total * grad_scale * upstream).backward()
            runs[one] = (total.item(), nxt.item(), xi.grad.float(), wi.grad.float())
        (t0, n0, gx0, gw0), (t1, n1, gx1, gw1) = runs[False], runs[True]
        assert t0 == t1 and n0 == n1, (t0, t1, n0, n1)
        assert gx1.dtype == torch.float32 and gw1.shape == (V, D)
        for a, b in ((gx1, gx0), (gw1, gw0)):
            rel = ((a - b).norm() / b.norm()).item()
            assert b.norm() > 0 and rel < 0.03, rel
        print("ok", t1, ((gx1 - gx0).norm() / gx0.norm()).item(), ((gw1 - gw0).norm() / gw0.norm()).item())
    ''')
    _run_ok(code, triton_interpreter, timeout=600)
