"""Record code (issue 13): the code embedded in record logs as files (every layout), a record log or folder
accepted wherever a script is, the log's environment as pins and the pre-flight that stops on another
PyTorch, `env --for`, and `prefetch` into an offline cache that a campaign then runs against.

The logs here are built in the competition's exact formats (docs/DESIGN.md "The log protocol") from content of
our own; tests/fixtures/record_code/ holds a record-style script that downloads a hub kernel and tiktoken's
GPT-2 BPE at start-up."""

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, run_cli
from harness.campaign import Arm, make_arm
from harness.errors import HarnessError
from harness.extract import code_from_log, load_record_code, split_source, write_code
from harness.logs import parse_log
from harness.prefetch import Cache, plan_for_script, scan_source, tiktoken_cache_name
from harness.record_pins import install_spec, pin_differences, torch_mismatch
from harness.commands.campaigns import EXIT_CLAIM_FAILED
from harness.tracks import load_track

SEP = "=" * 100
DASH = "-" * 40
FAKE_TRACK = FIXTURES / "fake_track"
RECORD_CODE = FIXTURES / "record_code"
TOKENIZER = REPO.parent / "shared" / "data" / "tokenizer"
SEED001_LOG = REPO.parent / "shared" / "reference" / "short-seed001" / "record-log-0ba09d92.txt"

SCRIPT = 'import os\nprint("step:{step}/{total}")  # an f-string the parser must not read as a step\nx = "=" * 100\n'
# Late-2024 scripts wrote their log themselves: the source says how (the parser reads that).
SCRIPT_2024 = SCRIPT + "with open(logfile, 'w') as f:\n    f.write(code)\n    f.write('=' * 100 + '\\n')\n"
KERNELS = "import triton\n\n\ndef add(a, b):\n    return a + b\n"
DC_KERNELS = "# dc kernels\nSCALE = 2\n"


def _smi(driver="575.51.03", gpus=("NVIDIA H100 80GB HBM3",) * 2) -> str:
    rows = "".join(f"|   {i}  {name:<26}  On  |   00000000:{16 + i:02X}:00.0 Off |                    0 |\n"
                   f"| N/A   33C    P0            118W /  700W |       4MiB /  81559MiB |      0%      Default |\n"
                   for i, name in enumerate(gpus))
    return ("Wed Mar  4 08:00:00 2026       \n"
            "+-----------------------------------------------------------------------------------------+\n"
            f"| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: 12.9     |\n"
            "|-----------------------------------------+------------------------+----------------------+\n"
            "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n"
            "|=========================================+========================+======================|\n"
            + rows)


def _steps(final="3.2761") -> str:
    return (f"step:0/20 val_loss:10.8250 train_time:0ms step_avg:0.02ms\n"
            f"step:1/20 train_time:51ms step_avg:51.00ms\n"
            f"step:20/20 val_loss:{final} train_time:1020ms step_avg:51.00ms\n"
            "peak memory allocated: 2000 MiB reserved: 2400 MiB\n")


def embedded(script: str, *sections: tuple[str, str]) -> str:
    """What a record script logs as its code: itself, then `\\n\\n` + dashes + `# name` + dashes + `\\n\\n` + file."""
    return script + "".join(f"\n\n{DASH}\n# {name}\n{DASH}\n\n{text}" for name, text in sections)


def print0_log(code: str, torch="2.9.1+cu128", cuda="12.8", python="3.12.7", triton="3.5.1", smi=None) -> str:
    """2025- layout: print0(code) (adds one newline), the header between separators."""
    header = (f"Running Python {python} (main, Jan  1 2026, 00:00:00) [GCC 13.2.0]\n"
              f"Running PyTorch {torch} compiled for CUDA {cuda}\n"
              + (f"Running Triton version {triton}\n" if triton else "")
              + (smi if smi is not None else _smi()) + "\n")
    return code + "\n" + SEP + "\n" + header + SEP + "\n" + _steps()


def first_separator_log(code: str) -> str:
    """2024 layout: a separator, f.write(code), a separator, the header, a separator."""
    header = "Running pytorch 2.4.1+cu121 compiled for CUDA 12.1\nnvidia-smi:\n" + _smi() + "\n"
    return SEP + "\n" + code + SEP + "\n" + header + SEP + "\n" + _steps()


