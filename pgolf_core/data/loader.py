"""The training token stream and the validation tokens, with the baseline's exact semantics.

Training reads shards in order and wraps around forever: no shuffling, no document alignment.
Each micro-step takes one contiguous chunk for all ranks and gives every rank its own disjoint
span, so a run's data order depends only on (shards, world size, batch shape), never on timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pgolf_core.data.shards import read_shard
from pgolf_core.types import DataError, PgolfError


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
