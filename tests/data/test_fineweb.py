"""FineWeb download (`pgolf data fineweb`): the official remote layout, resuming from complete files,
clear offline errors (exit 2 from the CLI, files on disk kept).

The hub cannot be reached from tests. Files already present need no `huggingface_hub` at all, so the
resume tests run with the package made unimportable; only the offline test stands in a fake
`hf_hub_download` (the network boundary) to check the request it would have sent and the error.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from pgolf_core.data.fineweb import dataset_name, download_fineweb
from pgolf_core.data.tokens import write_shard
from pgolf_core.types import DataError

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


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import huggingface_hub` fail, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)


def populate(out: Path, train_shards: int) -> Path:
    (out / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(MANIFEST))
    data = out / "datasets" / "fineweb10B_sp1024"
    data.mkdir(parents=True)
    write_shard(data / "fineweb_val_000000.bin", [1, 5, 6])
    for i in range(train_shards):
        write_shard(data / f"fineweb_train_{i:06d}.bin", [1, 7, 8, 9])
    (out / "tokenizers").mkdir()
    for name in ("fineweb_1024_bpe.model", "fineweb_1024_bpe.vocab"):
        (out / "tokenizers" / name).write_bytes(b"x")
    return data


def test_variant_names() -> None:
    assert dataset_name("sp1024") == "fineweb10B_sp1024" and dataset_name("byte260") == "fineweb10B_byte260"
    with pytest.raises(DataError, match="unknown FineWeb variant 'gpt2'"):
        dataset_name("gpt2")


def on_disk(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_complete_files_are_not_downloaded_again(tmp_path: Path, no_hub: None) -> None:
    data = populate(tmp_path, 2)
    before = on_disk(tmp_path)
    got = download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)
    assert on_disk(tmp_path) == before  # not rewritten, not touched
    assert (got.downloaded, got.skipped) == (0, 6)  # manifest, 1 val, 2 train, model, vocab
    assert got.path == data and got.tokenizer == tmp_path / "tokenizers" / "fineweb_1024_bpe.model"
    assert [p.name for p in got.val_files] == ["fineweb_val_000000.bin"]
    assert [p.name for p in got.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]


def test_incomplete_shard_is_fetched_again(tmp_path: Path, no_hub: None) -> None:
    data = populate(tmp_path, 2)
    shard = data / "fineweb_train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # an interrupted copy: size no longer matches the header
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        download_fineweb("sp1024", 2, tmp_path, log=lambda msg: None)


def test_bad_requests(tmp_path: Path, no_hub: None) -> None:
    populate(tmp_path, 2)
    with pytest.raises(DataError, match="sp1024 has only 3 training shards on willdepueoai/parameter-golf"):
        download_fineweb("sp1024", 4, tmp_path, log=lambda msg: None)
    with pytest.raises(DataError, match="lists no dataset named 'fineweb10B_sp4096'"):
        download_fineweb("sp4096", 1, tmp_path, log=lambda msg: None)
    with pytest.raises(DataError, match="train_shards must be >= 0"):
        download_fineweb("sp1024", -1, tmp_path, log=lambda msg: None)


def test_offline_error_names_the_file_and_keeps_going_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def offline(**kwargs: object) -> str:
        calls.append(kwargs)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=offline))
    with pytest.raises(DataError) as err:
        download_fineweb("sp1024", 1, tmp_path, log=lambda msg: None)
    message = str(err.value)
    assert "could not download datasets/manifest.json" in message and "Network is unreachable" in message
    assert "offline" in message and "resume" in message
    assert calls == [
        {
            "repo_id": "willdepueoai/parameter-golf",
            "filename": "manifest.json",
            "subfolder": "datasets",
            "repo_type": "dataset",
        }
    ]
    assert not list(tmp_path.iterdir())  # nothing partial left behind


def test_cli_offline_is_exit_2_and_keeps_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pgolf data fineweb` with a truncated shard (an interrupted copy) and the hub unreachable: exit 2, no
    traceback, the remote name of the file it needed, and every file on disk left as it was."""
    from pgolf_core.cli import main

    def offline(**kwargs: object) -> str:
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=offline))
    data = populate(tmp_path, 2)
    shard = data / "fineweb_train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    before = on_disk(tmp_path)
    assert main(["data", "fineweb", "--train-shards", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Network is unreachable" in err
    assert "could not download datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin" in err
    assert "are kept" in err
    assert on_disk(tmp_path) == before and not list(tmp_path.rglob(".*part-*"))  # nothing partial left
