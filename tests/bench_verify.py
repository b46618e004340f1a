"""pytest-benchmark of verify (issue 14 item 6): one record folder (goal: under 1 s) and a folder of 1,000
logs (goal: under 10 s), built in the competition's format by tests/record_folders.py.

Run: pytest tests/bench_verify.py --benchmark-only   (pyproject collects bench_*.py with the tests)
"""

from __future__ import annotations

import random

import pytest

from harness.verify import verify_path
from record_folders import block, write_logs


def _folder(root, n: int):
    rng = random.Random(n)
    losses = [f"{3.2760 + rng.random() * 0.003:.4f}" for _ in range(n)]
    times = [f"{88.3 + rng.random() * 0.2:.3f}" for _ in range(n)]
    write_logs(root, losses, times)
    (root / "README.md").write_text("```\n" + block(losses, times) + "```\n")
    return root


@pytest.mark.parametrize("n", [10, 1000])
def test_bench_verify_folder(benchmark, tmp_path, n):
    root = _folder(tmp_path / f"rec{n}", n)
    report = benchmark.pedantic(verify_path, args=(root,), kwargs={"target": 3.28}, rounds=1 if n > 100 else 3)
    assert len(report.runs) == n
