"""harness/data.py: shard validation, manifest, adopt (--from), download path with the downloader replaced."""

import json
from pathlib import Path

import pytest

from conftest import make_source, write_shard
from harness import data
from harness.commands.data import cmd_data
from harness.errors import HarnessError
from harness.fsio import sha256_file


def test_read_header_accepts_good_and_names_the_problem(tmp_path):
    assert data.read_header(write_shard(tmp_path / "a.bin", 10)) == 10
    with pytest.raises(HarnessError, match="bad magic"):
        data.read_header(write_shard(tmp_path / "b.bin", 10, magic=7))
    with pytest.raises(HarnessError, match="version 2"):
        data.read_header(write_shard(tmp_path / "c.bin", 10, version=2))
    with pytest.raises(HarnessError, match="header says 12 tokens"):
        data.read_header(write_shard(tmp_path / "d.bin", 10, count=12))
    (tmp_path / "e.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(HarnessError, match="too short"):
        data.read_header(tmp_path / "e.bin")


def test_adopt_from_writes_manifest_and_second_call_verifies(tmp_path, capsys):
    src = make_source(tmp_path / "proxy", 3)
    root = tmp_path / "root"
    dest = data.shard_folder(root)  # where runs with DATA_PATH=root look
    assert cmd_data("fineweb", 2, data_path=str(root), from_dir=str(src)) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    files = [e["file"] for e in manifest["shards"]]
    assert files == [data.VAL_SHARD, data.train_shard(1), data.train_shard(2)]
    for e in manifest["shards"]:
        assert e["sha256"] == sha256_file(src / e["file"]) and e["source"].startswith("adopted from")
    assert manifest["tokens"] == {"val": 500, "train": 1001 + 1002}
    capsys.readouterr()
    # second call: everything verified, nothing copied again
    cmd_data("fineweb", 2, data_path=str(root), from_dir=str(src))
    out = capsys.readouterr().out
    assert out.count("ok (verified)") == 3 and "fetched" not in out


def test_too_few_shards_is_one_clear_error_naming_them(tmp_path):
    src = make_source(tmp_path / "proxy", 2)
    with pytest.raises(HarnessError) as e:
        cmd_data("fineweb", 5, data_path=str(tmp_path / "d"), from_dir=str(src))
    msg = str(e.value)
    assert "3 of 6 shard(s) missing" in msg and data.train_shard(3) in msg and data.train_shard(5) in msg
    assert not (data.shard_folder(tmp_path / "d") / "manifest.json").exists(), "nothing is written when the request cannot be met"


def test_corrupted_shard_is_detected_not_replaced(tmp_path):
    src = make_source(tmp_path / "proxy", 1)
    root = tmp_path / "root"
    dest = data.shard_folder(root)  # where runs with DATA_PATH=root look
    cmd_data("fineweb", 1, data_path=str(root), from_dir=str(src))
    shard = dest / data.train_shard(1)
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    before = (dest / "manifest.json").read_text()
    with pytest.raises(HarnessError, match="sha256 differs"):
        cmd_data("fineweb", 1, data_path=str(root), from_dir=str(src))
    assert (dest / "manifest.json").read_text() == before


def test_download_path_uses_the_downloader_and_validates(tmp_path, monkeypatch):
    src = make_source(tmp_path / "hub", 2)
    calls = []

    def fake_download(name, dest_dir):
        calls.append(name)
        out = Path(dest_dir) / name
        out.write_bytes((src / name).read_bytes())
        return out

    monkeypatch.setattr(data, "hf_download", fake_download)
    root = tmp_path / "root"
    dest = data.shard_folder(root)  # where runs with DATA_PATH=root look
    assert cmd_data("fineweb", 2, data_path=str(root)) == 0
    assert calls == [data.VAL_SHARD, data.train_shard(1), data.train_shard(2)]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {e["source"] for e in manifest["shards"]} == {"huggingface:kjj0/fineweb10B-gpt2"}
    # a later call with more shards fetches only the new one
    write_shard(src / data.train_shard(3), 77, seed=3)
    calls.clear()
    cmd_data("fineweb", 3, data_path=str(root))
    assert calls == [data.train_shard(3)]


def test_downloaded_garbage_is_rejected(tmp_path, monkeypatch):
    def fake_download(name, dest_dir):
        out = Path(dest_dir) / name
        out.write_bytes(b"<html>rate limited</html>" + b"\x00" * 2000)
        return out

    monkeypatch.setattr(data, "hf_download", fake_download)
    with pytest.raises(HarnessError, match="bad magic"):
        cmd_data("fineweb", 1, data_path=str(tmp_path / "d"))


def test_missing_huggingface_hub_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_hub(name, *a, **k):
        if name.startswith("huggingface_hub"):
            raise ImportError("No module named 'huggingface_hub'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(HarnessError, match="huggingface_hub"):
        cmd_data("fineweb", 1, data_path=str(tmp_path / "d"))


def test_bad_arguments(tmp_path):
    with pytest.raises(HarnessError, match="between 1 and 103"):
        cmd_data("fineweb", 0, data_path=str(tmp_path))
    with pytest.raises(HarnessError, match="unknown dataset"):
        cmd_data("openwebtext", 1, data_path=str(tmp_path))
    with pytest.raises(HarnessError, match="not a folder"):
        cmd_data("fineweb", 1, data_path=str(tmp_path), from_dir=str(tmp_path / "nope"))
    data.shard_folder(tmp_path / "m").mkdir(parents=True)
    (data.shard_folder(tmp_path / "m") / "manifest.json").write_text("{not json")
    with pytest.raises(HarnessError, match="not valid JSON"):
        cmd_data("fineweb", 1, data_path=str(tmp_path / "m"), from_dir=str(make_source(tmp_path / "s", 1)))


def test_real_proxy_shards_validate():
    repo = Path(__file__).resolve().parents[1]
    # The offline proxy shards: copied beside a dev checkout, or in the shared folder CI places next to it.
    found = [p for p in (repo / ".carry" / "proxy", repo.parent / "shared" / "data" / "proxy") if p.is_dir()]
    if not found:
        pytest.skip("proxy shards not present")
    proxy = found[0]
    assert data.read_header(proxy / data.VAL_SHARD) == 5_000_000


def test_manifest_entry_without_tokens_is_one_clear_error(tmp_path):
    src, root = make_source(tmp_path / "src", 1), tmp_path / "root"
    dst = data.shard_folder(root)
    cmd_data("fineweb", 1, data_path=str(root), from_dir=str(src))
    manifest = json.loads((dst / data.MANIFEST).read_text())
    del manifest["shards"][0]["tokens"]
    (dst / data.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(HarnessError, match="a shard entry lacks its file name or token count"):
        cmd_data("fineweb", 1, data_path=str(root), from_dir=str(src))


def test_a_failed_copy_is_one_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    src, root = make_source(tmp_path / "src", 1), tmp_path / "root"
    dst = data.shard_folder(root)

    def disk_full(a, b):
        Path(b).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.shutil, "copyfile", disk_full)
    with pytest.raises(HarnessError, match="No space left on device"):
        cmd_data("fineweb", 1, data_path=str(root), from_dir=str(src))
    assert sorted(p.name for p in dst.iterdir()) == []  # no shard, no .partial, no manifest


def test_default_shard_count_is_the_tracks_and_lands_where_runs_look(tmp_path, capsys):
    from conftest import FIXTURES

    src = make_source(tmp_path / "proxy", 2)
    with pytest.raises(HarnessError, match="asked for 9"):  # short's [data] train_shards
        cmd_data("fineweb", data_path=str(tmp_path / "a"), from_dir=str(src))
    root = tmp_path / "root"
    assert cmd_data("fineweb", data_path=str(root), from_dir=str(src),
                         track=str(FIXTURES / "competition_contract")) == 0  # its train_shards = 1
    assert sorted(p.name for p in (root / "data" / "fineweb10B").glob("*.bin")) == [data.train_shard(1),
                                                                                    data.VAL_SHARD]
    assert f"with --data-path {root}" in capsys.readouterr().out
