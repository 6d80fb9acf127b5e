"""Tokens on disk and in memory: the challenge's shard format, the training stream and the validation tokens, and
the byte tables of the bits-per-byte metric. Each section below says the rules it keeps exactly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sentencepiece as spm
import torch

from pgolf_core.exporter import write_atomic
from pgolf_core.types import DataError, PgolfError

# ---------------------------------------------------------------- shards
# The challenge's token shard format, read and written bit-compatibly.
#
# A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count,
# then zeros) followed by that many little-endian uint16 tokens. Readers check everything a
# truncated download or a foreign file could get wrong, and say which file and which value, because
# a silently short shard would quietly change the training stream or the validation score.

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
    magic, version, n_tokens = map(int, np.frombuffer(raw, dtype="<i4", count=3))
    if magic != MAGIC:
        raise DataError(f"shard {path} has magic {magic}, expected {MAGIC} (not a token shard?)")
    if version != VERSION:
        raise DataError(f"shard {path} has version {version}, expected {VERSION}")
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


def shard_files(directory: str | Path, pattern: str, sidecars: bool = False) -> list[Path]:
    """Sorted shards matching `pattern` in `directory` (the order the baseline streams them in): token shards, or
    with `sidecars` the per-token byte sidecars (`fineweb_val_bytes_*`, below), never the one for the other."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    matches = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not (files := [p for p in matches if ("_bytes_" in p.name) == sidecars]):
        kind = "token shards" if sidecars else "per-token byte sidecars, not tokens ([data] val_bytes_pattern)"
        why = f"; {matches[0].name} ... are {kind}" if matches else ""
        raise DataError(f"no files match {pattern!r} in {directory}{why}")
    return files


