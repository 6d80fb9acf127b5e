"""Token stream, distributed batches and validation truncation on hand-made shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf_core.data.tokens import DistributedTokenLoader, TokenStream, load_validation_tokens, write_shard
from pgolf_core.types import DataError, PgolfError


@pytest.fixture
def two_shards(tmp_path: Path) -> list[Path]:
    """Shard 0 holds 0..11, shard 1 holds 100..109: 22 tokens whose values say where they came from."""
    return [
        write_shard(tmp_path / "fineweb_train_000000.bin", list(range(12))),
        write_shard(tmp_path / "fineweb_train_000001.bin", list(range(100, 110))),
    ]


def test_stream_crosses_shards_and_wraps(two_shards: list[Path]) -> None:
    stream = TokenStream(two_shards)
    assert stream.take(4).tolist() == [0, 1, 2, 3]
    assert stream.take(10).tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 100, 101]
    assert stream.take(11).tolist() == [102, 103, 104, 105, 106, 107, 108, 109, 0, 1, 2]
    assert stream.take(30).tolist() == [*range(3, 12), *range(100, 110), *range(11)]


def test_two_ranks_get_disjoint_spans_exactly_as_the_baseline(two_shards: list[Path]) -> None:
    # global 8 tokens, 2 ranks, 1 micro-step: local = 4, span = 5, chunk = 10 tokens per call.
    loaders = [DistributedTokenLoader(two_shards, rank, 2, "cpu") for rank in (0, 1)]
    expected = [
        # (rank 0 x, rank 0 y, rank 1 x, rank 1 y)
        ([[0, 1], [2, 3]], [[1, 2], [3, 4]], [[5, 6], [7, 8]], [[6, 7], [8, 9]]),
        ([[10, 11], [100, 101]], [[11, 100], [101, 102]], [[103, 104], [105, 106]], [[104, 105], [106, 107]]),
        ([[108, 109], [0, 1]], [[109, 0], [1, 2]], [[3, 4], [5, 6]], [[4, 5], [6, 7]]),  # wrapped around
    ]
    for x0, y0, x1, y1 in expected:
        (ax0, ay0), (ax1, ay1) = (loader.next_batch(8, 2, 1) for loader in loaders)
        assert ax0.dtype == ay0.dtype == torch.int64 and ax0.shape == (2, 2)
        assert (ax0.tolist(), ay0.tolist(), ax1.tolist(), ay1.tolist()) == (x0, y0, x1, y1)
        # Spans are disjoint, and the pair (end of rank 0's span -> start of rank 1's) is never trained on.
        assert not set(ax0.flatten().tolist() + [ay0[-1, -1].item()]) & set(ax1.flatten().tolist())
        pairs = {
            (a, b)
            for x, y in ((ax0, ay0), (ax1, ay1))
            for a, b in zip(x.flatten().tolist(), y.flatten().tolist(), strict=True)
        }
        assert (ay0[-1, -1].item(), ax1[0, 0].item()) not in pairs


def test_grad_accum_divides_the_global_batch(two_shards: list[Path]) -> None:
    loader = DistributedTokenLoader(two_shards, 1, 2, "cpu")
    x, y = loader.next_batch(16, 2, 2)  # 16 / (2 ranks * 2 micro-steps) = 4 tokens per micro-batch
    assert x.tolist() == [[5, 6], [7, 8]] and y.tolist() == [[6, 7], [8, 9]]
    with pytest.raises(PgolfError, match="not a positive multiple of seq_len=3"):
        loader.next_batch(16, 3, 2)


def test_all_empty_shards_raise_instead_of_spinning(tmp_path: Path) -> None:
    stream = TokenStream([write_shard(tmp_path / "a.bin", []), write_shard(tmp_path / "b.bin", [])])
    with pytest.raises(DataError, match="all 2 shards in .* are empty"):
        stream.take(1)


def test_validation_truncation(tmp_path: Path) -> None:
    files = [write_shard(tmp_path / "v0.bin", list(range(11))), write_shard(tmp_path / "v1.bin", list(range(11, 17)))]
    assert load_validation_tokens(files, 4).tolist() == list(range(17))  # 16 targets = 4 rows of 4
    assert load_validation_tokens(files, 5).tolist() == list(range(16))  # 15 targets = 3 rows of 5
    assert load_validation_tokens(files, 4, max_tokens=9).tolist() == list(range(9))  # cut to 10, then 2 rows
    assert load_validation_tokens(files, 4, max_tokens=100).tolist() == list(range(17))
    with pytest.raises(DataError, match=r"has 17 tokens; need at least 21 for seq_len=20"):
        load_validation_tokens(files, 20)
    with pytest.raises(DataError, match=r"has 3 tokens \(after max_tokens=2\); need at least 5 for seq_len=4"):
        load_validation_tokens(files, 4, max_tokens=2)