def late_2024_log(code: str) -> str:
    """Late 2024: f.write(code) then the separator right after the source's last newline."""
    header = "Running pytorch 2.5.1+cu124 compiled for CUDA 12.4\nnvidia-smi:\n" + _smi() + "\n"
    return code + SEP + "\n" + header + SEP + "\n" + _steps()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# extract


@pytest.mark.parametrize("layout", [print0_log, first_separator_log, late_2024_log])
@pytest.mark.parametrize("sections", [(), (("triton_kernels.py", KERNELS),),
                                      (("triton_kernels.py", KERNELS), ("dc_triton_kernels.py", DC_KERNELS))])
def test_extract_gives_the_parsers_source_in_every_layout(tmp_path, layout, sections):
    code = embedded(SCRIPT_2024 if layout is late_2024_log else SCRIPT, *sections)
    log = _write(tmp_path / "a.txt", layout(code))
    parsed = parse_log(log.read_text())
    r = run_cli("extract", log, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == sorted(["train_gpt.py"] + [n for n, _ in sections])
    # The files join back to exactly the text the parser reads (its hash is the log's code hash) ...
    script = (tmp_path / "out" / "train_gpt.py").read_bytes().decode()
    rebuilt = embedded(script, *[(n, (tmp_path / "out" / n).read_text()) for n, _ in sections])
    assert rebuilt == parsed.source and _sha(rebuilt) == parsed.source_sha256
    # ... each printed with its sha256 ...
    for f in files:
        assert f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f}" in r.stdout
    assert parsed.source_sha256 in r.stdout
    # ... and every embedded file comes back byte for byte (where the late-2024 source ends, its last newline,
    # is logs.py's call: the verify helper's fix; the consistency above holds either way).
    if layout is not late_2024_log:
        assert script == SCRIPT
        assert all((tmp_path / "out" / name).read_text() == text for name, text in sections)
    if not sections:  # a script alone: its file hash is the log's code hash
        assert _sha(script) == parsed.source_sha256


def test_extract_crlf_log_hashes_like_the_parser(tmp_path):
    code = embedded(SCRIPT, ("triton_kernels.py", KERNELS))
    log = _write(tmp_path / "a.txt", print0_log(code).replace("\n", "\r\n"))
    rc = code_from_log(log)
    assert rc.source_sha256 == parse_log(log.read_text()).source_sha256 == _sha(code)
    assert rc.file_hashes() == {"train_gpt.py": _sha(SCRIPT), "triton_kernels.py": _sha(KERNELS)}


def test_a_section_header_inside_a_file_is_not_a_section_without_its_blank_lines():
    # One blank line before the dashes, or a line of 41: not the marker, stays inside the script.
    tricky = SCRIPT + f"{DASH}\n# notes.py\n{DASH}\n\nmore\n" + f"\n\n{DASH}-\n# other.py\n{DASH}-\n\nx\n"
    assert split_source(tricky) == [("train_gpt.py", tricky)]


def test_hostile_section_names_are_refused_and_nothing_is_written(tmp_path):
    log = _write(tmp_path / "evil.txt", print0_log(embedded(SCRIPT, ("../escape.py", "x = 1\n"))))
    r = run_cli("extract", log, "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "'../escape.py'" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.py").exists()


def test_extract_refuses_a_capture_without_source_and_a_missing_path(tmp_path):
    cap = _write(tmp_path / "stdout.txt", _steps())
    r = run_cli("extract", cap)
    assert r.returncode == 2 and "embeds no source" in r.stderr
    r = run_cli("extract", tmp_path / "nope.txt")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_extract_keeps_a_different_existing_file(tmp_path):
    log = _write(tmp_path / "a.txt", print0_log(SCRIPT))
    _write(tmp_path / "out" / "train_gpt.py", "mine\n")
    r = run_cli("extract", log, "--out", tmp_path / "out")
    assert r.returncode == 2 and "exists and differs" in r.stderr
    assert (tmp_path / "out" / "train_gpt.py").read_text() == "mine\n"


