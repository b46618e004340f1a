"""The record rule and the run budgets, set once: every default alpha and run count of the harness is read here.

The competition's record rule is a one-sided t-test of the final val losses against the track's target at
alpha 0.01 (docs/DESIGN.md "Record rules"); a track may set its own alpha in track.toml.
"""

ALPHA = 0.01  # the record rule's significance level (and the default of --alpha and of a track's alpha)
CONFIDENCE = 1 - ALPHA  # the confidence of compare's intervals: 99%, matching the record rule

DEFAULT_RUNS = 5  # `speedrun run` without --runs
DEFAULT_COMPARE_RUNS = 6  # `speedrun compare` runs per arm without --runs
DEFAULT_MAX_RUNS = 20  # the run budget of --until-significant without --max-runs (and the least for compare)