def document_starts(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """True where a document starts: every document of the challenge's data begins with BOS (no EOS), so this one
    mask is where loaders, techniques that must not cross documents and per-document scorers cut. A boolean mask of
    `tokens`' shape, not positions, so it traces under `torch.compile(fullgraph=True)`; `.nonzero()` gives positions."""
    return tokens == bos_id


# ---------------------------------------------------------------- the token streams
# The training token stream and the validation tokens, with the baseline's exact semantics.
#
# Training reads shards in order and wraps around forever: no shuffling, no document alignment.
# Each micro-step takes one contiguous chunk for all ranks and gives every rank its own disjoint
# span, so a run's data order depends only on (shards, world size, batch shape), never on timing.


class TokenStream:
    """Tokens of `files` read one shard at a time, in order, wrapping to the first after the last."""

    def __init__(self, files: Sequence[str | Path]):
        self.files = [Path(f) for f in files]
        self.file_idx = -1
        self.tokens, self.pos = torch.empty(0, dtype=torch.uint16), 0  # the first `take` reads the first shard

    def _next_file(self) -> None:
        """Move to the next non-empty shard, wrapping around; an error (not an endless loop) when all are empty."""
        for _ in self.files:
            self.file_idx = (self.file_idx + 1) % len(self.files)
            self.tokens, self.pos = read_shard(self.files[self.file_idx]), 0
            if self.tokens.numel():
                return
        raise DataError(f"all {len(self.files)} shards in {self.files[0].parent} are empty")

    def take(self, n: int) -> torch.Tensor:
        """The next `n` tokens (uint16), crossing shard boundaries and wrapping as needed."""
        parts: list[torch.Tensor] = []
        while n > 0:
            if self.pos >= self.tokens.numel():
                self._next_file()
            k = min(n, self.tokens.numel() - self.pos)
            parts.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            n -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class DistributedTokenLoader:
    """Batches for one rank: a shared chunk of `(local + 1) * world_size` tokens per call, of which
    rank r takes `[r * (local + 1), (r + 1) * (local + 1))`; inputs are the span minus its last token,
    targets the span shifted by one (so the last token of a span is only ever a target)."""

    def __init__(self, files: Sequence[str | Path], rank: int, world_size: int, device: torch.device | str):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.stream = TokenStream(files)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        local = global_tokens // (self.world_size * grad_accum_steps)
        if local <= 0 or local % seq_len:
            raise PgolfError(
                f"batch of {global_tokens} tokens over {self.world_size} ranks x {grad_accum_steps} micro-steps "
                f"gives {local} tokens per micro-batch, which is not a positive multiple of seq_len={seq_len}"
            )
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = chunk[self.rank * span : (self.rank + 1) * span].to(torch.int64)
        x, y = mine[:-1].reshape(-1, seq_len), mine[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_validation_tokens(files: Sequence[str | Path], seq_len: int, max_tokens: int = 0) -> torch.Tensor:
    """All validation tokens concatenated and cut to `k * seq_len + 1` (every target scored once).

    `max_tokens > 0` first keeps only the first `max_tokens + 1` tokens (quick evaluations).
    """
    tokens = torch.cat([read_shard(f) for f in files])[: max_tokens + 1 if max_tokens > 0 else None]
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    if usable <= 0:
        raise DataError(
            f"validation split in {Path(files[0]).parent} has {tokens.numel()} tokens"
            f"{f' (after max_tokens={max_tokens})' if max_tokens > 0 else ''}; "
            f"need at least {seq_len + 1} for seq_len={seq_len}"
        )
    return tokens[: usable + 1].contiguous()


# ---------------------------------------------------------------- bits per byte: the byte tables
# Byte lookup tables for the bits-per-byte metric, with the challenge's exact rules.
#
# BPB divides the summed NLL by the UTF-8 bytes of the (NFKC-normalized) text the targets spell, so
# scores stay comparable across tokenizers. A piece's bytes are its text without one leading "▁"; the
# "▁" itself is one space byte, except right after a boundary token (BOS, <unk>, other control ids),
# where no space is counted. <unk> and control ids count 0 bytes. Byte pieces count 1.

# Bytes each target spells given the token before it: one rule, shared with the evaluator.

SPACE = "\u2581"


class ByteTables(NamedTuple):
    """Per-id tables: `base_bytes` (int16), `has_leading_space` (bool), `is_boundary` (bool)."""

    base_bytes: torch.Tensor
    has_leading_space: torch.Tensor
    is_boundary: torch.Tensor

    def to(self, device: torch.device | str) -> ByteTables:
        return ByteTables(*(t.to(device) for t in self))

    def target_bytes(self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bytes of each target given the token before it (int16, the ids' shape); `positions` is not needed."""
        lead = self.has_leading_space[tgt_ids] & ~self.is_boundary[prev_ids]
        return self.base_bytes[tgt_ids].to(torch.int16) + lead.to(torch.int16)


# A per-token byte sidecar (the CaseOps records): shards of the token format beside the validation shards, named
# `fineweb_val_bytes_*`, one value per validation token: the UTF-8 bytes of the original text that token stands
# for (0 for BOS and for a marker alone). The byte tables would count the transformed pieces (a CaseOps marker is
# 3 bytes of no text), so a recipe on such data names its sidecars ([data] val_bytes_pattern) and BPB divides by
# their sum. A shard named so ("_bytes_") is never read as tokens (`shard_files`).


class SidecarBytes(NamedTuple):
    """The validation stream's bytes, one per token (int32), by position in the stream."""

    values: torch.Tensor

    def to(self, device: torch.device | str) -> SidecarBytes:
        return SidecarBytes(self.values.to(device))

    def target_bytes(self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bytes of the targets at `positions` of the validation stream (the ids are not needed)."""
        return self.values[positions]


def load_byte_sidecar(files: list[Path], token_files: list[Path], tokens: torch.Tensor, bos_id: int) -> SidecarBytes:
    """The sidecar of the validation `tokens` (read from `token_files`, perhaps cut short), refused unless it pairs
    with them token for token: as many values as the shards hold tokens, and 0 bytes at every BOS."""
    values, n = torch.cat([read_shard(f) for f in files]).to(torch.int32), sum(map(shard_token_count, token_files))
    if values.numel() != n:
        raise DataError(f"byte sidecars {files[0].name} ... hold {values.numel()} values for {n} validation tokens")
    if len(bad := (document_starts(tokens, bos_id) & (values[: tokens.numel()] != 0)).nonzero().flatten()):
        raise DataError(f"byte sidecars {files[0].name} ...: validation token {int(bad[0])} is BOS but counts bytes")
    return SidecarBytes(values[: tokens.numel()].clone())  # not a view: the rest of the sidecar is freed


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """The tokenizer, refused when its vocabulary is not `vocab_size` (the score would be of other text)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"tokenizer {path} not found (expected a SentencePiece .model file)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"tokenizer {path} is not a valid SentencePiece .model file ({exc})") from exc
    if vocab_size is not None and int(sp.vocab_size()) != vocab_size:
        raise DataError(f"[model] vocab_size = {vocab_size} but tokenizer {path} has {int(sp.vocab_size())} pieces")
    return sp


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTables:
    """Tables of size max(tokenizer vocab, model vocab); ids the tokenizer lacks are boundaries of 0 bytes."""
    n = max(int(sp.vocab_size()), vocab_size)
    base = np.zeros(n, dtype=np.int16)
    lead = np.zeros(n, dtype=np.bool_)
    boundary = np.ones(n, dtype=np.bool_)
    for i in range(int(sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        piece = sp.id_to_piece(i)  # byte pieces are "<0xNN>": never a leading "▁", always one byte
        lead[i] = piece.startswith(SPACE)
        base[i] = 1 if sp.is_byte(i) else len(piece.removeprefix(SPACE).encode())
    return ByteTables(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary))


class Data(NamedTuple):
    """The shards, the tokenizer, the validation tokens and where BPB's bytes come from (`ByteTables` or
    `SidecarBytes`: each has `target_bytes(prev_ids, tgt_ids, positions)`)."""

    train_files: list[Path]
    tokenizer_path: Path
    val_tokens: torch.Tensor
    tables: Any
    eval_seq: int
