"""The record block: the four seed blocks are test cases, and a rendered block must print its own comments."""

import contextlib
import io
import re

import pytest

from conftest import SEEDS, run_cli
from harness.errors import HarnessError
from harness.record_block import block_numbers, parse_blocks, printed_matches, render_block

SEED_FILES = sorted(SEEDS.glob("*.txt"))


def seed_blocks():
    out = []
    for f in SEED_FILES:
        for i, b in enumerate(parse_blocks(f.read_text(), f.name)):
            out.append(pytest.param(b, id=f"{f.stem[:3]}-{i}"))
    return out


def test_seeds_hold_five_blocks_four_with_a_p_value():
    blocks = [p.values[0] for p in seed_blocks()]
    assert len(blocks) == 5  # seeds 000, 001 (two: the claim and the re-timed previous record), 002, 003
    assert sum(b.printed_p is not None for b in blocks) == 4
    assert {b.target for b in blocks if b.printed_p is not None} == {2.92, 3.28}


@pytest.mark.parametrize("block", seed_blocks())
def test_seed_block_numbers_recompute_exactly(block):
    assert printed_matches(block) == []
    nums = block_numbers(block.losses, block.times, block.target or 3.28)
    # The text the code prints, digit for digit.
    for name, value in (("loss_std", nums.loss_std), ("loss_mean", nums.loss_mean),
                        ("time_std", nums.time_std), ("time_mean", nums.time_mean)):
        printed = block.printed_text[name]
        fmt = f"{value:.{block.printed_digits[name]}{'e' if 'e' in printed else 'f'}}"
        assert fmt == printed
    if block.printed_p is not None:
        assert "%.4f" % nums.p == block.printed_text["p"]


