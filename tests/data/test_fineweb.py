"""FineWeb download (`pgolf data fineweb`): the published layouts, resuming from complete files, checksums, the record
it writes (and returns), and clear errors (exit 2 from the CLI, nothing half-written left where a rerun would trust it).

The download tests run the real `huggingface_hub` client against `hub_server.Hub`, a tiny repo of the published
layout served on 127.0.0.1. The client reads `HF_ENDPOINT` and `HF_HOME` when it is imported, so a download runs
either the CLI in a new process with that environment (`hub_server.Cli`) or, in-process, after a fresh import of the
client (the `client` fixture). Files already present need no `huggingface_hub` at all: those tests run in-process
with the package made unimportable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pgolf_core.data.build import BuiltDataset, ensure_sample_data
from pgolf_core.data.check import audit, guard
from pgolf_core.data.fineweb import KNOWN_REPOS, download_fineweb
from pgolf_core.data.tokens import HEADER_INTS, MAGIC, VERSION, write_shard
from pgolf_core.types import DataError
from tests.data.hub_server import Cli, Hub, commit_of

OFFICIAL, CASEOPS = "willdepueoai/parameter-golf", "sp8192_lossless_caps_caseops_v1_reserved"
SP1024 = "datasets/fineweb10B_sp1024"
Run = Callable[..., subprocess.CompletedProcess[str]]
MANIFEST = {  # the shape of the published datasets/manifest.json (paths relative to the export root)
    "tokenizers": [
        {
            "name": "sp_bpe_1024",
            "kind": "sentencepiece_bpe",
            "vocab_size": 1024,
            "model_path": "tokenizers/fineweb_1024_bpe.model",
            "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
        }
    ],
    "datasets": [
        {
            "name": "fineweb10B_sp1024",
            "tokenizer_name": "sp_bpe_1024",
            "path": "datasets/fineweb10B_sp1024",
            "stats": {"files_val": 1, "files_train": 3},
        }
    ],
}


def shard(tokens: list[int] | np.ndarray) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, len(tokens))
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_repo(variant: str, root: str = "datasets", n_val: int = 1, n_train: int = 3) -> dict[str, bytes]:
    """A repo of the published layout: `root/manifest.json`, the shards (600 tokens per validation shard, 402 per
    training shard; with byte sidecars for CaseOps: the manifest's `val_bytes_glob` and doc counts, as romeerp's),
    and the tokenizer's files."""
    vocab = int(variant[2:6])
    tokenizer = f"fineweb_{vocab}_bpe{variant[6:]}"
    dataset: dict[str, Any] = {
        "name": f"fineweb10B_{variant}",
        "tokenizer_name": f"sp_{variant}",
        "path": f"datasets/fineweb10B_{variant}",
        "stats": {"files_val": n_val, "files_train": n_train},
    }
    folder = f"datasets/fineweb10B_{variant}"
    files = {f"{folder}/fineweb_val_{i:06d}.bin": shard([1, *range(2, 600), i]) for i in range(n_val)}
    files |= {f"{folder}/fineweb_train_{i:06d}.bin": shard([1, *range(600, 1000), i]) for i in range(n_train)}
    if variant == CASEOPS:
        dataset["val_bytes_glob"] = "fineweb_val_bytes_*.bin"
        dataset["stats"] |= {"docs_val": 50000, "docs_train": 8181945}
        files |= {f"{folder}/fineweb_val_bytes_{i:06d}.bin": shard([0, *[1] * 598, 2]) for i in range(n_val)}
    tokenizers = {"model_path": f"tokenizers/{tokenizer}.model", "vocab_path": f"tokenizers/{tokenizer}.vocab"}
    files |= {path: f"{path} of {variant}".encode() for path in tokenizers.values()}
    manifest = {"tokenizers": [{"name": f"sp_{variant}", "vocab_size": vocab, **tokenizers}], "datasets": [dataset]}
    return {
        f"{root}/{path}".lstrip("/"): data
        for path, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items()
    }


