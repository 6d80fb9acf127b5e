"""FineWeb download (`pgolf data fineweb`): the published layouts, resuming from complete files, checksums, and clear
errors (exit 2 from the CLI, nothing half-written left where a rerun would trust it).

The download tests run the real `huggingface_hub` client against `hub_server.Hub`, a tiny repo of the published
layout served on 127.0.0.1. The client reads `HF_ENDPOINT` and `HF_HOME` when it is imported, so each download runs
the CLI in a new process with that environment (`hub_server.Cli`). Files already present need no `huggingface_hub`
at all: those tests run in-process with the package made unimportable.
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

from pgolf_core.data.fineweb import dataset_name, download_fineweb
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


def tiny_repo(variant: str, root: str = "datasets", n_val: int = 1, n_train: int = 3) -> dict[str, bytes]:
    """A repo of the published layout: `root/manifest.json`, the shards (with byte sidecars for CaseOps: the
    manifest's `val_bytes_glob` and doc counts, as romeerp's), and the tokenizer's files."""
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


def local_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


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
    the served bytes; the manifest, written last, records the repo, the commit and each file's sha256."""
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
    files = record["files"]
    names = {f"../../{p}" if p.startswith("tokenizers/") else p.removeprefix(f"{folder}/") for p in wanted}
    assert set(files) == names - {"manifest.json"}
    assert all(files[n]["sha256"] == hashlib.sha256((data / folder / n).read_bytes()).hexdigest() for n in files)
    kinds = {n: (e["kind"], e["split"]) for n, e in files.items()}
    assert kinds["fineweb_val_000001.bin"] == ("tokens", "val")
    assert kinds["fineweb_train_000001.bin"] == ("tokens", "train")
    assert {k for k in kinds.values() if k[0] == "tokenizer"} == {("tokenizer", None)}
    sidecars = {n for n, k in kinds.items() if k == ("bytes", "val")}
    if variant == CASEOPS:
        assert sidecars == {"fineweb_val_bytes_000000.bin", "fineweb_val_bytes_000001.bin"}
        assert record["split"] == {"docs_val": 50000, "docs_train": 8181945, "verified": False}
        assert "--set data.val_bytes_pattern=fineweb_val_bytes_*.bin" in done.stdout
    else:
        assert not sidecars and record["split"] == {"verified": False}
    n = len(files)
    assert f"[1/{n}] {root}/{folder}/fineweb_val_000000.bin: downloading from {repo_id}" in done.stdout
    assert f"[{n}/{n}] {root}/tokenizers/" in done.stdout and f"--set data.tokenizer={data}/tokenizers/" in done.stdout


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
    assert (data / SP1024 / "manifest.json").is_file()
    assert hub.gets() == [
        *(shards[1], shards[2], shards[2]),
        "datasets/tokenizers/fineweb_1024_bpe.model",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
    ]
    ((method, path, byte_range),) = [request for request in hub.requests if request[2]]  # the client's own resume
    assert (method, path) == ("GET", shards[2]) and 0 < int(str(byte_range).removeprefix("bytes=")[:-1]) <= 11_000_000


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
        assert not list((tmp_path / "hf").rglob(hashlib.sha256(repo[bad]).hexdigest()))

        hub.corrupt.clear()
        second = fineweb(hub, tmp_path, "--train-shards", "1")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "data" / SP1024 / "fineweb_train_000000.bin").read_bytes() == repo[bad]


def test_missing_file_or_repo_is_named(tmp_path: Path, fineweb: Run) -> None:
    """A 404 from the hub: exit 2, "<file> not found in <repo>", no manifest. Any sp<N> variant goes with --repo-id."""
    repo = tiny_repo("sp1024", n_val=2)
    del repo[f"datasets/{SP1024}/fineweb_val_000001.bin"]
    with Hub({OFFICIAL: repo}) as hub:
        missing = fineweb(hub, tmp_path, "--train-shards", "1")
        no_repo = fineweb(hub, tmp_path / "other", "--variant", "sp2048", "--repo-id", "nobody/nothing")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert (
        f"datasets/{SP1024}/fineweb_val_000001.bin not found in the Hugging Face dataset {OFFICIAL}" in missing.stderr
    )
    assert not (tmp_path / "data" / SP1024 / "manifest.json").exists()
    assert no_repo.returncode == 2
    assert "datasets/manifest.json not found in the Hugging Face dataset nobody/nothing" in no_repo.stderr


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


def test_variant_names() -> None:
    assert dataset_name("sp1024") == "fineweb10B_sp1024" and dataset_name("byte260") == "fineweb10B_byte260"
    assert dataset_name(CASEOPS) == f"fineweb10B_{CASEOPS}"
    for bad in ("gpt2", "sp", "sp1024-x", "byte256"):
        with pytest.raises(DataError, match=f"unknown FineWeb variant '{bad}'"):
            dataset_name(bad)
    with pytest.raises(DataError, match=r"no known repo has FineWeb 'sp2048' \(known: sp1024, byte260, sp4096"):
        download_fineweb("sp2048", 1, "unused", log=lambda msg: None)


def test_complete_files_are_not_downloaded_again(tmp_path: Path, no_hub: None) -> None:
    data = populate(tmp_path, 2)
    before = on_disk(tmp_path)
    got = download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    record = data / "manifest.json"
    assert on_disk(tmp_path) == {**before, record: on_disk(data)[record]}  # only the manifest written
    assert (got.downloaded, got.skipped) == (0, 6)  # manifest, 1 val, 2 train, model, vocab
    assert got.path == data and got.tokenizer == tmp_path / "tokenizers" / "fineweb_1024_bpe.model"
    assert [p.name for p in got.val_files] == ["fineweb_val_000000.bin"] and got.val_bytes_files == []
    assert [p.name for p in got.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    files = json.loads(record.read_text())["files"]
    assert files["fineweb_train_000001.bin"] == {
        "sha256": hashlib.sha256((data / "fineweb_train_000001.bin").read_bytes()).hexdigest(),
        "bytes": (data / "fineweb_train_000001.bin").stat().st_size, "kind": "tokens", "split": "train",
    }  # fmt: skip
    assert files["../../tokenizers/fineweb_1024_bpe.vocab"]["kind"] == "tokenizer"
    written = on_disk(tmp_path)
    download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    assert on_disk(tmp_path) == written  # nothing new: the record of these files stays (and nothing is hashed)


def test_incomplete_shard_is_fetched_again(tmp_path: Path, no_hub: None) -> None:
    data = populate(tmp_path, 2)
    shard_path = data / "fineweb_train_000001.bin"
    shard_path.write_bytes(shard_path.read_bytes()[:-2])  # an interrupted copy: size no longer matches the header
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    assert not (data / "manifest.json").exists()


def test_bad_requests(tmp_path: Path, no_hub: None) -> None:
    populate(tmp_path, 2)
    with pytest.raises(DataError, match=f"sp1024 has only 3 training shards on {OFFICIAL}"):
        download_fineweb("sp1024", 4, tmp_path, log=lambda msg: None)
    with pytest.raises(DataError, match="train_shards must be >= 0"):
        download_fineweb("sp1024", -1, tmp_path, log=lambda msg: None)
    # the manifest on disk is the official repo's: for sp4096 it fetches kevclark's, which needs the hub
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        download_fineweb("sp4096", 1, tmp_path, log=lambda msg: None)
