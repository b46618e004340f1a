"""The statistics block of a record write-up: render it, parse it back, and check its printed numbers.

The block is Python that contributors paste into their write-up (see the seeds). Its comments are what the
code prints, so we compute them by evaluating the very same expressions: scipy's one-sided one-sample t-test,
and `torch.std_mean` over a float32 tensor (unbiased std, float32 arithmetic). Anything else (float64 numpy,
a hand-written std) can differ in the last printed digit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from harness.errors import HarnessError


@dataclass
class BlockNumbers:
    p: float  # nan when fewer than 2 runs
    loss_std: float
    loss_mean: float
    time_std: float
    time_mean: float


def std_mean(values: list[float]) -> tuple[float, float, str]:
    import warnings

    import torch

    with warnings.catch_warnings():  # one run: torch warns and returns nan, which the block then prints
        warnings.simplefilter("ignore", UserWarning)
        result = torch.std_mean(torch.tensor(values))
    std, mean = result
    return float(std), float(mean), str(result)


def p_value(losses: list[float], target: float) -> float:
    import scipy.stats

    if len(losses) < 2:
        return math.nan
    return float(scipy.stats.ttest_1samp(losses, target, alternative="less").pvalue)


def block_numbers(losses: list[float], times: list[float], target: float) -> BlockNumbers:
    losses, times = _as_printed(losses, 4), _as_printed(times, 3)
    loss_std, loss_mean, _ = std_mean(losses)
    time_std, time_mean, _ = std_mean(times)
    return BlockNumbers(p_value(losses, target), loss_std, loss_mean, time_std, time_mean)


def _as_printed(values: list[float], decimals: int) -> list[float]:
    # The block computes from the numbers as written in it, so compute from exactly those.
    return [float(_fmt_number(v, decimals)) for v in values]


def _fmt_number(value: float, decimals: int) -> str:
    # repr of the rounded float: 3.2767, 128.95, 97.825 — the style of the seeds.
    return repr(round(float(value), decimals))


def _fmt_list(values: list[float], decimals: int) -> str:
    return "[" + ", ".join(_fmt_number(v, decimals) for v in values) + "]"


def render_block(losses: list[float], times: list[float], target: float, with_p: bool = True) -> str:
    """The block exactly as the seeds show it, comments computed by the block's own expressions.

    with_p=False gives the style used for a re-timed previous record (seed 001): no t-test line.
    """
    if len(losses) != len(times):
        raise HarnessError(f"{len(losses)} losses but {len(times)} times: they must pair up, one of each per run")
    if not losses:
        raise HarnessError("no runs: the block needs at least one loss and one time")
    losses, times = _as_printed(losses, 4), _as_printed(times, 3)
    _, _, loss_repr = std_mean(losses)
    _, _, time_repr = std_mean(times)
    lines = [
        "import scipy.stats",
        "import torch",
        "",
        f"losses = {_fmt_list(losses, 4)}",
        f"times = {_fmt_list(times, 3)}",
        "",
    ]
    if with_p:
        p = p_value(losses, target)
        lines += [
            f'print("p=%.4f" % scipy.stats.ttest_1samp(losses, {target!r}, alternative="less").pvalue)',
            "# p=%.4f" % p,
            "",
        ]
    lines += [
        'print("losses:", torch.std_mean(torch.tensor(losses)))',
        f"# losses: {loss_repr}",
        "",
        'print("time:", torch.std_mean(torch.tensor(times)))',
        f"# time: {time_repr}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Parsing blocks back out of a write-up


@dataclass
class ParsedBlock:
    text: str
    losses: list[float] | None
    times: list[float] | None
    target: float | None
    printed_p: float | None = None
    printed_loss_std: float | None = None
    printed_loss_mean: float | None = None
    printed_time_std: float | None = None
    printed_time_mean: float | None = None
    # The exact text of each printed number ('p', 'loss_std', ...), to recompute at the same precision.
    printed_text: dict[str, str] = field(default_factory=dict)
    printed_digits: dict[str, int] = field(default_factory=dict)
    line: int = 0  # 1-based line of the block's opening fence in the write-up


_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_LIST = r"\[([^\]]*)\]"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_PAIR = re.compile(
    rf"\(\s*(?:std=|tensor\()\s*(?P<std>{_NUM})\s*\)?\s*,\s*(?:mean=|tensor\()\s*(?P<mean>{_NUM})\s*\)?\s*\)"
)


def _parse_list(body: str, what: str, where: str) -> list[float]:
    items = [s.strip() for s in body.replace("\n", " ").split(",") if s.strip()]
    try:
        return [float(s) for s in items]
    except ValueError:
        raise HarnessError(f"{where}: the {what} list holds something that is not a number: [{body.strip()}]") from None


def _digits(num_text: str) -> int:
    mantissa = num_text.lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def parse_blocks(markdown_text: str, source: str = "write-up") -> list[ParsedBlock]:
    """Every fenced code block that assigns `losses = [...]` or `times = [...]`."""
    blocks = []
    for m in _FENCE.finditer(markdown_text):
        body = m.group(1)
        lm = re.search(r"^\s*losses\s*=\s*" + _LIST, body, re.M)
        tm = re.search(r"^\s*times\s*=\s*" + _LIST, body, re.M)
        if not lm and not tm:
            continue
        line = markdown_text.count("\n", 0, m.start()) + 1
        where = f"{source}, block at line {line}"
        b = ParsedBlock(
            text=body,
            losses=_parse_list(lm.group(1), "losses", where) if lm else None,
            times=_parse_list(tm.group(1), "times", where) if tm else None,
            target=None,
            line=line,
        )
        t = re.search(rf"ttest_1samp\(\s*losses\s*,\s*({_NUM})", body)
        if t:
            b.target = float(t.group(1))
        pm = re.search(rf"^\s*#\s*p\s*=\s*({_NUM})\s*$", body, re.M)
        if pm:
            b.printed_p, b.printed_text["p"] = float(pm.group(1)), pm.group(1)
        for key, label in (("loss", "losses"), ("time", "time")):
            cm = re.search(rf"^\s*#\s*{label}\s*:\s*(.*)$", body, re.M)
            if not cm:
                continue
            pair = _PAIR.search(cm.group(1))
            if not pair:
                raise HarnessError(f"{where}: cannot read the printed std/mean in '# {label}: {cm.group(1).strip()}'")
            for part in ("std", "mean"):
                name = f"{key}_{part}"
                setattr(b, f"printed_{name}", float(pair.group(part)))
                b.printed_text[name] = pair.group(part)
        b.printed_digits = {k: _digits(v) for k, v in b.printed_text.items()}
        blocks.append(b)
    return blocks


def format_like(value: float, printed: str) -> str:
    """Format `value` at the precision and in the notation of the printed text."""
    if math.isnan(value):
        return "nan"
    d = _digits(printed)
    if "e" in printed.lower():
        return f"{value:.{d}e}"
    return f"{value:.{d}f}"


def printed_matches(block: ParsedBlock) -> list[str]:
    """Mismatches between the block's printed comments and a recomputation from its own lists.

    Empty list: every printed number is what the code prints. A printed number is compared as text at its
    own precision and notation, so both torch print styles ('tensor(0.0012)' and 'std=0.0012') are accepted.
    """
    problems = []
    if block.losses is None or block.times is None:
        return ["the block lacks the losses or the times list"]
    if len(block.losses) != len(block.times):
        problems.append(f"{len(block.losses)} losses but {len(block.times)} times")
    loss_std, loss_mean, _ = std_mean(block.losses) if block.losses else (math.nan, math.nan, "")
    time_std, time_mean, _ = std_mean(block.times) if block.times else (math.nan, math.nan, "")
    actual = {"loss_std": loss_std, "loss_mean": loss_mean, "time_std": time_std, "time_mean": time_mean}
    if "p" in block.printed_text:
        if block.target is None:
            problems.append("a p-value is printed but the t-test line naming the target is missing")
        else:
            actual["p"] = p_value(block.losses, block.target)
    for name, printed in block.printed_text.items():
        if name not in actual:
            continue
        want = format_like(actual[name], printed)
        if not same_printed(want, printed):
            problems.append(f"printed {name} {printed} but the block's own lists give {want}")
    return problems


def same_printed(a: str, b: str) -> bool:
    try:
        return float(a) == float(b) or a.strip() == b.strip()
    except ValueError:
        return a.strip() == b.strip()
