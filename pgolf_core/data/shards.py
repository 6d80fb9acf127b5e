"""The challenge's token shard format, read and written bit-compatibly.

A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count,
then zeros) followed by that many little-endian uint16 tokens. Readers check everything a
truncated download or a foreign file could get wrong, and say which file and which value, because
a silently short shard would quietly change the training stream or the validation score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pgolf_core.exporter import write_atomic
from pgolf_core.types import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def shard_token_count(path: str | Path) -> int:
    """Validate a shard's header and file size without reading its tokens; return the token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read shard {path}: {exc.strerror or exc}") from exc
    if len(raw) != HEADER_BYTES:
        raise DataError(f"shard {path} is truncated: expected a {HEADER_BYTES}-byte header, file has {size} bytes")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise DataError(f"shard {path} has magic {int(header[0])}, expected {MAGIC} (not a token shard?)")
    if int(header[1]) != VERSION:
        raise DataError(f"shard {path} has version {int(header[1])}, expected {VERSION}")
    n_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * n_tokens
    if n_tokens < 0 or size != expected:
        raise DataError(
            f"shard {path} size mismatch: header says {n_tokens} tokens, so expected {expected} bytes, "
            f"file has {size} bytes (truncated or incomplete download?)"
        )
    return n_tokens


def read_shard(path: str | Path) -> torch.Tensor:
    """All tokens of one shard as a uint16 tensor (the dtype the baseline loader uses). `shard_token_count`
    has just checked that the file holds exactly its header's token count, so the read gets all of them."""
    tokens = np.fromfile(path, dtype="<u2", count=shard_token_count(path), offset=HEADER_BYTES)
    return torch.from_numpy(tokens.astype(np.uint16, copy=False))


def check_shards(files: Sequence[str | Path], vocab_size: int) -> int:
    """Check every shard's header and its largest token id against the model's vocabulary, once,
    before training (a memory-mapped max per shard); return the total token count. An id >= vocab
    would otherwise be an IndexError hours into a run, or a silently wrong score."""
    total = 0
    for path in files:
        n = shard_token_count(path)
        top = int(np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,)).max()) if n else 0
        if top >= vocab_size:
            raise DataError(
                f"shard {path} holds token id {top}, but [model] vocab_size = {vocab_size} (ids must be "
                f"< {vocab_size}); were the shards made with another tokenizer?"
            )
        total += n
    if not total:
        raise DataError(f"the shards {files[0]} ... hold no tokens ({len(files)} files, all empty)")
    return total


def write_shard(path: str | Path, tokens: torch.Tensor | np.ndarray | Sequence[int]) -> Path:
    """Write tokens as a shard atomically (`exporter.write_atomic`), so a crash never leaves half a shard."""
    path = Path(path)
    arr = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise DataError(f"cannot write shard {path}: token ids must be in [0, 65536), got {arr.min()}..{arr.max()}")
    if arr.size >= 2**31:
        raise DataError(f"cannot write shard {path}: {arr.size} tokens do not fit the int32 header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, arr.size)
    write_atomic(path, header.tobytes() + arr.astype("<u2").tobytes())
    return path


def shard_files(directory: str | Path, pattern: str) -> list[Path]:
    """Sorted shards matching `pattern` in `directory` (the order the baseline streams them in)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"no files match {pattern!r} in {directory}")
    return files