@pytest.fixture(scope="module")
def fineweb() -> Iterator[Run]:
    """`fineweb(hub, tmp, *ARGS)`: `pgolf data fineweb ARGS --out tmp/data` in a new process pointed at `hub` (a Hub
    or a URL), with the Hugging Face cache in `tmp/hf`."""
    cli = Cli()

    def run(hub: Hub | str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
        env |= {"HF_ENDPOINT": hub if isinstance(hub, str) else hub.url, "HF_HOME": str(tmp / "hf")}
        return cli(["data", "fineweb", "--out", str(tmp / "data"), *args], env, tmp / "logs")

    yield run
    cli.close()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """In-process downloads through the real client: `client(url)` makes the next `import huggingface_hub` a fresh
    one, which reads `HF_ENDPOINT=url` (and `HF_HOME=tmp_path/hf`) as it is imported. The modules the process had
    are put back after the test."""

    def hub_module(name: str) -> bool:
        return name == "huggingface_hub" or name.startswith("huggingface_hub.")

    def forget() -> None:
        for name in [name for name in sys.modules if hub_module(name)]:
            del sys.modules[name]

    saved = {name: module for name, module in sys.modules.items() if hub_module(name)}
    for key in [k for k in os.environ if k.startswith("HF_") or "proxy" in k.lower()]:
        monkeypatch.delenv(key)

    def point(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        forget()

    yield point
    forget()
    sys.modules.update(saved)


def local_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def summary(text: str) -> list[str]:
    """The CLI's last lines: the download's count, then `data:`, `tokenizer:`, `tokens:` and `use:`."""
    return text.splitlines()[-5:]


@pytest.mark.parametrize(
    ("variant", "repo_id", "root"),
    [
        ("sp1024", OFFICIAL, "datasets"),
        ("sp8192", "someone/fineweb-mirror", "export/v2"),  # another repo of this layout: --repo-id, --remote-root
        (CASEOPS, "romeerp/parameter-golf-caseops-v1", "datasets"),
    ],
)
def test_download_layouts(tmp_path: Path, fineweb: Run, variant: str, repo_id: str, root: str) -> None:
    """Each published layout, through the real client: every file lands where the records' downloader puts it, with
    the served bytes; the manifest, written last, records the repo, the commit, the tokenizer, the stats of what was
    fetched and each file's sha256, size, kind and split (no split proof: a download has none); the CLI prints where
    it all is and the settings that use it (the sidecar pattern only where there are sidecars)."""
    repo = tiny_repo(variant, root, n_val=2, n_train=3)
    with Hub({repo_id: repo}) as hub:
        args = ["--repo-id", repo_id, "--remote-root", root] if variant == "sp8192" else []
        done = fineweb(hub, tmp_path, "--variant", variant, "--train-shards", "2", *args)
    assert done.returncode == 0, done.stderr
    data, folder = tmp_path / "data", f"datasets/fineweb10B_{variant}"
    wanted = {path.removeprefix(root).lstrip("/"): body for path, body in repo.items() if "train_000002" not in path}
    assert local_files(data) == {*wanted, f"{folder}/manifest.json"}
    assert all((data / path).read_bytes() == body for path, body in wanted.items())
    record = json.loads((data / folder / "manifest.json").read_text())
    assert {k: record[k] for k in ("schema", "repo_id", "remote_root", "variant", "revision")} == {
        "schema": "pgolf.download/1", "repo_id": repo_id, "remote_root": root, "variant": variant,
        "revision": commit_of(repo_id),
    }  # fmt: skip
    assert "split" not in record  # a download proves no split: `pgolf run` warns
    vocab, model = int(variant[2:6]), f"tokenizers/fineweb_{variant[2:6]}_bpe{variant[6:]}.model"
    assert record["tokenizer"] == {"file": f"../../{model}", "vocab_size": vocab}
    docs = {"docs_val": 50000, "docs_train": 8181945} if variant == CASEOPS else {}
    assert record["stats"] == {"files_val": 2, "files_train": 2, "tokens_val": 1200, "tokens_train": 804}  # fetched
    assert record["hub_stats"] == {"files_val": 2, "files_train": 3, **docs}  # the whole set, as the hub lists it

    def entry(name: str, body: bytes) -> dict[str, Any]:
        kind, split = "tokenizer", None
        if name.endswith(".bin"):
            kind, split = "bytes" if "_bytes_" in name else "tokens", "val" if "_val_" in name else "train"
        tokens = {"tokens": (len(body) - HEADER_INTS * 4) // 2} if name.endswith(".bin") else {}
        return {"sha256": sha256(body), "bytes": len(body), "kind": kind, "split": split, **tokens}

    named = {
        f"../../{p}" if p.startswith("tokenizers/") else p.removeprefix(f"{folder}/"): b for p, b in wanted.items()
    }
    del named["manifest.json"]
    assert record["files"] == {name: entry(name, body) for name, body in named.items()}
    sidecars = {name for name, e in record["files"].items() if e["kind"] == "bytes"}
    bytes_set = " --set data.val_bytes_pattern=fineweb_val_bytes_*.bin"
    if variant == CASEOPS:
        assert sidecars == {"fineweb_val_bytes_000000.bin", "fineweb_val_bytes_000001.bin"}
    else:
        assert not sidecars
    n = len(record["files"])
    assert f"data: {root}/manifest.json: downloading from {repo_id}" in done.stdout.splitlines()
    assert f"data: [1/{n}] {root}/{folder}/fineweb_val_000000.bin: downloading from {repo_id}" in done.stdout
    assert f"data: [{n}/{n}] {root}/tokenizers/" in done.stdout
    use = f"--set data.path={data / folder} --set data.tokenizer={data / model} --set model.vocab_size={vocab}"
    assert summary(done.stdout) == [
        f"data: {n + 1} files downloaded, 0 already complete",
        f"data:      {data / folder}",
        f"tokenizer: {data / model}",
        "tokens:    804 train, 1,200 val",
        f"use:       {use}" + bytes_set * (variant == CASEOPS),
    ]


def test_interrupted_download_fails_clearly_and_a_rerun_resumes(tmp_path: Path, fineweb: Run) -> None:
    """A transfer cut half-way: exit 2 naming the repo and file, nothing at its place (nor a manifest); the rerun
    fetches only what is missing (a connection dropped on the way is resumed by the client with a Range request)."""
    repo = tiny_repo("sp1024")
    shards = [f"datasets/{SP1024}/fineweb_train_{i:06d}.bin" for i in range(3)]
    repo[shards[2]] = shard(np.arange(6_000_000) % 1024)  # 12 MB: more than the client's 10 MiB chunk
    with Hub({OFFICIAL: repo}) as hub:
        hub.cut[shards[1]] = ("eof", len(repo[shards[1]]) // 2)
        first = fineweb(hub, tmp_path, "--train-shards", "3")
        data = tmp_path / "data"
        assert first.returncode == 2 and "Traceback" not in first.stderr
        assert (
            f"could not download datasets/{SP1024}/fineweb_train_000001.bin from the Hugging Face dataset {OFFICIAL}"
            in first.stderr
        )
        assert "Consistency check failed" in first.stderr and "rerun to resume" in first.stderr
        assert local_files(data) == {
            "manifest.json",
            f"{SP1024}/fineweb_val_000000.bin",
            f"{SP1024}/fineweb_train_000000.bin",
        }

        hub.requests.clear()
        hub.cut[shards[2]] = ("drop", 11_000_000)
        second = fineweb(hub, tmp_path, "--train-shards", "3")
    assert second.returncode == 0, second.stderr
    assert all((data / path.removeprefix("datasets/")).read_bytes() == body for path, body in repo.items())
    assert hub.gets() == [
        *(shards[1], shards[2], shards[2]),
        "datasets/tokenizers/fineweb_1024_bpe.model",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
    ]
    ((method, path, byte_range),) = [request for request in hub.requests if request[2]]  # the client's own resume
    assert (method, path) == ("GET", shards[2]) and 0 < int(str(byte_range).removeprefix("bytes=")[:-1]) <= 11_000_000
    lines = second.stdout.splitlines()
    assert "data: datasets/manifest.json: already complete" in lines
    assert f"data: [1/6] datasets/{SP1024}/fineweb_val_000000.bin: already complete" in lines
    assert f"data: [2/6] datasets/{SP1024}/fineweb_train_000000.bin: already complete" in lines
    assert f"data: [3/6] datasets/{SP1024}/fineweb_train_000001.bin: downloading from {OFFICIAL}" in lines
    assert summary(second.stdout)[0] == "data: 4 files downloaded, 3 already complete"
    record = json.loads((data / SP1024 / "manifest.json").read_text())
    assert record["revision"] == commit_of(OFFICIAL)
    assert record["stats"] == {"files_val": 1, "files_train": 3, "tokens_val": 600, "tokens_train": 6_000_804}
    assert {name: e["sha256"] for name, e in record["files"].items()} == {
        path.removeprefix(f"datasets/{SP1024}/").replace("datasets/tokenizers/", "../../tokenizers/"): sha256(body)
        for path, body in repo.items()
        if path != "datasets/manifest.json"
    }


def test_corrupt_download_is_refused_and_dropped_from_the_cache(tmp_path: Path, fineweb: Run) -> None:
    """Bytes that do not match the hub's sha256: exit 2 naming the repo and file, the file neither in place nor in the
    Hugging Face cache (which would hand it back), no manifest; once the hub serves it right, a rerun completes."""
    repo = tiny_repo("sp1024")
    bad = f"datasets/{SP1024}/fineweb_train_000000.bin"
    with Hub({OFFICIAL: repo}) as hub:
        hub.corrupt.add(bad)
        first = fineweb(hub, tmp_path, "--train-shards", "1")
        assert first.returncode == 2 and "Traceback" not in first.stderr
        assert f"{bad} from the Hugging Face dataset {OFFICIAL} is corrupt (sha256" in first.stderr
        assert not (tmp_path / "data" / SP1024 / "fineweb_train_000000.bin").exists()
        assert not (tmp_path / "data" / SP1024 / "manifest.json").exists()
        assert not list((tmp_path / "hf").rglob(sha256(repo[bad])))

        hub.corrupt.clear()
        second = fineweb(hub, tmp_path, "--train-shards", "1")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "data" / SP1024 / "fineweb_train_000000.bin").read_bytes() == repo[bad]
    record = json.loads((tmp_path / "data" / SP1024 / "manifest.json").read_text())
    assert record["files"]["fineweb_train_000000.bin"]["sha256"] == sha256(repo[bad])


def test_missing_file_repo_or_dataset_is_named(tmp_path: Path, fineweb: Run) -> None:
    """A 404 from the hub: exit 2, "<file> not found in <repo>", no manifest. Any variant goes with --repo-id; one
    the repo's manifest does not list is refused (after fetching the manifest again: the copy on disk may be another
    repo's)."""
    repo = tiny_repo("sp1024", n_val=2)
    del repo[f"datasets/{SP1024}/fineweb_val_000001.bin"]
    with Hub({OFFICIAL: repo}) as hub:
        missing = fineweb(hub, tmp_path, "--train-shards", "1")
        no_repo = fineweb(hub, tmp_path / "other", "--variant", "sp2048", "--repo-id", "nobody/nothing")
        hub.requests.clear()
        unlisted = fineweb(hub, tmp_path, "--variant", "sp2048", "--repo-id", OFFICIAL)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert (
        f"datasets/{SP1024}/fineweb_val_000001.bin not found in the Hugging Face dataset {OFFICIAL}" in missing.stderr
    )
    assert not (tmp_path / "data" / SP1024 / "manifest.json").exists()
    assert no_repo.returncode == 2
    assert "datasets/manifest.json not found in the Hugging Face dataset nobody/nothing" in no_repo.stderr
    assert unlisted.returncode == 2 and "Traceback" not in unlisted.stderr
    manifest = tmp_path / "data" / "manifest.json"
    assert f"{manifest} (from {OFFICIAL}) lists no dataset named 'fineweb10B_sp2048'" in unlisted.stderr
    # asked for again (the hub's answer names the copy its cache holds from the first run), then refused
    assert hub.requests == [("HEAD", "datasets/manifest.json", None)]


def test_offline_is_exit_2_and_keeps_what_is_there(tmp_path: Path, fineweb: Run) -> None:
    """The hub unreachable and a truncated shard on disk (an interrupted copy): exit 2 naming the file it needed, and
    every file on disk left as it was."""
    data = populate(tmp_path / "data", 2)
    shard_path = data / "fineweb_train_000001.bin"
    shard_path.write_bytes(shard_path.read_bytes()[:-2])
    before = on_disk(tmp_path / "data")
    with Hub({}) as hub:
        url = hub.url  # closed once the block ends: nothing listens there
    done = fineweb(url, tmp_path, "--train-shards", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        f"could not download datasets/{SP1024}/fineweb_train_000001.bin from the Hugging Face dataset {OFFICIAL}"
        in done.stderr
    )
    assert "ConnectError" in done.stderr and "rerun to resume" in done.stderr
    assert on_disk(tmp_path / "data") == before


# -- in-process, through the real client ---------------------------------------------------------------------------


def test_offline_error_names_the_file_and_leaves_nothing(tmp_path: Path, client: Callable[[str], None]) -> None:
    """`download_fineweb` with the hub unreachable: a DataError naming the file, the repo and the cause, and nothing
    written where the data would go."""
    with Hub({}) as hub:
        url = hub.url  # closed once the block ends
    client(url)
    log: list[str] = []
    with pytest.raises(DataError) as err:
        download_fineweb("sp1024", 1, tmp_path / "data", log=log.append)
    message = str(err.value)
    assert message.startswith(f"could not download datasets/manifest.json from the Hugging Face dataset {OFFICIAL} (")
    assert "ConnectError" in message and message.endswith("; rerun to resume")
    assert log == [f"data: datasets/manifest.json: downloading from {OFFICIAL}"]
    assert not (tmp_path / "data").exists()


def test_download_returns_the_record_it_wrote(tmp_path: Path, client: Callable[[str], None]) -> None:
    """The result is the dataset folder, the tokenizer model and the record on disk; a file downloaded now gets the
    sha256 checked on the way, not the one an earlier record held for a file of its size, and the new commit."""
    repo = tiny_repo("sp1024")
    out, data = tmp_path / "data", tmp_path / "data" / SP1024
    data.mkdir(parents=True)
    train0 = repo[f"datasets/{SP1024}/fineweb_train_000000.bin"]
    stale = {"fineweb_train_000000.bin": {"sha256": "f" * 64, "bytes": len(train0), "kind": "tokens", "split": "train"}}
    (data / "manifest.json").write_text(json.dumps({"revision": "0" * 40, "files": stale}))  # the file is not there
    log: list[str] = []
    with Hub({OFFICIAL: repo}) as hub:
        client(hub.url)
        got = download_fineweb("sp1024", 1, out, log=log.append)
    record = json.loads((data / "manifest.json").read_text())
    assert got == BuiltDataset(data, out / "tokenizers" / "fineweb_1024_bpe.model", record)
    assert record["revision"] == commit_of(OFFICIAL)
    assert record["files"]["fineweb_train_000000.bin"]["sha256"] == sha256(train0)
    assert record["stats"] == {"files_val": 1, "files_train": 1, "tokens_val": 600, "tokens_train": 402}
    remote = [
        "datasets/manifest.json",
        f"datasets/{SP1024}/fineweb_val_000000.bin",
        f"datasets/{SP1024}/fineweb_train_000000.bin",
        "datasets/tokenizers/fineweb_1024_bpe.model",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
    ]
    assert hub.gets() == remote
    assert log == [
        f"data: {remote[0]}: downloading from {OFFICIAL}",
        *(f"data: [{i}/4] {path}: downloading from {OFFICIAL}" for i, path in enumerate(remote[1:], 1)),
        "data: 5 files downloaded, 0 already complete",
    ]


def test_a_rerun_keeps_to_the_commit_of_the_first_run(tmp_path: Path, client: Callable[[str], None]) -> None:
    """The hub moved on since the first run: a rerun that fetches more shards takes them from the commit its record
    names, so every file of the folder comes from one commit (and the hashes it carries over stay true)."""
    first, moved = tiny_repo("sp1024"), tiny_repo("sp1024")
    shard1 = f"{SP1024}/fineweb_train_000001.bin"
    moved[f"datasets/{shard1}"] = shard([1, 2, 3])
    out = tmp_path / "data"
    with Hub({OFFICIAL: first}) as hub:
        client(hub.url)
        download_fineweb("sp1024", 1, out, log=lambda msg: None)
        hub.advance(OFFICIAL, moved, "b" * 40)
        got = download_fineweb("sp1024", 2, out, log=lambda msg: None)
    assert (out / shard1).read_bytes() == first[f"datasets/{shard1}"] != moved[f"datasets/{shard1}"]
    assert got.manifest["revision"] == commit_of(OFFICIAL)
    assert got.manifest["files"]["fineweb_train_000001.bin"]["sha256"] == sha256(first[f"datasets/{shard1}"])


def test_run_guard_accepts_a_download_with_a_warning(
    tmp_path: Path, client: Callable[[str], None], sample_cache: Path
) -> None:
    """`pgolf run`'s data check on a downloaded folder: nothing in it proves the split (the published sets hold no
    document fingerprints), so it warns and goes on."""
    repo = tiny_repo("sp1024")
    repo["datasets/tokenizers/fineweb_1024_bpe.model"] = ensure_sample_data(log=lambda msg: None).tokenizer.read_bytes()
    with Hub({OFFICIAL: repo}) as hub:
        client(hub.url)
        got = download_fineweb("sp1024", 2, tmp_path / "data", log=lambda msg: None)
    shards = sorted(got.path.glob("fineweb_train_*.bin")) + sorted(got.path.glob("fineweb_val_*.bin"))
    assert [p.name for p in shards] == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
    ]
    log: list[str] = []
    guard(got.path, shards, [], got.tokenizer, log.append)
    assert len(log) == 1 and log[0].startswith(f"warning: nothing proves the validation documents of {got.path} ")
    assert log[0].endswith(f"run `pgolf data check {got.path}`")
    # The audit checks every file against the record, with the tokenizer the record names (another variant's
    # tokenizer beside it, as after a second download into the same folder, does not confuse it).
    (tmp_path / "data" / "tokenizers" / "fineweb_8192_bpe.model").write_bytes(got.tokenizer.read_bytes())
    lines: list[str] = []
    problems = audit(got.path, None, lines.append)
    assert f"tokenizer {got.path / '../../tokenizers/fineweb_1024_bpe.model'} (1024 pieces, BOS 1)" in lines
    assert sum(line.startswith("ok      ") and ": sha256 " in line for line in lines) == 5  # each file as recorded
    # the one problem is the tiny repo's own: train shard 1 ends with token 1, a BOS starting an empty document
    assert problems == ["train: 3 documents, 267.0 tokens on average, max 401, 1 empty"]


# -- without the hub: files already complete ---------------------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import huggingface_hub` fail, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)


def populate(out: Path, train_shards: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(MANIFEST))
    data = out / SP1024
    data.mkdir(parents=True)
    write_shard(data / "fineweb_val_000000.bin", [1, 5, 6])
    for i in range(train_shards):
        write_shard(data / f"fineweb_train_{i:06d}.bin", [1, 7, 8, 9])
    (out / "tokenizers").mkdir()
    for name in ("fineweb_1024_bpe.model", "fineweb_1024_bpe.vocab"):
        (out / "tokenizers" / name).write_bytes(b"x")
    return data


def on_disk(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_variant_without_a_known_repo_needs_repo_id(tmp_path: Path) -> None:
    """Each variant the records used goes to the repo that publishes it; any other needs --repo-id (whose manifest
    then decides: `test_missing_file_repo_or_dataset_is_named`)."""
    assert KNOWN_REPOS == {
        "sp1024": OFFICIAL, "sp4096": "kevclark/parameter-golf",
        "sp8192": "kevclark/parameter-golf", CASEOPS: "romeerp/parameter-golf-caseops-v1",
    }  # fmt: skip
    known = rf"\(known: sp1024, sp4096, sp8192, {CASEOPS}\); give --repo-id"
    for bad in ("gpt2", "sp2048", "byte260"):  # byte260 has no SentencePiece model: pgolf cannot train on it
        with pytest.raises(DataError, match=f"no known repo has FineWeb '{bad}' {known}"):
            download_fineweb(bad, 1, tmp_path / "unused", log=lambda msg: None)
    assert not (tmp_path / "unused").exists()


def test_complete_files_are_not_downloaded_again(tmp_path: Path, no_hub: None) -> None:
    """Everything on disk and complete: no hub needed, the record written (and returned) from the files as they are;
    a rerun rewrites the same record and touches nothing else."""
    data = populate(tmp_path, 2)
    before = on_disk(tmp_path)
    log: list[str] = []
    got = download_fineweb("sp1024", 2, tmp_path, log=log.append)
    record_path = data / "manifest.json"
    assert on_disk(tmp_path) == {**before, record_path: on_disk(data)[record_path]}  # only the record written
    assert log[-1] == "data: 0 files downloaded, 6 already complete"  # manifest, 1 val, 2 train, model, vocab
    assert len(log) == 7 and all(line.endswith(": already complete") for line in log[:-1])
    record = json.loads(record_path.read_text())
    assert got == BuiltDataset(data, tmp_path / "tokenizers" / "fineweb_1024_bpe.model", record)

    def entry(path: Path, kind: str, split: str | None, **tokens: int) -> dict[str, Any]:
        return {
            "sha256": sha256(path.read_bytes()),
            "bytes": path.stat().st_size,
            "kind": kind,
            "split": split,
            **tokens,
        }

    tok = tmp_path / "tokenizers"
    assert record == {
        "schema": "pgolf.download/1",
        "repo_id": OFFICIAL,
        "remote_root": "datasets",
        "variant": "sp1024",
        "revision": None,  # nothing downloaded, no earlier record
        "tokenizer": {"file": "../../tokenizers/fineweb_1024_bpe.model", "vocab_size": 1024},
        "stats": {"files_val": 1, "files_train": 2, "tokens_val": 3, "tokens_train": 8},
        "hub_stats": {"files_val": 1, "files_train": 3},
        "files": {
            "fineweb_val_000000.bin": entry(data / "fineweb_val_000000.bin", "tokens", "val", tokens=3),
            "fineweb_train_000000.bin": entry(data / "fineweb_train_000000.bin", "tokens", "train", tokens=4),
            "fineweb_train_000001.bin": entry(data / "fineweb_train_000001.bin", "tokens", "train", tokens=4),
            "../../tokenizers/fineweb_1024_bpe.model": entry(tok / "fineweb_1024_bpe.model", "tokenizer", None),
            "../../tokenizers/fineweb_1024_bpe.vocab": entry(tok / "fineweb_1024_bpe.vocab", "tokenizer", None),
        },
    }
    others = {path: state for path, state in on_disk(tmp_path).items() if path != record_path}
    text = record_path.read_text()
    log.clear()
    again = download_fineweb("sp1024", 2, tmp_path, log=log.append)
    assert record_path.read_text() == text and again == got  # the same record (its mtime may change)
    assert {path: state for path, state in on_disk(tmp_path).items() if path != record_path} == others
    assert log[-1] == "data: 0 files downloaded, 6 already complete"


def test_a_complete_file_of_the_recorded_size_is_not_hashed_again(tmp_path: Path, no_hub: None) -> None:
    """A file found complete at the size the earlier record of the same repo gives keeps that record's sha256
    (hashing every shard again on each rerun would tell nothing new); at another size it is hashed; the earlier
    commit is kept. A record of another repo carries nothing over."""
    data = populate(tmp_path, 2)
    train0, train1 = data / "fineweb_train_000000.bin", data / "fineweb_train_000001.bin"
    vocab = tmp_path / "tokenizers" / "fineweb_1024_bpe.vocab"
    earlier = {
        "repo_id": OFFICIAL,
        "remote_root": "datasets",
        "revision": "c" * 40,
        "files": {
            "fineweb_train_000000.bin": {"sha256": "e" * 64, "bytes": train0.stat().st_size + 1},
            "fineweb_train_000001.bin": {"sha256": "f" * 64, "bytes": train1.stat().st_size},
            "../../tokenizers/fineweb_1024_bpe.vocab": {"sha256": "d" * 64, "bytes": 1},
        },
    }
    (data / "manifest.json").write_text(json.dumps(earlier))
    got = download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    record = json.loads((data / "manifest.json").read_text())
    assert got.manifest == record and record["revision"] == "c" * 40
    assert {name: entry["sha256"] for name, entry in record["files"].items()} == {
        "fineweb_val_000000.bin": sha256((data / "fineweb_val_000000.bin").read_bytes()),
        "fineweb_train_000000.bin": sha256(train0.read_bytes()),  # another size: hashed
        "fineweb_train_000001.bin": "f" * 64,  # the size recorded: carried over, not hashed
        "../../tokenizers/fineweb_1024_bpe.model": sha256(b"x"),
        "../../tokenizers/fineweb_1024_bpe.vocab": "d" * 64,
    }
    assert sha256(vocab.read_bytes()) == sha256(b"x")
    (data / "manifest.json").write_text(json.dumps({**earlier, "repo_id": "someone/else"}))
    other = download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None).manifest
    assert other["revision"] is None and other["files"]["fineweb_train_000001.bin"]["sha256"] == sha256(
        train1.read_bytes()
    )


def test_incomplete_shard_is_fetched_again(tmp_path: Path, no_hub: None) -> None:
    data = populate(tmp_path, 2)
    shard_path = data / "fineweb_train_000001.bin"
    shard_path.write_bytes(shard_path.read_bytes()[:-2])  # an interrupted copy: size no longer matches the header
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    assert not (data / "manifest.json").exists()


def test_bad_requests(tmp_path: Path, no_hub: None) -> None:
    populate(tmp_path, 2)
    for asked in (4, -1):
        with pytest.raises(DataError, match=f"sp1024 has 3 training shards on {OFFICIAL}; asked for {asked}"):
            download_fineweb("sp1024", asked, tmp_path, log=lambda msg: None)
    # the manifest on disk is the official repo's: for sp4096 it fetches kevclark's, which needs the hub
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        download_fineweb("sp4096", 1, tmp_path, log=lambda msg: None)
