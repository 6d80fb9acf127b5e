"""Shard format: byte-exact layout, and a clear error for each way a file can be wrong."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf_core.data.tokens import read_shard, shard_files, shard_token_count, write_shard
from pgolf_core.types import DataError


def raw_shard(path: Path, header: tuple[int, ...], tokens: list[int], extra: bytes = b"") -> Path:
    """A shard written by hand with struct, independent of write_shard."""
    ints = list(header) + [0] * (256 - len(header))
    path.write_bytes(struct.pack("<256i", *ints) + struct.pack(f"<{len(tokens)}H", *tokens) + extra)
    return path


def test_round_trip_and_exact_bytes(tmp_path: Path) -> None:
    tokens = [1, 0, 65535, 1234, 7]
    path = write_shard(tmp_path / "fineweb_train_000000.bin", torch.tensor(tokens))
    data = path.read_bytes()
    assert len(data) == 1024 + 2 * len(tokens)
    assert data[:12] == struct.pack("<3i", 20240520, 1, 5) and data[12:1024] == bytes(1012)
    assert data[1024:] == struct.pack("<5H", *tokens)
    got = read_shard(path)
    assert got.dtype == torch.uint16 and got.to(torch.int64).tolist() == tokens
    assert shard_token_count(path) == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_reads_hand_made_shard_and_empty_shard(tmp_path: Path) -> None:
    assert read_shard(raw_shard(tmp_path / "a.bin", (20240520, 1, 3), [5, 6, 7])).tolist() == [5, 6, 7]
    assert read_shard(write_shard(tmp_path / "b.bin", np.array([], dtype=np.int64))).numel() == 0


@pytest.mark.parametrize("bad", [65536, -1])
def test_write_rejects_ids_outside_uint16(tmp_path: Path, bad: int) -> None:
    with pytest.raises(DataError, match=r"x\.bin: token ids must be in \[0, 65536\)"):
        write_shard(tmp_path / "x.bin", [1, bad])
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_the_old_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_shard(tmp_path / "s.bin", [1, 2, 3])

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_shard(path, [9] * 100)
    assert read_shard(path).tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]


@pytest.mark.parametrize(
    ("header", "tokens", "extra", "message"),
    [
        ((12345, 1, 2), [1, 2], b"", "has magic 12345, expected 20240520"),
        ((20240520, 2, 2), [1, 2], b"", "has version 2, expected 1"),
        ((20240520, 1, 3), [1, 2], b"", "header says 3 tokens, so expected 1030 bytes, file has 1028 bytes"),
        ((20240520, 1, 2), [1, 2], b"\0\0", "header says 2 tokens, so expected 1028 bytes, file has 1030 bytes"),
        ((20240520, 1, -1), [], b"", "header says -1 tokens"),
    ],
    ids=["bad-magic", "bad-version", "truncated", "too-long", "negative-count"],
)
def test_corrupt_shards_name_file_and_values(tmp_path: Path, header, tokens, extra, message) -> None:
    path = raw_shard(tmp_path / "fineweb_val_000000.bin", header, tokens, extra)
    with pytest.raises(DataError) as err:
        read_shard(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_truncated_header_and_missing_file(tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(struct.pack("<3i", 20240520, 1, 0) + bytes(88))
    with pytest.raises(DataError, match=r"short\.bin is truncated: expected a 1024-byte header, file has 100 bytes"):
        read_shard(short)
    with pytest.raises(DataError, match=r"cannot read shard .*missing\.bin"):
        read_shard(tmp_path / "missing.bin")


def test_shard_files_sorted_and_errors(tmp_path: Path) -> None:
    for name in ("fineweb_train_000002.bin", "fineweb_train_000000.bin", "fineweb_val_000000.bin", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in shard_files(tmp_path, "fineweb_train_*.bin")] == [
        "fineweb_train_000000.bin",
        "fineweb_train_000002.bin",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=re.escape(f"no files match 'fineweb_val_*.bin' in {empty}")):
        shard_files(empty, "fineweb_val_*.bin")
    with pytest.raises(DataError, match=re.escape(f"data directory {tmp_path / 'nope'} does not exist")):
        shard_files(tmp_path / "nope", "*.bin")