def test_a_folder_gives_the_code_of_its_claim_or_names_the_logs_that_differ(tmp_path):
    code = embedded(SCRIPT, ("triton_kernels.py", KERNELS))
    rec = tmp_path / "rec"
    _write(rec / "this_pr" / "a.txt", print0_log(code))
    _write(rec / "this_pr" / "b.txt", print0_log(code).replace("3.2761", "3.2770"))
    rc = load_record_code(rec)
    assert rc.source_sha256 == _sha(code) and rc.origin == rec.resolve()
    # A second code among the logs of the claim: the command names both groups of logs.
    _write(rec / "this_pr" / "c.txt", print0_log(embedded(SCRIPT + "# changed\n", ("triton_kernels.py", KERNELS))))
    r = run_cli("extract", rec, "--out", tmp_path / "out")
    assert r.returncode == 2 and "2 different codes" in r.stderr
    assert "this_pr/c.txt" in r.stderr and "this_pr/a.txt" in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_claim_decides_between_a_baseline_and_its_pr(tmp_path):
    rec = tmp_path / "rec"
    _write(rec / "baseline" / "a.txt", print0_log(SCRIPT + "# old\n"))
    _write(rec / "this_pr" / "b.txt", print0_log(SCRIPT))
    _write(rec / "this_pr" / "c.txt", print0_log(SCRIPT).replace("3.2761", "3.2765"))
    _write(rec / "README.md", "```\nlosses = [3.2761, 3.2765]\ntimes = [1.02, 1.02]\n```\n")
    assert load_record_code(rec).source_sha256 == _sha(SCRIPT)


# ---------------------------------------------------------------------------------------------------------
# pins, env --for


