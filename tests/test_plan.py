"""`speedrun plan`: fixed-N runs for a power, the sequential procedure's expected runs, --from CAMPAIGN."""

import math

import numpy as np
import pytest
import scipy.stats

from harness.cli import main
from harness.errors import HarnessError
from harness.fsio import write_json_atomic
from harness.commands.plan import cmd_plan
from harness.plan import campaign_estimates, make_plan

SEED_003 = [3.2788, 3.2774, 3.2786, 3.2792, 3.2762, 3.2769, 3.2781, 3.2778, 3.2761, 3.2783, 3.2809]


def _power(n: int, effect: float, alpha: float = 0.01) -> float:
    return float(scipy.stats.nct.cdf(scipy.stats.t.ppf(alpha, n - 1), n - 1, effect * math.sqrt(n)))


@pytest.mark.parametrize("sigma,mean,power", [(0.0012, 3.2787, 0.9), (0.0014, 3.2780, 0.8), (0.0013, 3.2790, 0.9)])
def test_fixed_n_is_the_smallest_with_the_power(sigma, mean, power):
    p = make_plan(3.28, sigma, mean, power=power, sims=2000)
    effect = (mean - 3.28) / sigma
    assert p.effect == pytest.approx(effect)
    assert _power(p.fixed_runs, effect) >= power > _power(p.fixed_runs - 1, effect)
    assert p.max_runs == max(20, 2 * p.fixed_runs)
    # Within twice the fixed-N budget the sequential procedure has at least the asked power.
    assert p.seq_power >= power - 0.03
    assert 3 <= p.seq_mean_runs < p.max_runs


def test_plan_from_campaign(tmp_path, capsys):
    d = tmp_path / "c"
    runs = [{"index": k, "arm": "main", "status": "ok", "final_val_loss": v, "train_time_s": 128.9}
            for k, v in enumerate(SEED_003)]
    runs.append({"index": len(runs), "arm": "main", "status": "failed", "final_val_loss": None})
    for r in runs:
        write_json_atomic(d / "runs" / str(r["index"]) / "run.json", r)
    write_json_atomic(d / "campaign.json", {"id": "c", "track": {"name": "short", "target": 3.28, "alpha": 0.01},
                                            "arms": {"main": {}}, "schedule": ["main"] * len(runs)})
    target, sigma, mean, n = campaign_estimates(d)
    assert (target, n) == (3.28, 11)
    assert sigma == pytest.approx(np.std(SEED_003, ddof=1)) and mean == pytest.approx(np.mean(SEED_003))
    assert cmd_plan(from_campaign=str(d)) == 0
    out = capsys.readouterr().out
    want = make_plan(3.28, sigma, mean, power=0.9)
    assert f"{want.fixed_runs} runs for 90% power" in out
    assert f"{want.seq_mean_runs:.1f} runs expected" in out
    assert "from " in out and "11 finished runs" in out


def test_plan_cli_and_bad_input(tmp_path, capsys):
    assert main(["plan", "--target", "3.28", "--sigma", "0.0013", "--mean", "3.2785"]) == 0
    assert "runs for 90% power" in capsys.readouterr().out
    for argv in (["plan", "--target", "3.28", "--sigma", "0.0013", "--mean", "3.2805"],  # not below target
                 ["plan", "--target", "3.28", "--sigma", "0", "--mean", "3.2785"],
                 ["plan", "--target", "3.28", "--sigma", "0.0013", "--mean", "3.2785", "--power", "1.5"],
                 ["plan", "--sigma", "0.0013"],
                 ["plan", "--from", str(tmp_path / "nope")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(HarnessError, match="at least 2 finished runs"):
        d = tmp_path / "one"
        write_json_atomic(d / "runs" / "0" / "run.json", {"index": 0, "arm": "main", "status": "ok",
                                                          "final_val_loss": 3.279, "train_time_s": 1.0})
        write_json_atomic(d / "campaign.json", {"id": "one", "track": {"name": "x", "target": 3.28},
                                                "arms": {"main": {}}, "schedule": ["main"]})
        campaign_estimates(d)
