"""The short track's collectives on several GPUs through real torchrun + NCCL (skipped with fewer than 2 GPUs).

tests/test_short_cpu.py runs the same worker on gloo, which takes the other branch of every collective (gloo has
no AVG and no reduce_scatter_tensor); only here do NCCL's reduce-scatter, all-gather and AVG all-reduce run."""

import json

import pytest
import torch

from conftest import run_collective_worker

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0

pytestmark = pytest.mark.skipif(GPUS < 2, reason="needs 2 or more CUDA GPUs")


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    pytest.importorskip("triton")
    results = run_collective_worker(GPUS, tmp_path_factory.mktemp("multi_gpu"), "nccl")
    print(json.dumps(results, indent=1))
    return results


def test_every_rank_ran_on_nccl(rank_results):
    assert [r["rank"] for r in rank_results] == list(range(GPUS))
    assert all(r["backend"] == "nccl" and r["world_size"] == GPUS for r in rank_results)


@pytest.mark.parametrize("collective", ["reduce_scatter_mean", "all_gather_cat", "all_reduce_mean"])
def test_collective_matches_local_reference(rank_results, collective):
    # float32 means over the ranks: only the summation order may differ
    assert max(r[collective] for r in rank_results) < 1e-6


def test_muon_on_k_ranks_matches_one_rank_with_mean_gradient(rank_results):
    # a rank orthogonalizing the wrong slice gives differences the size of the update itself (~1); a bf16 rounding
    # flip from the AVG's order stays far below 1e-2 of it
    assert max(r["muon_vs_one_rank"] for r in rank_results) < 1e-2
    assert max(r["weights_differ_between_ranks"] for r in rank_results) == 0.0