def _exec_block(text: str) -> list[str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(text, {})
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("block", seed_blocks())
def test_rendered_block_prints_its_own_comments(block):
    text = render_block(block.losses, block.times, block.target or 3.28, with_p=block.printed_p is not None)
    printed = _exec_block(text)
    comments = [ln[2:] for ln in text.splitlines() if ln.startswith("# ")]
    assert printed == comments
    # And it parses back to the same lists, with nothing to complain about.
    (again,) = parse_blocks("```python\n" + text + "```\n")
    assert again.losses == block.losses and again.times == block.times
    assert printed_matches(again) == []


def test_seed_001_style_std_mean_names_is_accepted():
    text = (SEEDS / "001_d1252d14adedb31f.txt").read_text()
    first = parse_blocks(text)[0]
    assert first.printed_text["loss_std"] == "0.0012" and first.printed_text["time_mean"] == "97.7693"


def test_edited_printed_number_is_caught():
    text = (SEEDS / "003_3b3ea20d138c0d93.txt").read_text()
    edited = text.replace("# p=0.0004", "# p=0.0001").replace("tensor(128.8844)", "tensor(128.7844)")
    (b,) = parse_blocks(edited)
    problems = printed_matches(b)
    assert any("printed p 0.0001" in p for p in problems)
    assert any("time_mean 128.7844" in p and "128.8844" in p for p in problems)


def test_edited_loss_changes_recomputation():
    text = (SEEDS / "002_a8088c3731b09375.txt").read_text().replace("3.2795, 3.2789", "3.2695, 3.2789")
    (b,) = parse_blocks(text)
    assert any(p.startswith("printed loss_mean") or p.startswith("printed p") for p in printed_matches(b))


def test_render_block_rejects_unpaired_lists():
    with pytest.raises(HarnessError, match="pair up"):
        render_block([3.27, 3.28], [1.0], 3.28)


def test_render_block_uses_the_numbers_as_printed():
    # Values straight from logs carry float noise; the block must compute from what it shows.
    text = render_block([3.27750000001, 3.2781], [97.8250001, 97.777], 3.28)
    assert "losses = [3.2775, 3.2781]" in text and "times = [97.825, 97.777]" in text
    assert _exec_block(text) == [ln[2:] for ln in text.splitlines() if ln.startswith("# ")]


def test_single_run_block_prints_nan_not_a_crash():
    text = render_block([3.2775], [97.8], 3.28)
    assert "# p=nan" in text


def test_malformed_list_is_one_clear_error():
    with pytest.raises(HarnessError, match="not a number"):
        parse_blocks("```\nlosses = [3.27, oops]\ntimes = [1.0, 2.0]\n```\n", "x.md")


def test_stats_command_prints_the_block():
    r = run_cli("stats", "--target", "3.28", "--losses", "3.2767,3.2777,3.2795,3.2774,3.2799,3.2779,3.2777",
                "--times", "97.825,97.777,97.818,97.777,97.745,97.715,97.728")
    assert r.returncode == 0, r.stderr
    assert "# p=0.0025" in r.stdout
    assert re.search(r"# losses: \(tensor\(0\.0012\), tensor\(3\.2781\)\)", r.stdout)
    assert "tensor(97.7693)" in r.stdout


def test_stats_command_bad_input_is_one_line():
    r = run_cli("stats", "--target", "3.28", "--losses", "3.1,abc", "--times", "1,2")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- torch's printing reproduced without torch; the write-up forms -----------------------------------------

from harness.record_block import parse_writeup, printed_ok, std_mean  # noqa: E402


def _random_lists():
    import random

    rng = random.Random(7)
    out = [[3.0, 3.0], [98.0, 98.0, 98.0], [1.0], [2.9165, 2.9166]]
    for _ in range(400):
        base = rng.choice([3.28, 2.92, 97.8, 1041.0, 1e-5, 150.0])
        out.append([round(base + rng.gauss(0, rng.choice([1e-3, 0.1, 1.0])), rng.choice([3, 4, 6]))
                    for _ in range(rng.randint(1, 40))])
    return out


def test_std_mean_prints_exactly_as_torch_does():
    """The pure-Python float32 torch.std_mean and its printing against real torch: random lists, edge cases
    (one value, whole numbers, 1e-5 scale) and every list of the seed blocks."""
    torch = pytest.importorskip("torch")
    import warnings

    lists = _random_lists()
    for f in SEED_FILES:
        for b in parse_writeup(f.read_text(), f.name):
            lists += [x for x in (b.losses, b.times) if x]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for values in lists:
            assert std_mean(values)[2] == str(torch.std_mean(torch.tensor(values))), values


def test_a_printed_number_on_a_rounding_edge_is_accepted_either_way():
    # exact std 0.061850000001: torch 2.13 prints 0.0619, an older float32 summation printed 0.0618
    assert printed_ok("0.0619", 0.0619, 0.061850000001, 106.0)
    assert printed_ok("0.0618", 0.0619, 0.061850000001, 106.0)
    assert not printed_ok("0.0617", 0.0619, 0.061850000001, 106.0)
    assert not printed_ok("0.0618", 0.0619, 0.0619, 106.0)  # not on an edge: only the correct rounding


def test_writeup_forms_are_read():
    text = ("**Current WR:**\n\n```\n>>> accs = [3.2790, 3.2781]\n>>> print(torch.std_mean(torch.tensor(accs)))\n"
            "(tensor(0.0006), tensor(3.2785))\n```\n\n```\nBaseline:\n  losses = [3.2801, 3.2799]\n  times  = [90.1, 90.2]\n"
            "This PR:\n  losses = [3.2771,\n    3.2779]\n  times  = [88.1, 88.2]\n# p=0.0123 (significant)\n```\n\n"
            "| | n | mean val_loss | p(mean<3.28) |\n|---|---|---|---|\n| this PR | 2 | 3.2775 | 0.01 |\n\n"
            "val_loss: [3.2791,3.2778]\np-value: 0.006\ntimes: [87696ms,87967ms]\n")
    arms = parse_writeup(text, "README.md")
    assert [(a.kind, a.label) for a in arms] == [("block", None), ("block", "Baseline"), ("block", "This PR"),
                                                ("summary", "this PR"), ("text", None)]
    assert arms[0].printed_text == {"loss_std": "0.0006", "loss_mean": "3.2785"} and arms[0].context.endswith("Current WR:**")
    assert arms[2].losses == [3.2771, 3.2779] and arms[2].printed_text == {"p": "0.0123"}
    assert arms[3].n == 2 and arms[3].printed_text["p"] == "0.01" and arms[3].target == 3.28
    assert arms[4].times == [87.696, 87.967] and arms[4].printed_text["p"] == "0.006"


@pytest.mark.hostile
def test_malformed_and_non_finite_parts_are_returned_not_raised():
    arms = parse_writeup("```\nlosses = [3.27, oops]\n```\n```\nlosses = [nan, 3.28]\ntimes = [1, inf]\n```\n"
                         "```\nlosses = [3.27,\n", "x.md")
    assert "'oops'" in arms[0].malformed
    assert arms[1].nonfinite == ["nan", "inf"]
    assert "never closed" in arms[2].malformed