def test_pins_come_from_the_header_and_the_smi_block(tmp_path):
    log = _write(tmp_path / "a.txt", print0_log(SCRIPT, torch="2.10.0.dev20251210+cu126", cuda="12.6",
                                                python="3.12.12", triton="3.6.0", smi=_smi("560.35.03")))
    pins = code_from_log(log).pins
    assert pins == {"python": "3.12.12", "torch": "2.10.0.dev20251210+cu126", "cuda": "12.6", "triton": "3.6.0",
                    "driver": "560.35.03", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": "2"}


def _fp(torch_v="2.9.1+cu128", gpus=("NVIDIA H100 80GB HBM3",) * 2, driver="575.51.03"):
    return {"nvidia": {"available": True, "driver": driver, "count": len(gpus), "model": gpus[0],
                       "gpus": [{"name": g} for g in gpus]},
            "software": {"python": "3.12.7", "torch": torch_v, "cuda_runtime": "12.8", "triton": "3.5.1"}}


def test_pin_differences_and_the_torch_stop():
    pins = {"python": "3.12.7", "torch": "2.9.1+cu128", "cuda": "12.8", "triton": "3.5.1", "driver": "575.51.03",
            "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": "2"}
    assert pin_differences(pins, _fp()) == [] and torch_mismatch(pins, _fp()) is None
    # Another CUDA build of the same PyTorch: printed, but no stop.
    assert pin_differences(pins, _fp("2.9.1+cu130")) == ["PyTorch: 2.9.1+cu130 here, 2.9.1+cu128 in the log"]
    assert torch_mismatch(pins, _fp("2.9.1+cu130")) is None
    assert "2.11.0+cu130 here" in torch_mismatch(pins, _fp("2.11.0+cu130"))
    diffs = pin_differences(pins, _fp(gpus=("NVIDIA H200",), driver="580.1"))
    assert "GPU: NVIDIA H200 here, NVIDIA H100 80GB HBM3 in the log" in diffs
    assert "GPU count: 1 here, 2 in the log" in diffs and "NVIDIA driver: 580.1 here, 575.51.03 in the log" in diffs


def test_install_spec_names_releases_and_refuses_nightlies():
    rel = install_spec({"torch": "2.9.1+cu128", "cuda": "12.8", "triton": "3.5.1", "python": "3.12.7"})
    assert "pip install torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128" in rel
    assert any(line.startswith("pip install triton==3.5.1") for line in rel)
    # No local tag: the CUDA the build names picks the index.
    assert "pip install torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124" in install_spec(
        {"torch": "2.5.1", "cuda": "12.4"})
    night = install_spec({"torch": "2.10.0.dev20251210+cu126", "cuda": "12.6"})
    assert not any(line.startswith("pip install torch") for line in night)
    assert any("2.10.0.dev20251210+cu126" in line and "not installable" in line for line in night)


def test_env_for_prints_the_spec_of_a_log(tmp_path):
    log = _write(tmp_path / "a.txt", print0_log(SCRIPT))
    r = run_cli("env", "--for", log)
    assert r.returncode == 0, r.stderr
    assert "pip install torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128" in r.stdout
    assert "# this node:" in r.stdout


# ---------------------------------------------------------------------------------------------------------
# downloads: what the source names


def test_scan_finds_the_run_time_downloads_without_running_anything():
    src = '''
import kernels, tiktoken
from kernels import get_kernel
from huggingface_hub import hf_hub_download
REPO = "kernels-community/flash-attn3"
a = get_kernel('varunneal/flash-attention-3').flash_attn_interface
b = kernels.get_kernel(REPO, version=1)
c = get_kernel(repo_id="acme/k", revision="0123456789abcdef0123456789abcdef01234567")
d = get_kernel(f"{os.environ['X']}/k")
enc = tiktoken.get_encoding("gpt2")
hf_hub_download(repo_id="kjj0/fineweb10B-gpt2", filename="fineweb_val_000000.bin", repo_type="dataset")
raise SystemExit("never run")
'''
    needs = scan_source(src, "t.py")
    got = [(n.kind, n.repo, n.ref, n.unpinned, n.encoding, n.filename, n.repo_type) for n in needs]
    assert ("hub-kernel", "varunneal/flash-attention-3", "main", True, None, None, "model") in got
    assert ("hub-kernel", "kernels-community/flash-attn3", "v1", False, None, None, "model") in got
    assert ("hub-kernel", "acme/k", "0123456789abcdef0123456789abcdef01234567", False, None, None, "model") in got
    assert ("tiktoken", None, None, False, "gpt2", None, "model") in got
    assert ("hub-file", "kjj0/fineweb10B-gpt2", "main", True, None, "fineweb_val_000000.bin", "dataset") in got
    assert [n.where for n in needs if n.kind == "unresolved"] == ["t.py:9"]
    # A source this Python cannot parse is still read for the literal forms.
    broken = "def f[T](x: T) -> T: ...\nk = get_kernel('a/b', version=2)\nmatch = = 1\n"
    (n,) = scan_source(broken, "new.py")
    assert (n.repo, n.ref, n.where) == ("a/b", "v2", "new.py:2")


# ---------------------------------------------------------------------------------------------------------
# the fake hub cache, prefetch, and a campaign that runs offline against it

REVISION = "5e3a" + "0" * 34 + "c1"
TOY_INIT = "def hello():\n    return 'toy-attn v1 build'\n"
TOY_META = json.dumps({"id": "acme/toy-attn", "name": "toy-attn", "version": 1, "license": "MIT",
                       "python-depends": [], "backend": {"type": "cpu"}}) + "\n"


def fake_hub(root: Path) -> Path:
    """A folder laid out as the Hugging Face hub cache: refs/<name> hold the commit, snapshots/<commit>/ link
    each file into blobs/ (named by the file's hash)."""
    repo = root / "models--acme--toy-attn"
    _write(repo / "refs" / "main", REVISION)
    _write(repo / "refs" / "v1", REVISION)
    for rel, text in (("build/torch-universal/toy_attn/__init__.py", TOY_INIT),
                      ("build/torch-universal/metadata.json", TOY_META)):
        blob = _write(repo / "blobs" / _sha(text), text)
        link = repo / "snapshots" / REVISION / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


def record_log(tmp_path: Path, torch_v: str | None = None) -> Path:
    """A record log of the fixture script (its code embedded as a record embeds it), written for this
    node's PyTorch unless torch_v says otherwise."""
    import torch

    script = (RECORD_CODE / "train_gpt.py").read_text()
    helper = (RECORD_CODE / "triton_kernels.py").read_text()
    text = print0_log(embedded(script, ("triton_kernels.py", helper)), torch=torch_v or torch.__version__,
                      cuda=str(torch.version.cuda), python=platform.python_version(), triton=None, smi="")
    return _write(tmp_path / "record" / "0c0ffee0.txt", text)


def _tokenizer_dir(tmp_path: Path) -> Path:
    if not (TOKENIZER / "vocab.bpe").is_file():
        pytest.skip("../shared/data/tokenizer (GPT-2 BPE files) not here")
    return TOKENIZER


NO_NETWORK = ["--env", "HTTPS_PROXY=http://127.0.0.1:9", "--env", "HTTP_PROXY=http://127.0.0.1:9"]


def test_prefetch_from_a_fake_hub_then_a_campaign_runs_offline_and_records_the_revision(tmp_path):
    log = record_log(tmp_path)
    hub = fake_hub(tmp_path / "src-hub")
    root = tmp_path / "root"
    root.mkdir()
    r = run_cli("prefetch", log, "--from", hub, "--from", _tokenizer_dir(tmp_path), "--data-path", root)
    assert r.returncode == 0, r.stderr
    cache = Cache.under(root)
    manifest = json.loads(cache.manifest_path.read_text())
    (kernel,) = [i for i in manifest["items"] if i.get("repo") == "acme/toy-attn"]
    assert kernel["ref"] == "v1" and kernel["revision"] == REVISION
    assert kernel["files"]["build/torch-universal/toy_attn/__init__.py"] == _sha(TOY_INIT)
    # The hub cache's own layout (both repo-type names), and tiktoken's cache names.
    repo = cache.hub / "models--acme--toy-attn"
    assert (repo / "refs" / "v1").read_text() == REVISION
    link = repo / "snapshots" / REVISION / "build/torch-universal/toy_attn/__init__.py"
    assert link.is_symlink() and link.resolve().parent == (repo / "blobs").resolve()
    assert (cache.hub / "kernels--acme--toy-attn").resolve() == repo.resolve()
    vocab = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
    assert (cache.tiktoken / tiktoken_cache_name(vocab)).read_bytes() == (TOKENIZER / "vocab.bpe").read_bytes()

    out = tmp_path / "camp"
    r = run_cli("run", RECORD_CODE, "--script", log, "--runs", "2", "--out", out, "--data-path", root,
                "--no-telemetry", "--quiet", *NO_NETWORK)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    camp = json.loads((out / "campaign.json").read_text())
    arm = camp["arms"]["main"]
    assert arm["env"]["HF_HUB_OFFLINE"] == "1" and arm["env"]["HF_HUB_CACHE"] == str(cache.hub)
    assert arm["env"]["TIKTOKEN_CACHE_DIR"] == str(cache.tiktoken)
    (dl,) = [d for d in arm["downloads"] if d["kind"] == "hub-kernel"]
    assert dl["status"] == "cached" and dl["revision"] == REVISION and dl["ref"] == "v1"
    assert [d["status"] for d in arm["downloads"] if d["kind"] == "tiktoken"] == ["cached"]
    # The code ran unmodified from the campaign folder: each run's log embeds the same code as the record log.
    assert arm["code"]["kind"] == "record-log" and Path(arm["script"]).parent == (out / "code" / "main").resolve()
    assert arm["script_sha256"] == arm["code"]["files"]["train_gpt.py"]
    for k in (0, 1):
        run = json.loads((out / "runs" / str(k) / "run.json").read_text())
        assert run["status"] == "ok" and run["source_sha256"] == arm["code"]["source_sha256"]
        output = (out / "runs" / str(k) / "output.txt").read_text()
        assert "kernel: toy-attn v1 build" in output and "offline: 1" in output
    md = (out / "record.md").read_text()
    assert "## Code of each arm" in md and arm["code"]["source_sha256"] in md and REVISION in md


def test_a_missing_download_stops_the_pre_flight_and_leaves_nothing(tmp_path):
    log = record_log(tmp_path)
    root = tmp_path / "empty-root"
    root.mkdir()
    out = tmp_path / "camp"
    r = run_cli("run", RECORD_CODE, "--script", log, "--runs", "1", "--out", out, "--data-path", root,
                "--no-telemetry", "--quiet", *NO_NETWORK)
    assert r.returncode == 2, r.stderr
    assert "hub kernel acme/toy-attn (v1)" in r.stderr and "tiktoken encoding gpt2" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: pre-flight stopped before launching")
    assert not out.exists()


def test_a_changed_cache_file_is_named(tmp_path):
    log = record_log(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    assert run_cli("prefetch", log, "--from", fake_hub(tmp_path / "hub"), "--from", _tokenizer_dir(tmp_path),
                   "--data-path", root).returncode == 0
    code = write_code(code_from_log(log), tmp_path / "code")
    plan = plan_for_script(Path(code["dir"]) / "train_gpt.py", root)
    assert plan.stops() == [] and len(plan.needs) == 2
    blob = Cache.under(root).hub / "models--acme--toy-attn" / "blobs" / _sha(TOY_INIT)
    blob.write_text("def hello():\n    return 'swapped'\n")
    assert any("changed since it was prefetched" in s for s in plan_for_script(Path(code["dir"]) / "train_gpt.py",
                                                                               root).stops())


def test_the_real_kernels_package_resolves_version_1_from_the_prefetched_cache(tmp_path):
    pytest.importorskip("kernels")
    import subprocess
    import sys

    root = tmp_path / "root"
    root.mkdir()
    (n,) = scan_source('get_kernel("acme/toy-attn", version=1)', "x.py")
    from harness.prefetch import prefetch

    fetched, failures = prefetch([n], Cache.under(root), [fake_hub(tmp_path / "hub")])
    assert failures == [] and fetched[0]["revision"] == REVISION
    env = dict(os.environ, **Cache.under(root).env(), HTTPS_PROXY="http://127.0.0.1:9")
    r = subprocess.run([sys.executable, "-c", "from kernels import get_kernel; "
                        "print(get_kernel('acme/toy-attn', version=1).hello())"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("toy-attn v1 build")


# ---------------------------------------------------------------------------------------------------------
# record code wherever a script is accepted; the pre-flight's torch stop


def _kernel_free_log(tmp_path: Path, torch_v: str | None = None) -> Path:
    """A record log of the fake track's own script (no downloads)."""
    import torch

    script = (FAKE_TRACK / "train_fake.py").read_text()
    return _write(tmp_path / "fake-record.txt", print0_log(script, torch=torch_v or torch.__version__, smi=""))


def test_compare_retimes_a_record_log_as_the_baseline(tmp_path):
    log = _kernel_free_log(tmp_path)
    out = tmp_path / "camp"
    r = run_cli("compare", log, FAKE_TRACK, "--runs", "1", "--out", out, "--no-telemetry", "--quiet")
    # every run finished (not 3); one run per arm leaves the candidate's t-test undecided: the verdict exit 4
    assert r.returncode == EXIT_CLAIM_FAILED, r.stdout[-2000:] + r.stderr[-2000:]
    camp = json.loads((out / "campaign.json").read_text())
    base = camp["arms"]["baseline"]
    assert base["code"]["kind"] == "record-log" and base["code"]["log"] == str(log.resolve())
    assert (out / "code" / "baseline" / "train_gpt.py").read_bytes() == (FAKE_TRACK / "train_fake.py").read_bytes()
    assert base["pins"]["python"] == "3.12.7" and "Python: " in " ".join(base["pin_differences"])
    assert camp["arms"]["candidate"]["code"]["kind"] == "track"
    runs = [json.loads((out / "runs" / k / "run.json").read_text()) for k in ("0", "1")]
    assert [r_["status"] for r_ in runs] == ["ok", "ok"]
    md = (out / "record.md").read_text()
    assert f"record log {log.resolve()}" in md and "environment pins (its log)" in md


def test_another_pytorch_stops_before_launching_unless_run_anyway(tmp_path):
    log = _kernel_free_log(tmp_path, torch_v="2.10.0.dev20251210+cu126")
    out = tmp_path / "camp"
    r = run_cli("compare", log, FAKE_TRACK, "--runs", "1", "--out", out, "--no-telemetry", "--quiet")
    assert r.returncode == 2
    assert "PyTorch" in r.stderr and "2.10.0.dev20251210+cu126" in r.stderr and "--run-anyway" in r.stderr
    assert not out.exists()
    r = run_cli("compare", log, FAKE_TRACK, "--runs", "1", "--out", out, "--no-telemetry", "--quiet", "--run-anyway")
    assert r.returncode == EXIT_CLAIM_FAILED, r.stderr[-2000:]  # launched, every run finished (one run: verdict 4)
    base = json.loads((out / "campaign.json").read_text())["arms"]["baseline"]
    assert any(d.startswith("PyTorch: ") for d in base["pin_differences"])


@pytest.mark.skipif(not SEED001_LOG.is_file(), reason="../shared/reference not here")
def test_the_seed001_record_log_stops_in_its_pre_flight_on_pytorch_and_its_hub_kernel(tmp_path):
    out = tmp_path / "camp"
    r = run_cli("compare", SEED001_LOG, "short", "--out", out, "--data-path", tmp_path, "--quiet")
    assert r.returncode == 2
    assert "2.10.0.dev20251210+cu126" in r.stderr and "PyTorch" in r.stderr
    assert "varunneal/flash-attention-3" in r.stderr and "unpinned" in r.stderr
    assert not out.exists()  # stopped before launching: no campaign, no extracted code left


def test_add_file_places_a_stand_in_beside_the_code_and_records_it(tmp_path):
    log = record_log(tmp_path)
    stand_in = _write(tmp_path / "mine" / "kernels.py", "def get_kernel(repo_id, version=None):\n    return None\n")
    arm = make_arm(str(log), name="baseline", default_track=load_track(FAKE_TRACK), code_dir=tmp_path / "c",
                   add_files=[str(stand_in)])
    assert (tmp_path / "c" / "kernels.py").read_bytes() == stand_in.read_bytes()
    assert arm.code["extra_files"]["kernels.py"] == {"from": str(stand_in.resolve()), "sha256": _sha(stand_in.read_text())}
    assert "kernels.py" not in arm.code["files"]
    # The hub kernel is now the stand-in's business; tiktoken's files are still a download.
    plan = plan_for_script(arm.script, tmp_path / "no-cache")
    status = {e["kind"]: e["status"] for e in plan.entries}
    assert status == {"hub-kernel": "stand-in", "tiktoken": "missing"}
    # A round trip through campaign.json (resume) keeps the provenance.
    again = Arm.from_dict(json.loads(json.dumps(arm.to_dict())))
    assert again.code == arm.code and again.pins == arm.pins
    with pytest.raises(HarnessError, match="embeds its own triton_kernels.py"):
        make_arm(str(log), name="x", default_track=load_track(FAKE_TRACK), code_dir=tmp_path / "d",
                 add_files=[str(RECORD_CODE / "triton_kernels.py")])


def test_add_file_without_record_code_is_bad_input(tmp_path):
    extra = _write(tmp_path / "kernels.py", "x = 1\n")
    r = run_cli("run", FAKE_TRACK, "--runs", "1", "--add-file", extra, "--out", tmp_path / "c", "--quiet")
    assert r.returncode == 2 and "--add-file" in r.stderr and not (tmp_path / "c").exists()


def test_compare_of_two_code_sides_takes_the_track_from_the_record_path_or_track_flag(tmp_path):
    from harness.commands.compare import track_of

    log = _kernel_free_log(tmp_path)
    assert track_of(str(log), str(log), track=str(FAKE_TRACK)) == "fake"
    folder = tmp_path / "records" / "track_1_short" / "2026-01-01_X"
    _write(folder / "a.txt", log.read_text())
    assert track_of(str(folder), str(RECORD_CODE / "train_gpt.py")) == "short"
    with pytest.raises(HarnessError, match="--track"):
        track_of(str(log), str(RECORD_CODE / "train_gpt.py"))


def test_a_compare_whose_second_side_fails_leaves_no_extracted_code(tmp_path):
    log = _kernel_free_log(tmp_path)
    capture = _write(tmp_path / "stdout.txt", _steps())  # a log without embedded code
    out = tmp_path / "camp"
    r = run_cli("compare", log, capture, "--track", FAKE_TRACK, "--runs", "1", "--out", out, "--quiet")
    assert r.returncode == 2 and "embeds no source" in r.stderr
    assert not out.exists()
