"""The embedded sample: official settings, official layout, bit-identical rebuilds, safe caching."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from pgolf_core.data import build as sample_mod
from pgolf_core.data.build import BuiltDataset, cache_root, ensure_sample_data, sample_documents
from pgolf_core.data.check import sha256_file
from pgolf_core.data.tokens import (
    build_byte_tables,
    load_validation_tokens,
    read_shard,
    shard_files,
)
from pgolf_core.types import DataError

OFFICIAL_SETTINGS = {  # the official tokenizer's settings, byte_fallback as in the shipped model
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": False,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}


@pytest.fixture
def sample(sample_cache: Path) -> BuiltDataset:
    return ensure_sample_data(log=lambda msg: None)


def test_cached_sample_is_reused(sample_cache: Path, sample: BuiltDataset) -> None:
    messages: list[str] = []
    again = ensure_sample_data(log=messages.append)
    assert again.path == sample.path and messages == []  # no rebuild
    assert sample.path.parent == sample_cache == cache_root()
    assert sample.path.name == f"sample-{sample_mod.sample_key()}"


def test_manifest_and_layout(sample: BuiltDataset) -> None:
    m = sample.manifest
    docs = sample_documents()
    assert m["schema"] == "pgolf.dataset/2" and m["bos_id"] == 1 and m["append_eos"] is False
    assert {k: v for k, v in m["tokenizer"]["trainer"].items() if k in OFFICIAL_SETTINGS} == OFFICIAL_SETTINGS
    assert m["tokenizer"]["sha256"] == sha256_file(sample.tokenizer) and m["tokenizer"]["vocab_size"] == 1024
    stats = m["stats"]
    assert stats["docs_total"] == len(docs) and stats["docs_val"] == len(docs) // 10
    val, train = shard_files(sample.path, "fineweb_val_*.bin"), shard_files(sample.path, "fineweb_train_*.bin")
    assert [p.name for p in val + train] == list(m["files"])
    assert (len(val), len(train)) == (stats["files_val"], stats["files_train"]) and len(train) >= 2
    for p in val + train:
        assert m["files"][p.name]["tokens"] == read_shard(p).numel()
    assert all(m["files"][p.name]["tokens"] == sample_mod.SAMPLE_SHARD for p in train[:-1])
    val_tokens = torch.cat([read_shard(p) for p in val]).to(torch.int64)
    train_tokens = torch.cat([read_shard(p) for p in train]).to(torch.int64)
    assert (val_tokens.numel(), train_tokens.numel()) == (stats["tokens_val"], stats["tokens_train"])
    # Every document is [BOS] + ids with no EOS: BOS count = document count, stream starts with BOS.
    assert val_tokens[0] == 1 and int((val_tokens == 1).sum()) == stats["docs_val"]
    assert train_tokens[0] == 1 and int((train_tokens == 1).sum()) == stats["docs_train"]
    assert not bool((val_tokens == 2).any() or (train_tokens == 2).any())
    assert 300_000 < stats["tokens_train"] and 20_000 < stats["tokens_val"]
    assert load_validation_tokens(val, 1024).numel() % 1024 == 1


def test_tokenizer_behaves_like_the_official_settings(sample: BuiltDataset) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(sample.tokenizer))
    assert (sp.vocab_size(), sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1024, 0, 1, 2, 3)
    assert not any(sp.is_byte(i) for i in range(sp.vocab_size()))  # byte_fallback false
    assert sp.encode("12345", out_type=str) == ["1", "2", "3", "4", "5"]  # split_digits
    assert not sp.encode("hello", out_type=str)[0].startswith("▁")  # add_dummy_prefix false
    assert sp.normalize("ﬁ\n\n  x") == "fi▁x"  # nmt_nfkc


def test_val_documents_decode_back_in_order_and_bytes_add_up(sample: BuiltDataset) -> None:
    """Shards hold the first 10% of documents in order; their BPB byte count equals the normalized text."""
    sp = spm.SentencePieceProcessor(model_file=str(sample.tokenizer))
    tables = build_byte_tables(sp, 1024)
    stream = read_shard(sample.path / "fineweb_val_000000.bin").to(torch.int64)
    starts = (stream == 1).nonzero().flatten().tolist() + [stream.numel()]
    docs = sample_documents()
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        ids = stream[a + 1 : b].tolist()
        assert ids == sp.encode(docs[i])
        if 3 not in ids:
            n_bytes = int(tables.target_bytes(stream[a : b - 1], stream[a + 1 : b], None).sum())
            assert n_bytes == len(sp.decode(ids).encode())


def test_rebuild_is_bit_identical(sample: BuiltDataset, tmp_path: Path) -> None:
    other = ensure_sample_data(tmp_path / "cache", log=lambda msg: None)
    assert other.path != sample.path and other.path.name == sample.path.name
    names = sorted(p.name for p in sample.path.iterdir())
    assert names == sorted(p.name for p in other.path.iterdir())
    for name in names:
        assert (sample.path / name).read_bytes() == (other.path / name).read_bytes(), name


def test_concurrent_builders_share_one_cache(tmp_path: Path) -> None:
    results: list[BuiltDataset] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_sample_data(tmp_path, log=lambda msg: None))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0].path == results[1].path
    assert [p.name for p in tmp_path.iterdir()] == [results[0].path.name]  # no temporary directory left
    assert json.loads((results[0].path / "manifest.json").read_text())["files"]


def test_incomplete_cache_is_reported(sample: BuiltDataset, tmp_path: Path) -> None:
    copy = tmp_path / sample.path.name
    copy.mkdir()
    (copy / "manifest.json").write_bytes((sample.path / "manifest.json").read_bytes())
    with pytest.raises(DataError, match="is incomplete .*delete that directory"):
        ensure_sample_data(tmp_path, log=lambda msg: None)


def test_cache_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGOLF_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PGOLF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "pgolf"
