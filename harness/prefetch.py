"""What a script downloads at run time, fetched once into a cache, so every run of a campaign runs offline
against the same files: `speedrun prefetch SCRIPT_OR_LOG [--from DIR] [--data-path ROOT]`.

Competition scripts fetch code and data when they start (docs/DESIGN.md "Run-time downloads"): FlashAttention-3 from
the Hugging Face hub through the `kernels` package (`get_kernel('varunneal/flash-attention-3')`, unpinned, or
`get_kernel('kernels-community/flash-attn3', version=1)`), tiktoken's GPT-2 BPE (`tiktoken.get_encoding("gpt2")`),
hub files (`hf_hub_download`, `snapshot_download`). Unpinned, two runs of one campaign can load two kernel builds.

The source is read (parsed with `ast`, never executed) for those calls. `prefetch` puts what they name into a
cache under the data root, laid out as the libraries expect, and records repo, revision and file sha256 in a
manifest:

    ROOT/data/prefetch/manifest.json
    ROOT/data/prefetch/hf/hub/models--owner--name/{refs/<ref>, snapshots/<commit>/..., blobs/<hash>}
                                                  (the Hugging Face hub cache layout; kernels--owner--name links
                                                   to it for `kernels` releases that use the hub's kernel type)
    ROOT/data/prefetch/tiktoken/<sha1 of the file's URL>   (tiktoken's own cache names)

Campaigns then give the runs `HF_HUB_OFFLINE=1`, `HF_HUB_CACHE`, `HF_HOME` and `TIKTOKEN_CACHE_DIR` (see
record_preflight.check_arms): `kernels` resolves `version=N` from `refs/vN` in the cache, the unpinned form from
`refs/main`, so every run loads the revision the manifest names. A needed item missing from the cache is
named in the pre-flight. `--from DIR` adopts a folder laid out as the hub cache (and tokenizer files by name
or content) instead of downloading: the way to test all of this without a hub.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import os
import re
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.fsio import read_json, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from harness.tracks import REPO_ROOT

MANIFEST_FORMAT = 1
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

# tiktoken's encodings and the files it fetches for each (public facts of tiktoken_ext.openai_public: URL and
# the sha256 tiktoken checks). The cache name of a file is sha1(URL).
_OPENAI = "https://openaipublic.blob.core.windows.net"
TIKTOKEN_FILES = {
    "gpt2": [(f"{_OPENAI}/gpt-2/encodings/main/vocab.bpe",
              "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
             (f"{_OPENAI}/gpt-2/encodings/main/encoder.json",
              "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")],
    "r50k_base": [(f"{_OPENAI}/encodings/r50k_base.tiktoken",
                   "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")],
    "p50k_base": [(f"{_OPENAI}/encodings/p50k_base.tiktoken",
                   "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069")],
    "cl100k_base": [(f"{_OPENAI}/encodings/cl100k_base.tiktoken",
                     "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")],
    "o200k_base": [(f"{_OPENAI}/encodings/o200k_base.tiktoken",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")],
}
TIKTOKEN_FILES["p50k_edit"] = TIKTOKEN_FILES["p50k_base"]


def tiktoken_cache_name(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# What a source downloads


@dataclass(frozen=True)
class Need:
    """One run-time download named by the source."""

    kind: str  # "hub-kernel", "hub-file", "hub-snapshot", "tiktoken", "unresolved"
    where: str  # "train_gpt.py:911"
    module: str  # the package the call goes through (a local file of that name would stand in for it)
    repo: str | None = None
    ref: str | None = None  # "v1" for version=1, "main" when unpinned, else the revision given
    repo_type: str = "model"
    filename: str | None = None
    encoding: str | None = None
    unpinned: bool = False
    call: str = ""  # the call as written, for unresolved ones

    def what(self) -> str:
        if self.kind == "tiktoken":
            return f"tiktoken encoding {self.encoding}"
        if self.kind == "unresolved":
            return f"{self.call} (its arguments are not literals: what it downloads cannot be read off the source)"
        pin = " (unpinned: the hub's main of the day)" if self.unpinned else f" ({self.ref})"
        label = {"hub-kernel": "hub kernel", "hub-file": "hub file", "hub-snapshot": "hub repo"}[self.kind]
        name = f"{self.repo}/{self.filename}" if self.filename else str(self.repo)
        typ = "" if self.repo_type in ("model", "kernel") else f" [{self.repo_type}]"
        return f"{label} {name}{typ}{pin}"


_CALLS = {  # function name -> (kind, module)
    "get_kernel": ("hub-kernel", "kernels"),
    "get_encoding": ("tiktoken", "tiktoken"),
    "hf_hub_download": ("hub-file", "huggingface_hub"),
    "snapshot_download": ("hub-snapshot", "huggingface_hub"),
}


def scan_source(text: str, filename: str) -> list[Need]:
    """The downloads a Python source names. Parsed, never run; a source this Python cannot parse is read with
    patterns for the literal forms."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return _scan_patterns(text, filename)
    consts = _module_constants(tree)
    needs = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fname = node.func.id if isinstance(node.func, ast.Name) else (
            node.func.attr if isinstance(node.func, ast.Attribute) else None)
        if fname not in _CALLS:
            continue
        if isinstance(node.func, ast.Attribute) and fname == "get_encoding" and not _is_name(node.func.value, "tiktoken"):
            continue  # x.get_encoding(...) of something else
        needs.append(_need_from_call(node, fname, filename, consts))
    return needs


