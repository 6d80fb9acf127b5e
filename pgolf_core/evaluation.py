"""Validation scoring in bits per byte: standard (non-overlapping rows) and sliding-window.

Evaluation is a sequence of batches. A generator scores one batch at a time under
`inference_mode` and yields it; the caller adds it to float64 sums. Test-time training
(`eval_sliding(..., adapt=...)`) splits the windows into chunks of validation tokens and hands a
chunk to the adaptation hook only after every window of it was scored: the hook never receives a
token before that token has been scored (the challenge's rule for test-time training).

The bytes BPB divides by come from `tables.target_bytes(prev_ids, target_ids, positions)`: the tokenizer's byte tables
(`pgolf_core.data.tokens.ByteTables`: `bytes(y | x) = base[y] + (leading_space[y] & ~boundary[x])`) or a per-token
byte sidecar (`SidecarBytes`: the original text's bytes of the target at each position of the stream, CaseOps).
Every evaluator passes both the ids and the positions, so each source reads what it needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, get_args, get_type_hints

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.types import Env, EvalConfig, PgolfError, ValChunk

TAILS: tuple[str, ...] = get_args(get_type_hints(EvalConfig)["sliding_tail"])  # the choices `[eval]` declares


class EvalResult(NamedTuple):
    """Final metrics of one evaluation; `tokens` and `bytes` are the (all-reduced) counts behind them."""

    val_loss: float
    val_bpb: float
    tokens: float
    bytes: float
    seconds: float


class EvalSums(NamedTuple):
    """Float64 running sums so ranks can be all-reduced and added: 0-d tensors on the eval device, which `add` and
    `all_reduce` change in place."""

    nll_sum: Tensor
    token_count: Tensor
    byte_count: Tensor

    @classmethod
    def zeros(cls, device: torch.device | str) -> EvalSums:
        return cls(*(torch.zeros((), device=device, dtype=torch.float64) for _ in range(3)))

    def add(self, batch: EvalSums) -> None:
        for mine, theirs in zip(self, batch, strict=True):
            mine += theirs

    def all_reduce(self) -> EvalSums:
        """Sum over ranks in place when a process group exists; a no-op in a single process."""
        if dist.is_available() and dist.is_initialized():
            for value in self:
                dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return self

    def result(self, seconds: float) -> EvalResult:
        """Loss and BPB in the baseline's order of operations, so the floats match its logs exactly."""
        tokens, nbytes = self.token_count.item(), self.byte_count.item()
        val_loss = (self.nll_sum / self.token_count).item()
        return EvalResult(val_loss, val_loss / math.log(2.0) * (tokens / nbytes), tokens, nbytes, seconds)


# ---------------------------------------------------------------- standard evaluation


