"""harness/autotune.py: candidate checking, selection, keying, merging and the atomic rewrite of the configs
file. The selection logic is real; the benchmark is replaced by a function of the config (CPU has no GPU timer).
One test runs the short track's real Triton kernel through the interpreter when Triton is installed."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import autotune
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]

FAKE_KERNELS = '''
import torch
PROBLEMS = [{"name": "p1", "n": 8}, {"name": "p2", "n": 16}]
TOLERANCE = 1e-3
def key_of(p):
    return f"n{p['n']}"
def candidate_configs():
    return [{"BLOCK": b, "BLOCK_K": 32, "num_warps": w, "num_stages": 3} for b in (16, 32, 64) for w in (4, 8)]
def make_inputs(p, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p["n"], p["n"], generator=g),)
def reference(x):
    return x @ x.T
def launch(x, config):
    if config["BLOCK"] == 64 and config["num_warps"] == 8:
        raise RuntimeError("out of resources")   # a config the compiler refuses
    out = x @ x.T
    if config["BLOCK"] == 16 and config["num_warps"] == 4:
        out = out + 1.0                         # a wrong config: must never be chosen
    return out
'''


def make_track(tmp_path: Path, kernels_src=FAKE_KERNELS, configs=None) -> Path:
    folder = tmp_path / "trk"
    folder.mkdir()
    (folder / "track.toml").write_text(textwrap.dedent('''
        name = "trk"
        script = "train.py"
        nproc = 1
        target = 3.0
        [autotune]
        module = "kern.py"
        configs = "cfg.json"
    '''))
    (folder / "kern.py").write_text(kernels_src)
    if configs is not None:
        (folder / "cfg.json").write_text(json.dumps(configs))
    return folder


def fake_bench_factory(calls):
    # "time" = a function of the config captured in the closure: BLOCK 32 with 8 warps is fastest
    def bench(fn):
        cfg = fn.__closure__ and next((c.cell_contents for c in fn.__closure__
                                       if isinstance(c.cell_contents, dict) and "BLOCK" in c.cell_contents), None)
        calls.append(cfg)
        if cfg is None:
            return 5.0  # the reference
        return {16: 3.0, 32: 2.0, 64: 4.0}[cfg["BLOCK"]] - (0.5 if cfg["num_warps"] == 8 else 0.0)
    return bench


def test_selects_fastest_correct_and_skips_wrong_or_failing(tmp_path):
    folder = make_track(tmp_path)
    calls = []
    autotune.autotune_track(folder, bench=fake_bench_factory(calls), environment=("cpu", "GPU-A", "3.6.0"),
                            log=lambda s: None)
    table = json.loads((folder / "cfg.json").read_text())
    entry = table["configs"]["GPU-A"]["3.6.0"]
    assert set(entry) == {"n8", "n16"}
    for key in entry:
        assert {k: entry[key][k] for k in autotune.LAUNCH_KEYS} == {"BLOCK": 32, "BLOCK_K": 32, "num_warps": 8,
                                                                   "num_stages": 3}
        assert entry[key]["ms"] == 1.5 and entry[key]["reference_ms"] == 5.0
    benched = [c for c in calls if c is not None]
    assert {"BLOCK": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3} not in benched, "wrong one never timed"
    assert all(not (c["BLOCK"] == 64 and c["num_warps"] == 8) for c in benched)


def test_merge_keeps_other_gpus_and_versions(tmp_path):
    existing = {"format": 1, "configs": {
        "GPU-B": {"3.6.0": {"n8": {"BLOCK": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}}},
        "GPU-A": {"3.5.0": {"n8": {"BLOCK": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}},
                  "3.6.0": {"old": {"BLOCK": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}}}}}
    folder = make_track(tmp_path, configs=existing)
    autotune.autotune_track(folder, bench=fake_bench_factory([]), environment=("cpu", "GPU-A", "3.6.0"),
                            log=lambda s: None)
    table = json.loads((folder / "cfg.json").read_text())
    assert table["configs"]["GPU-B"] == existing["configs"]["GPU-B"]
    assert table["configs"]["GPU-A"]["3.5.0"] == existing["configs"]["GPU-A"]["3.5.0"]
    assert set(table["configs"]["GPU-A"]["3.6.0"]) == {"old", "n8", "n16"}  # same GPU+version: keys updated


def test_no_correct_candidate_is_an_error_and_file_untouched(tmp_path):
    broken = FAKE_KERNELS.replace("    return out\n", "    return out + 5.0\n")
    folder = make_track(tmp_path, kernels_src=broken, configs={"format": 1, "configs": {"X": {}}})
    before = (folder / "cfg.json").read_text()
    with pytest.raises(HarnessError, match="no candidate config is correct for n8"):
        autotune.autotune_track(folder, bench=fake_bench_factory([]), environment=("cpu", "G", "1"),
                                log=lambda s: None)
    assert (folder / "cfg.json").read_text() == before


def test_track_without_autotune_section_or_module(tmp_path):
    folder = make_track(tmp_path)
    (folder / "track.toml").write_text('name = "trk"\nscript = "t.py"\nnproc = 1\ntarget = 3.0\n')
    with pytest.raises(HarnessError, match=r"no \[autotune\]"):
        autotune.autotune_settings(folder)
    (folder / "track.toml").write_text('name = "trk"\nscript = "t.py"\nnproc = 1\ntarget = 3.0\n'
                                       '[autotune]\nmodule = "missing.py"\n')
    with pytest.raises(HarnessError, match="does not exist"):
        autotune.autotune_settings(folder)
    (folder / "track.toml").write_text('name = "trk"\nscript = "t.py"\nnproc = 1\ntarget = 3.0\n'
                                       '[autotune]\nmodule = "kern.py"\n')
    (folder / "kern.py").write_text("PROBLEMS = []\n")
    with pytest.raises(HarnessError, match="lacks 'key_of'"):
        autotune.load_kernel_module(folder / "kern.py")


def test_short_track_declares_its_kernel_module():
    module_path, configs_path = autotune.autotune_settings(REPO / "tracks" / "short")
    assert module_path.name == "kernels.py" and configs_path.name == "triton_configs.json"
    assert json.loads(configs_path.read_text())["format"] == 1


def test_short_kernels_frozen_config_lookup(tmp_path):
    """The track's own reader picks the entry of this GPU/Triton/shape and falls back (saying so) otherwise."""
    pytest.importorskip("triton")
    code = textwrap.dedent(f'''
        import importlib.util, json, sys
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("k", {str(REPO / "tracks/short/kernels.py")!r})
        k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)
        gpu, ver = k._environment_keys()
        p = Path({str(tmp_path / "c.json")!r})
        cfg = {{"BLOCK": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3, "ms": 0.1}}
        p.write_text(json.dumps({{"format": 1, "configs": {{gpu: {{ver: {{"b1_m8_k8_noc": cfg}}}}}}}}))
        print(k.lookup_config("b1_m8_k8_noc", p))
        assert k.FALLBACKS == []
        print(k.lookup_config("b2_m8_k8_noc", p))
        k.lookup_config("b2_m8_k8_noc", p)
        assert len(k.FALLBACKS) == 1  # noted once per key
        print(k.FALLBACKS[0])
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "{'BLOCK': 64, 'BLOCK_K': 32, 'num_warps': 4, 'num_stages': 3}"
    assert lines[1] == "{'BLOCK': 128, 'BLOCK_K': 64, 'num_warps': 8, 'num_stages': 4}"  # DEFAULT_CONFIG
    assert "no frozen config" in lines[2] and "b2_m8_k8_noc" in lines[2]


def test_real_kernel_through_triton_interpreter(tmp_path, triton_interpreter):
    """The short track's kernel module under TRITON_INTERPRET=1 on CPU: autotune over two small problems."""
    code = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from harness import autotune
        m = autotune.load_kernel_module(Path({str(REPO / "tracks/short/kernels.py")!r}))
        m.PROBLEMS = [{{"name": "a", "batch": 2, "M": 48, "K": 40, "has_c": False}},
                      {{"name": "b", "batch": 1, "M": 40, "K": 40, "has_c": True}}]
        m.candidate_configs = lambda: [{{"BLOCK": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}},
                                       {{"BLOCK": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}}]
        m.make_inputs.__defaults__ = ("cpu", __import__("torch").float32, 0)
        res = autotune.tune(m, "cpu", bench=lambda fn: 1.0, log=print)
        print(sorted(res))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=triton_interpreter)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['b1_m40_k40_c', 'b2_m48_k40_noc']" in out.stdout


def test_autotune_updates_the_frozen_hash_of_its_configs_file(tmp_path):
    """A maintainer re-running autotune gets track.toml's [frozen] hash of the configs file rewritten with it;
    other lines stay byte for byte. A track that does not freeze the file keeps its track.toml untouched."""
    from harness.fsio import sha256_file

    folder = make_track(tmp_path)
    toml = folder / "track.toml"
    toml.write_text(toml.read_text() + '\n[frozen]\n"train.py" = "aaaa"\n"cfg.json" = "old"  \n\n[pins]\ngpu = "x"\n')
    before = toml.read_text().splitlines()
    autotune.autotune_track(folder, bench=fake_bench_factory([]), environment=("cpu", "GPU-A", "3.6.0"),
                            log=lambda s: None)
    after = toml.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed == [('"cfg.json" = "old"  ', f'"cfg.json" = "{sha256_file(folder / "cfg.json")}"')]

    (tmp_path / "other").mkdir()
    plain = make_track(tmp_path / "other")
    text = (plain / "track.toml").read_text()
    autotune.autotune_track(plain, bench=fake_bench_factory([]), environment=("cpu", "GPU-A", "3.6.0"),
                            log=lambda s: None)
    assert (plain / "track.toml").read_text() == text