def _is_name(node, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _module_constants(tree: ast.Module) -> dict[str, object]:
    """NAME = "literal" at the top level (a repo id kept in a variable)."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, (str, int)):
                out[stmt.targets[0].id] = stmt.value.value
    return out


_MISSING = object()


def _arg(node: ast.Call, pos: int, kw: str, consts: dict):
    """A literal argument (positional or keyword); _MISSING when absent; None when not a literal."""
    value = next((k.value for k in node.keywords if k.arg == kw), None)
    if value is None:
        value = node.args[pos] if pos is not None and len(node.args) > pos else None
    if value is None:
        return _MISSING
    if isinstance(value, ast.Constant):
        return value.value
    if isinstance(value, ast.Name) and value.id in consts:
        return consts[value.id]
    return None


def _need_from_call(node: ast.Call, fname: str, filename: str, consts: dict) -> Need:
    kind, module = _CALLS[fname]
    where = f"{filename}:{node.lineno}"
    unresolved = Need("unresolved", where, module, call=f"{fname}(...)")
    if kind == "tiktoken":
        name = _arg(node, 0, "encoding_name", consts)
        return Need(kind, where, module, encoding=name) if isinstance(name, str) else unresolved
    repo = _arg(node, 0, "repo_id", consts)
    if not isinstance(repo, str):
        return unresolved
    revision = _arg(node, None, "revision", consts)
    version = _arg(node, None, "version", consts) if kind == "hub-kernel" else _MISSING
    repo_type = _arg(node, None, "repo_type", consts)
    filename_arg = _arg(node, 1, "filename", consts) if kind == "hub-file" else _MISSING
    if any(v is None for v in (revision, version, repo_type, filename_arg)):
        return unresolved
    if version is not _MISSING and not isinstance(version, int):
        return unresolved
    if version is not _MISSING:
        ref, unpinned = f"v{version}", False
    elif revision is not _MISSING:
        ref, unpinned = str(revision), False
    else:
        ref, unpinned = "main", True
    return Need(kind, where, module, repo=repo, ref=ref, unpinned=unpinned,
                repo_type="model" if repo_type is _MISSING else str(repo_type),
                filename=None if filename_arg is _MISSING else str(filename_arg))


_KERNEL_RE = re.compile(r"\bget_kernel\(\s*(['\"])([^'\"]+)\1\s*(?:,\s*version\s*=\s*(\d+))?\s*(?:,\s*revision\s*=\s*(['\"])([^'\"]+)\4)?")
_ENCODING_RE = re.compile(r"\bget_encoding\(\s*(['\"])([^'\"]+)\1")


def _scan_patterns(text: str, filename: str) -> list[Need]:
    needs = []
    for m in _KERNEL_RE.finditer(text):
        where = f"{filename}:{text.count(chr(10), 0, m.start()) + 1}"
        version, revision = m.group(3), m.group(5)
        ref = f"v{version}" if version else (revision or "main")
        needs.append(Need("hub-kernel", where, "kernels", repo=m.group(2), ref=ref, unpinned=not (version or revision)))
    for m in _ENCODING_RE.finditer(text):
        where = f"{filename}:{text.count(chr(10), 0, m.start()) + 1}"
        needs.append(Need("tiktoken", where, "tiktoken", encoding=m.group(2)))
    return needs


def scan_folder(folder: Path) -> list[Need]:
    """Downloads named by the .py files of a code folder (a script and the modules beside it)."""
    needs = []
    for p in sorted(Path(folder).glob("*.py")):
        try:
            needs += scan_source(p.read_text(encoding="utf-8", errors="replace"), p.name)
        except OSError:
            continue
    return needs


def stand_in(folder: Path, module: str) -> Path | None:
    """A local module beside the script that its import finds before the installed package (sys.path[0])."""
    for candidate in (folder / f"{module}.py", folder / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------------
# The cache


def data_root(env: dict[str, str] | None = None) -> Path:
    """The folder that holds `data/` for the runs (DATA_PATH, default the repository root)."""
    value = (env or {}).get("DATA_PATH") or os.environ.get("DATA_PATH")
    return Path(value).resolve() if value else REPO_ROOT


@dataclass
class Cache:
    root: Path  # ROOT/data/prefetch

    @staticmethod
    def under(data_root_dir: Path) -> "Cache":
        return Cache(Path(data_root_dir).resolve() / "data" / "prefetch")

    @property
    def hf_home(self) -> Path:
        return self.root / "hf"

    @property
    def hub(self) -> Path:
        return self.hf_home / "hub"

    @property
    def tiktoken(self) -> Path:
        return self.root / "tiktoken"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def env(self) -> dict[str, str]:
        """What every run of a campaign gets: offline, against this cache."""
        return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(self.hf_home), "HF_HUB_CACHE": str(self.hub),
                "TIKTOKEN_CACHE_DIR": str(self.tiktoken)}

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {"format": MANIFEST_FORMAT, "items": []}
        m = read_json(self.manifest_path)
        if not isinstance(m, dict) or not isinstance(m.get("items"), list):
            raise HarnessError(f"{self.manifest_path}: not a prefetch manifest (no 'items' list)")
        return m

    def repo_dir(self, repo_type: str, repo: str) -> Path:
        return self.hub / repo_folder(repo_type, repo)


def repo_folder(repo_type: str, repo: str) -> str:
    """The hub cache's folder name: models--owner--name, datasets--owner--name, kernels--owner--name."""
    return f"{repo_type}s--{repo.replace('/', '--')}"


def _item_key(item: dict) -> tuple:
    if item.get("kind") == "tiktoken":
        return ("tiktoken", item.get("encoding"))
    return ("hub", item.get("repo_type"), item.get("repo"), item.get("ref"))


def _need_key(need: Need) -> tuple:
    if need.kind == "tiktoken":
        return ("tiktoken", need.encoding)
    return ("hub", "model" if need.repo_type == "kernel" else need.repo_type, need.repo, need.ref)


def find_item(manifest: dict, need: Need) -> dict | None:
    key = _need_key(need)
    for item in manifest.get("items", []):
        if _item_key(item) == key or (need.kind != "tiktoken" and _COMMIT_RE.match(need.ref or "")
                                      and item.get("repo") == need.repo and item.get("revision") == need.ref):
            if need.filename and need.filename not in (item.get("files") or {}):
                continue
            return item
    return None


def verify_item(cache: Cache, item: dict) -> str | None:
    """None when the cached files are there with the manifest's hashes; else what is wrong."""
    if item.get("kind") == "tiktoken":
        for f in item.get("files", []):
            p = cache.tiktoken / f["cache_name"]
            if not p.is_file():
                return f"{p} is missing"
            if sha256_file(p) != f["sha256"]:
                return f"{p} changed since it was prefetched (sha256 differs)"
        return None
    repo_dir = cache.repo_dir(item["repo_type"], item["repo"])
    ref_file = repo_dir / "refs" / item["ref"]
    if not _COMMIT_RE.match(item["ref"]):
        if not ref_file.is_file():
            return f"{ref_file} is missing"
        if ref_file.read_text(encoding="utf-8").strip() != item["revision"]:
            return f"{ref_file} no longer names revision {item['revision'][:12]}"
    snap = repo_dir / "snapshots" / item["revision"]
    for rel, digest in (item.get("files") or {}).items():
        p = snap / rel
        if not p.is_file():
            return f"{p} is missing"
        if sha256_file(p) != digest:
            return f"{p} changed since it was prefetched (sha256 differs)"
    return None


# ---------------------------------------------------------------------------------------------------------
# The plan for one arm: what it needs, what the cache has


@dataclass
class Plan:
    cache: Cache
    needs: list[Need] = field(default_factory=list)  # resolvable downloads the runs will make
    entries: list[dict] = field(default_factory=list)  # one per download call, for campaign.json and the console
    missing: list[Need] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return self.cache.env()

    def lines(self) -> list[str]:
        return [e["line"] for e in self.entries]

    def records(self) -> list[dict]:
        return list(self.entries)

    def stops(self) -> list[str]:
        out = [f"{n.what()} at {n.where} is not in the download cache {self.cache.root} (the run would download "
               f"it; run 'speedrun prefetch' for this code on a node with internet)" for n in self.missing]
        return out + self.bad


def plan_for_script(script: Path, root: Path) -> Plan:
    """What the code of a script's folder downloads, each checked against the cache under root."""
    folder = Path(script).parent
    cache = Cache.under(root)
    plan = Plan(cache)
    manifest = None
    for need in scan_folder(folder):
        entry = {"kind": need.kind, "what": need.what(), "where": need.where, "repo": need.repo, "ref": need.ref,
                 "encoding": need.encoding}
        local = stand_in(folder, need.module)
        if need.kind == "unresolved":
            entry.update(status="unresolved", line=f"{need.what()} at {need.where}: not prefetched")
        elif local is not None:
            entry.update(status="stand-in", stand_in=local.name,
                         line=f"{need.what()} at {need.where}: served by {local.name} beside the script "
                              f"(a local stand-in for the {need.module} package, not the download)")
        else:
            manifest = manifest if manifest is not None else cache.manifest()
            plan.needs.append(need)
            item = find_item(manifest, need)
            if item is None:
                plan.missing.append(need)
                entry.update(status="missing", line=f"{need.what()} at {need.where}: NOT in the download cache "
                                                    f"{cache.root}: the run would download it")
            else:
                problem = verify_item(cache, item)
                if problem:
                    plan.bad.append(f"{need.what()}: {problem}")
                    entry.update(status="bad", line=f"{need.what()} at {need.where}: {problem}")
                else:
                    rev = item.get("revision")
                    at = f"revision {rev}" if rev else "sha256 " + ", ".join(f["sha256"][:12] for f in item["files"])
                    entry.update(status="cached", revision=rev, files=item.get("files"),
                                 line=f"{need.what()} at {need.where}: from the cache, {at} (every run, offline)")
        plan.entries.append(entry)
    return plan


# ---------------------------------------------------------------------------------------------------------
# Fetching: adopt from a local folder (--from) or download


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _find_repo(sources: list[Path], repo_type: str, repo: str) -> Path | None:
    names = [repo_folder(repo_type, repo)] + ([repo_folder("kernel", repo)] if repo_type == "model" else [])
    for src in sources:
        for base in (src, src / "hub"):
            for name in names:
                if (base / name).is_dir():
                    return base / name
        if src.name in names:
            return src
    return None


def adopt_hub(cache: Cache, need: Need, sources: list[Path]) -> dict:
    """Copy one repo revision from a folder laid out as the hub cache into ours (blobs, snapshot links, ref)."""
    src = _find_repo(sources, need.repo_type, need.repo)
    if src is None:
        raise HarnessError(f"{need.what()}: no {repo_folder(need.repo_type, need.repo)} in "
                           + ", ".join(map(str, sources)))
    ref_file = src / "refs" / need.ref
    if ref_file.is_file():
        revision = ref_file.read_text(encoding="utf-8").strip()
    elif _COMMIT_RE.match(need.ref or "") and (src / "snapshots" / need.ref).is_dir():
        revision = need.ref
    else:
        refs = sorted(p.name for p in (src / "refs").glob("*")) if (src / "refs").is_dir() else []
        raise HarnessError(f"{need.what()}: {src} has no refs/{need.ref} (refs there: {', '.join(refs) or 'none'})")
    snap = src / "snapshots" / revision
    if not snap.is_dir():
        raise HarnessError(f"{need.what()}: {src} names revision {revision} but has no snapshots/{revision}")
    wanted = [snap / need.filename] if need.filename else sorted(p for p in snap.rglob("*") if p.is_file())
    if need.filename and not wanted[0].is_file():
        raise HarnessError(f"{need.what()}: {snap} has no {need.filename}")
    dst_repo = cache.repo_dir(need.repo_type, need.repo)
    files = {}
    for f in wanted:
        rel = f.relative_to(snap).as_posix()
        digest = sha256_file(f)
        blob = dst_repo / "blobs" / digest
        if not blob.is_file():
            _copy_file(f.resolve(), blob)
        link = dst_repo / "snapshots" / revision / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))  # the hub cache's own layout: snapshots link blobs
        files[rel] = digest
    if not _COMMIT_RE.match(need.ref):
        write_text_atomic(dst_repo / "refs" / need.ref, revision)
    _link_kernel_type(cache, need)
    return {"kind": "hub", "need": need.kind, "repo": need.repo, "repo_type": need.repo_type, "ref": need.ref,
            "revision": revision, "files": files, "from": str(src)}


