"""One rank of the multi-rank collective checks, started through torchrun by tests/gpu/test_multi_gpu.py (NCCL,
one GPU a rank) and by tests/test_short_cpu.py (gloo on CPU processes, WORKER_BACKEND=gloo).

Each rank builds every rank's inputs from per-rank seeds, so it can compute on its own what the collectives
should give, and writes what it found to OUT_DIR/rank<r>.json. The checks:
  - reduce_scatter_mean: this rank's slice of the mean over ranks (NCCL reduce-scatter with AVG);
  - all_gather_cat: every rank's slice, in rank order;
  - all_reduce_mean: the mean over ranks;
  - Muon over K ranks (each orthogonalizes its slice of every shape group) against Muon on one rank fed the
    mean gradient: same weights after three steps, and the same weights on every rank.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from conftest import load_module  # noqa: E402

tg = load_module("short_train_gpt", REPO / "tracks" / "short" / "train_gpt.py")

SHAPES = [(3 * 128, 128), (128, 128), (128, 128), (512, 128), (128, 512), (128, 512), (128, 512)]


def rank_tensor(seed: int, shape, device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g).to(device)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def main():
    out_dir = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    on_gpu = torch.cuda.is_available() and os.environ.get("WORKER_BACKEND", "nccl") == "nccl"
    if on_gpu:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:  # the gloo branch of every collective, on CPU processes
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    result = {"rank": rank, "world_size": world, "backend": dist.get_backend(),
              "device": torch.cuda.get_device_name(device) if on_gpu else "cpu"}

    # reduce-scatter of a stack whose first dim is world * 3
    stacks = [rank_tensor(100 + r, (world * 3, 64, 96), device) for r in range(world)]
    local = tg.reduce_scatter_mean(stacks[rank].clone(), rank, world)
    expect = torch.stack(stacks).mean(0)[rank * 3:(rank + 1) * 3]
    result["reduce_scatter_mean"] = max_rel(local, expect)

    parts = [rank_tensor(200 + r, (2, 32, 48), device) for r in range(world)]
    result["all_gather_cat"] = max_rel(tg.all_gather_cat(parts[rank], world), torch.cat(parts))

    vecs = [rank_tensor(300 + r, (1000,), device) for r in range(world)]
    mine = vecs[rank].clone()
    tg.all_reduce_mean(mine)
    result["all_reduce_mean"] = max_rel(mine, torch.stack(vecs).mean(0))

    # Muon: K ranks with their own gradients vs one rank with the mean gradient
    def make_params():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter((torch.randn(s, device=device) * 0.02).bfloat16()) for s in SHAPES]
        ps[0].muon_parts = 3
        return ps

    dist_params, solo_params = make_params(), make_params()
    muon_dist = tg.Muon(dist_params, lr=0.02, rank=rank, world_size=world, use_triton=on_gpu)
    muon_solo = tg.Muon(solo_params, lr=0.02, rank=0, world_size=1, use_triton=on_gpu)
    for step in range(3):
        per_rank = [[rank_tensor(1000 * step + 10 * r + i, s, device) for i, s in enumerate(SHAPES)]
                    for r in range(world)]
        muon_dist.step({p: g for p, g in zip(dist_params, per_rank[rank])}, lr_mult=0.5)
        mean = [torch.stack([per_rank[r][i] for r in range(world)]).mean(0) for i in range(len(SHAPES))]
        muon_solo.step({p: g for p, g in zip(solo_params, mean)}, lr_mult=0.5)

    def masters(ps, muon):
        return [tg.join_float32(p.data, muon.mantissa[p]) for p in ps]

    # differences relative to how far the weights moved (the updates), not to the weights
    initial = [p.detach().float() for p in make_params()]
    result["muon_vs_one_rank"] = max(
        ((d - s).abs().max() / (s - w0).abs().max()).item()
        for d, s, w0 in zip(masters(dist_params, muon_dist), masters(solo_params, muon_solo), initial))
    # the weights every rank holds after the steps must be identical (each applies every rank's update)
    flat = torch.cat([m.flatten() for m in masters(dist_params, muon_dist)])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    result["weights_differ_between_ranks"] = max((g - gathered[0]).abs().max().item() for g in gathered)
    result["muon_slices_per_rank"] = {str(k): v.size(0) for k, v in muon_dist.buffers.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