def standard_batches(
    model: nn.Module, val_tokens: Tensor, seq_len: int, batch_seqs: int, tables: Any, env: Env
) -> Iterator[EvalSums]:
    """Score this rank's non-overlapping rows, `batch_seqs` rows per forward.

    The model returns the batch's mean loss, re-weighted here by the batch's token count (the
    baseline's `eval_val`).
    """
    rows_x, rows_y = ValChunk(val_tokens, 0, 1, env).rows(seq_len)  # the stream as one chunk: this rank's rows
    first, _ = env.share((val_tokens.numel() - 1) // seq_len)  # this rank's first row
    for i, (x, y) in enumerate(zip(rows_x.split(batch_seqs), rows_y.split(batch_seqs), strict=True)):
        x, y = x.to(env.device, torch.int64), y.to(env.device, torch.int64)
        at = torch.arange(y.numel(), device=env.device).view_as(y) + (first + i * batch_seqs) * seq_len + 1  # positions
        with torch.inference_mode(), env.autocast():
            loss = model(x, y).detach()
        with torch.inference_mode():
            count = torch.tensor(float(y.numel()), dtype=torch.float64, device=env.device)
            nll_sum = loss.to(torch.float64) * count
            nbytes = tables.target_bytes(x, y, at).to(torch.float64).sum()
        env.on_batch()
        yield EvalSums(nll_sum, count, nbytes)


def eval_standard(
    model: nn.Module, val_tokens: Tensor, seq_len: int, batch_seqs: int, tables: Any, env: Env
) -> EvalResult:
    """The baseline's `eval_val`: every target of the truncated stream scored once, context 0..T-1.

    Rows are split contiguously across ranks; sums are float64 and all-reduced when
    `torch.distributed` is initialized. The model is put in eval mode and left in train mode.
    """
    start = time.perf_counter()
    batches = standard_batches(model, val_tokens, seq_len, batch_seqs, tables, env)
    return score_batches(model, batches, env.device).all_reduce().result(time.perf_counter() - start)


def score_batches(model: nn.Module, batches: Iterator[EvalSums], device: torch.device) -> EvalSums:
    """This rank's raw sums (not all-reduced, so a rank split is testable without a process group)."""
    sums = EvalSums.zeros(device)
    model.eval()
    try:
        for batch in batches:
            sums.add(batch)
    finally:
        model.train()
    return sums


# ---------------------------------------------------------------- sliding-window evaluation


def scored_span(ws: int, total: int, seq_len: int, stride: int, tail: str = "rescore_tail") -> tuple[int, int]:
    """Window-local `[lo, hi)` of the positions a window starting at `ws` scores.

    "rescore_tail" (the records' loop): all of the first window, else its last `stride` positions
    `[max(wlen-stride, 0), wlen)`;
    windows clipped at `total` thereby re-score positions the last full window already scored.
    "once": the same, but starting where the previous window stopped, so nothing is scored twice.
    "full_windows" (PR #63's loop): as "rescore_tail" (its windows are all full, see `window_starts`).
    """
    wlen = min(ws + seq_len, total) - ws
    lo = 0 if ws == 0 else max(wlen - stride, 0)
    if tail == "once" and ws > 0:  # start where the previous window (which started at ws - stride) stopped
        lo = max(lo, min(ws - stride + seq_len, total) - ws)
    return lo, wlen


def window_starts(total: int, seq_len: int, stride: int, tail: str = "rescore_tail") -> list[int]:
    """Starts `0, s, 2s, ... < total` (every such window has `wlen >= 1`, the records' filter).

    With tail="drop_short", windows shorter than the stride are dropped, the first kept (PR #549's test-time
    training eval; its plain sliding eval keeps them, as "rescore_tail").
    With tail="once", windows that would score nothing (clipped ones after the stream's end was
    reached) are dropped: they would cost a forward for no score.
    With tail="full_windows", PR #63's own loop: full windows only (`start + seq_len <= total`), and the
    second window starts at `seq_len - stride`, not `stride`. So targets `[seq_len, 2*seq_len -
    2*stride)` are never scored (1,920 of 62M at T=2048, s=64), nor those after the last full window.
    """
    # Refuse a stride or tail the window arithmetic below cannot honour.
    if not 0 < stride <= seq_len:
        raise PgolfError(f"sliding-window stride must be in [1, seq_len={seq_len}] (got {stride})")
    if tail not in TAILS:
        raise PgolfError(f'sliding-window tail must be one of {TAILS} (got "{tail}")')
    if tail == "full_windows" and stride == seq_len:
        raise PgolfError('sliding-window tail "full_windows" needs stride < seq_len (PR #63\'s loop never ends there)')
    if tail == "full_windows":
        return [0, *range(seq_len - stride, total - seq_len + 1, stride)] if seq_len <= total else []
    # "rescore_tail" keeps every start; "once" drops the windows that would score nothing; "drop_short" those
    # shorter than the stride (PR #549's test-time-training eval: `wlen >= stride or ws == 0`).
    if tail == "drop_short":
        return [ws for ws in range(0, total, stride) if ws == 0 or min(ws + seq_len, total) - ws >= stride]
    return [ws for ws in range(0, total, stride) if tail == "rescore_tail" or ws == 0 or ws - stride + seq_len < total]


def sliding_batches(
    model: nn.Module,
    val_tokens: Tensor,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    tables: Any,
    env: Env,
    tail: str = "rescore_tail",
    starts: list[int] | None = None,
) -> Iterator[EvalSums]:
    """Score this rank's share of the windows `starts` (default: all of them), `batch_seqs` per
    `forward_logits` call, right-padded with zeros.

    Per-position cross-entropy in fp32; only the positions of `scored_span` count (padding never does).
    """
    total = val_tokens.numel() - 1
    starts = window_starts(total, seq_len, stride, tail) if starts is None else starts
    mine = starts[slice(*env.share(len(starts)))]
    positions = torch.arange(seq_len, device=env.device)
    for i in range(0, len(mine), batch_seqs):
        group = mine[i : i + batch_seqs]
        # Zero-padded [batch_seqs, T] rows built where the tokens live, moved in one copy: a short last
        # batch gets empty rows, so a compiled `forward_logits` sees one shape and never recompiles.
        x, y = torch.zeros(2, batch_seqs, seq_len, dtype=torch.int64, device=val_tokens.device)
        for row, ws in enumerate(group):
            end = min(ws + seq_len, total)
            window = val_tokens[ws : end + 1].to(torch.int64)
            x[row, : end - ws], y[row, : end - ws] = window[:-1], window[1:]
        x, y = x.to(env.device), y.to(env.device)
        # Padding rows (a short last batch) score nothing: span (0, 0). `at`: each target's position in the stream
        # (what a byte sidecar is indexed by).
        padding = [(0, 0, 0)] * (batch_seqs - len(group))
        spans = [(*scored_span(ws, total, seq_len, stride, tail), ws) for ws in group] + padding
        lo, hi, starts_t = torch.tensor(spans, dtype=torch.int64, device=env.device).unbind(1)
        at = (starts_t[:, None] + positions + 1).clamp(max=total)
        mask = (positions[None, :] >= lo[:, None]) & (positions[None, :] < hi[:, None])
        with torch.inference_mode(), env.autocast():
            logits = model.forward_logits(x)  # type: ignore[operator]  # nn.Module attributes type as Tensor
        with torch.inference_mode():
            nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
            # torch.where, not boolean indexing: no host sync per batch on a GPU.
            nll_sum = torch.where(mask, nll.reshape(y.shape).to(torch.float64), 0.0).sum()
            nbytes = torch.where(mask, tables.target_bytes(x, y, at).to(torch.float64), 0.0).sum()
        env.on_batch()
        yield EvalSums(nll_sum, mask.sum().to(torch.float64), nbytes)


def eval_sliding(
    model: nn.Module,
    val_tokens: Tensor,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    tables: Any,
    env: Env,
    tail: str = "rescore_tail",
    adapt: Callable[[ValChunk], None] | None = None,
    chunk_tokens: int = 32_768,
) -> EvalResult:
    """Sliding-window eval: each token scored with at least `seq_len - stride`
    tokens of context (except in the first window), using `model.forward_logits`.

    Windows start at `0, stride, 2*stride, ... < total` (`total = len(val_tokens) - 1`), are split
    contiguously across ranks and scored `batch_seqs` at a time. The first window scores all its
    positions, later ones their last `stride`.

    tail="rescore_tail" reproduces the records exactly, including their quirk: windows clipped at the
    end of the stream re-score the final positions (for 62,021,632 tokens, T=2048, s=64: 1,984
    extra scored tokens, 62,023,616 in all). tail="once" scores every target exactly once: a
    clipped window scores only positions no earlier window scored, and windows left with nothing
    to score are skipped. tail="drop_short" drops the windows shorter than the stride, as PR #549's
    test-time-training eval does. tail="full_windows" is PR #63's own loop (see `window_starts`).

    `adapt` (test-time training): the windows are scored chunk by chunk (each chunk's windows split
    across ranks), and after chunk k (but the last) `adapt` receives its tokens
    `val_tokens[k*chunk_tokens : (k+1)*chunk_tokens + 1]`, all scored by then; the model it adapts
    scores chunk k+1. Without `adapt` the windows are one chunk: the same scores, batched as before.

    Speed: pass a model whose `forward_logits` is compiled (PR #414 compiles it; every batch has
    the same shape, so one graph serves all). Eager and compiled bf16 scores differ by ~1e-4
    relative; with the same compiled function the result equals PR #414's bit for bit.
    """
    start = time.perf_counter()
    total = val_tokens.numel() - 1
    starts = window_starts(total, seq_len, stride, tail)
    groups = [starts]
    if adapt is not None:
        # The window starts of each chunk of `chunk_tokens` targets, a window belonging to the chunk of the
        # first target it scores (PR #461's rule). Every target of chunks 0..k is scored once the windows of
        # chunks 0..k are: a window scoring a target t < (k+1) * chunk_tokens starts scoring at or before t.
        groups = [[] for _ in range(max(1, -(-total // chunk_tokens)))]
        for ws in starts:
            first = ws + scored_span(ws, total, seq_len, stride, tail)[0]
            groups[min(first // chunk_tokens, len(groups) - 1)].append(ws)
    sums = EvalSums.zeros(env.device)
    for k, group in enumerate(groups):
        batches = sliding_batches(model, val_tokens, seq_len, stride, batch_seqs, tables, env, tail, group)
        sums.add(score_batches(model, batches, env.device))
        if adapt is not None and k < len(groups) - 1:
            tokens = val_tokens[k * chunk_tokens : min((k + 1) * chunk_tokens, total) + 1]
            adapt(ValChunk(tokens.to(env.device, torch.int64, copy=True), k, len(groups), env, seq_len=seq_len))
    return sums.all_reduce().result(time.perf_counter() - start)