def _link_kernel_type(cache: Cache, need: Need) -> None:
    """`kernels` releases that use the hub's kernel repo type look for kernels--owner--name; older ones (the
    records') for models--owner--name. One copy, both names."""
    if need.kind != "hub-kernel" or need.repo_type != "model":
        return
    alias = cache.repo_dir("kernel", need.repo)
    if not alias.exists() and not alias.is_symlink():
        alias.symlink_to(repo_folder("model", need.repo))


def download_hub(cache: Cache, need: Need) -> dict:
    """Download one repo revision from the hub into the cache (a node with internet)."""
    try:
        from huggingface_hub import snapshot_download  # deferred: optional, only for a download
    except ImportError:
        raise HarnessError("downloading from the hub needs huggingface_hub (pip install huggingface_hub), "
                           "or give --from DIR") from None
    kwargs = {"repo_id": need.repo, "repo_type": need.repo_type, "revision": need.ref, "cache_dir": str(cache.hub)}
    if need.filename:
        kwargs["allow_patterns"] = [need.filename]
    try:
        snap = Path(snapshot_download(**kwargs))
    except Exception as e:  # the hub library raises many kinds; one line for the user
        raise HarnessError(f"{need.what()}: download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    files = {p.relative_to(snap).as_posix(): sha256_file(p) for p in sorted(snap.rglob("*")) if p.is_file()}
    _link_kernel_type(cache, need)
    return {"kind": "hub", "need": need.kind, "repo": need.repo, "repo_type": need.repo_type, "ref": need.ref,
            "revision": snap.name, "files": files, "from": "hub"}


def fetch_tiktoken(cache: Cache, need: Need, sources: list[Path]) -> dict:
    """tiktoken's files for one encoding, checked against the sha256 tiktoken itself checks, under the names
    its cache uses. From --from folders (by file name, tiktoken cache name, or content) or downloaded."""
    files = TIKTOKEN_FILES.get(need.encoding)
    if files is None:
        raise HarnessError(f"tiktoken encoding {need.encoding!r} at {need.where}: unknown to the harness "
                           f"(known: {', '.join(sorted(TIKTOKEN_FILES))})")
    out = []
    for url, digest in files:
        data = _tiktoken_from_sources(url, digest, sources) if sources else _download_url(url)
        if data is None:
            raise HarnessError(f"tiktoken encoding {need.encoding}: no file with sha256 {digest[:12]} "
                               f"({url.rsplit('/', 1)[1]}) in {', '.join(map(str, sources))}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise HarnessError(f"tiktoken encoding {need.encoding}: {url} has the wrong sha256")
        name = tiktoken_cache_name(url)
        write_bytes_atomic(cache.tiktoken / name, data)
        out.append({"url": url, "cache_name": name, "sha256": digest})
    return {"kind": "tiktoken", "encoding": need.encoding, "files": out,
            "from": ", ".join(map(str, sources)) if sources else "download"}


def _tiktoken_from_sources(url: str, digest: str, sources: list[Path]) -> bytes | None:
    names = (url.rsplit("/", 1)[1], tiktoken_cache_name(url))
    for src in sources:
        for name in names:
            if (src / name).is_file() and sha256_file(src / name) == digest:
                return (src / name).read_bytes()
        for p in sorted(src.iterdir()) if src.is_dir() else []:  # same bytes under another name (gpt2.tiktoken)
            if p.is_file() and p.stat().st_size < 64 << 20 and sha256_file(p) == digest:
                return p.read_bytes()
    return None


def _download_url(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except OSError as e:
        raise HarnessError(f"download of {url} failed ({e})") from None


def prefetch(needs: list[Need], cache: Cache, sources: list[Path] | None = None) -> tuple[list[dict], list[str]]:
    """Fetch every need into the cache and merge the manifest; returns (items fetched, failures)."""
    sources = [Path(s).resolve() for s in sources or []]
    for s in sources:
        if not s.is_dir():
            raise HarnessError(f"--from {s}: no such folder")
    manifest = cache.manifest()
    fetched, failures, seen = [], [], set()
    for need in needs:
        if need.kind == "unresolved" or _need_key(need) in seen:
            continue
        seen.add(_need_key(need))
        try:
            if need.kind == "tiktoken":
                item = fetch_tiktoken(cache, need, sources)
            elif sources:
                item = adopt_hub(cache, need, sources)
            else:
                item = download_hub(cache, need)
        except HarnessError as e:
            failures.append(str(e))
            continue
        item["fetched"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["items"] = [i for i in manifest["items"] if _item_key(i) != _item_key(item)] + [item]
        fetched.append(item)
    if fetched:
        write_json_atomic(cache.manifest_path, manifest)
    return fetched, failures
