# Memory probe of the medium track's s3 micro-step (16 rows x 4096, 1 target, untied head) on one GPU.
# Prints: memory before, after the forward (what the backward keeps), peak of fwd+bwd, and the live blocks at the
# peak grouped by the line that allocated them. Then the head + loss alone, float32 logits (ours) vs bf16 (record).
import importlib.util, os, sys, time, collections, pickle
import torch
import torch.nn.functional as F

T0 = time.time()
def say(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)

spec = importlib.util.spec_from_file_location("medium_train_gpt", os.environ.get("PROBE_SCRIPT", "tracks/medium/train_gpt.py"))
m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)
gpu = torch.cuda.is_available()
dev = torch.device("cuda" if gpu else "cpu")
MiB = 2 ** 20
tiny = not gpu
cfg = m.tiny_model_config() if tiny else m.ModelConfig()
cfg.use_triton = gpu
rows, T = (2, 128) if tiny else (16, 4096)
torch.manual_seed(0)
model = m.GPT(cfg, max_seq_len=T).to(dev)
model.split_embed()
stage = m.STAGES[3]
windows = torch.tensor(stage.windows, dtype=torch.int32, device=dev)
V = 50257
g = torch.Generator().manual_seed(0)
tok = torch.randint(0, V - 1, (rows, T + 1), generator=g)
tok[torch.rand(rows, T + 1, generator=g) < 1 / 400] = m.BOS_ID
tok[:, 0] = m.BOS_ID
inputs, targets = tok[:, :-1].contiguous().to(dev), tok[:, 1:].contiguous().to(dev)
w1 = torch.ones(1, device=dev)
compiled = torch.compile(model, dynamic=False) if gpu else model

def step():
    loss, _ = compiled(inputs, targets, model.block_masks(inputs, windows), w1)
    (loss / 8).backward()
    return loss

say("compile + first step")
step(); step()
if gpu: torch.cuda.synchronize()
say("warm")
if gpu:
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=500000, stacks="python")
    loss, _ = compiled(inputs, targets, model.block_masks(inputs, windows), w1)
    torch.cuda.synchronize(); after_fwd = torch.cuda.memory_allocated(); fwd_peak = torch.cuda.max_memory_allocated()
    (loss / 8).backward(); torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    say(f"base (params, grads, state) {base / MiB:.0f} MiB; after forward {after_fwd / MiB:.0f} MiB "
        f"(kept for backward {(after_fwd - base) / MiB:.0f}); forward peak {fwd_peak / MiB:.0f}; fwd+bwd peak {peak / MiB:.0f} MiB")
    out = os.environ.get("OUT", "/tmp")
    with open(f"{out}/snap.pickle", "wb") as f:
        pickle.dump(snap, f)
    # replay the trace: the live set at the highest point
    live, total, best, best_live, best_i = {}, 0, -1, None, -1
    events = snap["device_traces"][0]
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            live[e["addr"]] = e; total += e["size"]
            if total > best:
                best, best_live, best_i = total, dict(live), i
        elif e["action"] == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])["size"]
    say(f"trace: {len(events)} events; highest traced total {best / MiB:.0f} MiB above the untraced base, at event {best_i}")
    def where(e):
        fr = [f for f in e.get("frames", []) if "torch/" not in f["filename"] or "inductor" in f["filename"]]
        fr = fr or e.get("frames", [])
        return "; ".join(f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in fr[:2])
    groups = collections.defaultdict(lambda: [0, 0])
    for e in best_live.values():
        k = (e["size"], where(e)); groups[k][0] += 1; groups[k][1] += e["size"]
    for (size, w), (n, tot) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:40]:
        print(f"  {tot / MiB:9.0f} MiB = {n:3d} x {size / MiB:8.1f} MiB  {w}")
    del loss
model.zero_grad(set_to_none=True)
del compiled, model
if gpu: torch.cuda.empty_cache()

# the head and the loss alone at the s3 micro-batch
N, D = rows * T, cfg.model_dim
Vp = cfg.vocab_size
x = torch.randn(N, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
w = (torch.randn(Vp, D, device=dev) * 0.005).requires_grad_(True)
tg = targets.flatten() % Vp
def head_fp32(x, w, tg):
    z = F.linear(x, w.bfloat16()).float()
    z = 23 * torch.sigmoid((z + 5) / 7.5)
    return (z.logsumexp(-1) - z.gather(-1, tg[:, None]).squeeze(-1)).sum()
def head_bf16(x, w, tg):  # the record's training path: bf16 logits into cross_entropy
    z = F.linear(x, w.bfloat16())
    z = 23 * torch.sigmoid((z + 5) / 7.5)
    return F.cross_entropy(z, tg, reduction="sum")
for name, fn in () if os.environ.get("PROBE_SCRIPT") else (("fp32 logits (ours)", head_fp32), ("bf16 logits (record)", head_bf16)):
    c = torch.compile(fn, dynamic=False) if gpu else fn
    for _ in range(2):
        c(x, w, tg).backward()
    if gpu:
        torch.cuda.synchronize(); x.grad = None; w.grad = None
        torch.cuda.reset_peak_memory_stats(); b = torch.cuda.memory_allocated()
        l = c(x, w, tg); l.backward(); torch.cuda.synchronize()
        say(f"head {name}: peak {(torch.cuda.max_memory_allocated() - b) / MiB:.0f} MiB above inputs, loss {l.item():.1f}")
    else:
        say(f"head {name}: loss {c(x, w, tg).item():.1f}")
say("done")
