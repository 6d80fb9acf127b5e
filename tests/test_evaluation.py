"""Evaluation: standard and sliding-window scores against naive loops on a
tiny random GPT, window/tail arithmetic at full scale, rank splits, and score-first chunked adaptation."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from pgolf_core import evaluation as ev
from pgolf_core.data.tokens import ByteTables
from pgolf_core.model import GPT, ModelSpec
from pgolf_core.types import Env, PgolfError, ValChunk
from tests.tiny import baseline_gpt

V, T = 64, 16
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny forwards gain nothing from threads, and on a busy machine spinning OpenMP threads make
    this module ~5x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


Tables = ByteTables  # random tables: the evaluator's byte rule does not depend on where they came from


@pytest.fixture(scope="module")
def tables() -> Tables:
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, 5, (V,), generator=g).to(torch.int16)
    lead = torch.rand(V, generator=g) < 0.5
    boundary = torch.zeros(V, dtype=torch.bool)
    boundary[:4] = True  # control / unknown ids
    base[:4], lead[:4] = 0, False
    return Tables(base, lead, boundary)


@pytest.fixture(scope="module")
def model() -> GPT:
    """Random weights everywhere (projections are zero-initialised, which would make the blocks
    identities and the scores independent of context)."""
    spec = ModelSpec(
        vocab_size=V, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64, train_seq_len=T
    )
    m = baseline_gpt(spec, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(
                noise * 0.5
                if name == "tok_emb.weight"
                else noise / p.size(-1) ** 0.5
                if p.ndim == 2
                else 1.0 + 0.3 * noise
            )
    return m


def stream(n: int, seed: int = 5) -> torch.Tensor:
    """Validation-like tokens (uint16 as the shards are), including boundary ids."""
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).to(torch.uint16)


def nbytes(prev: int, tgt: int, tables: Tables) -> int:
    return int(tables.base_bytes[tgt]) + int(bool(tables.has_leading_space[tgt]) and not bool(tables.is_boundary[prev]))


def nll_of(model: GPT, context: torch.Tensor, target: int) -> float:
    """NLL of `target` after `context`, from one unbatched, unpadded forward."""
    with torch.no_grad():
        logits = model.forward_logits(context[None].long())[0, -1].float()
    return float(F.cross_entropy(logits[None], torch.tensor([target])))


def close(a: float, b: float, rel: float = 2e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel)


# ---------------------------------------------------------------- standard


def test_standard_matches_hand_loop(model: GPT, tables: Tables) -> None:
    val = stream(5 * T + 1 + 7)  # 7 tokens beyond the last full row are never scored
    res = ev.eval_standard(model, val, T, 2, tables, Env(CPU))
    nll, count, byte_sum = 0.0, 0, 0
    v = val.long()
    for row in range(5):
        x, y = v[row * T : (row + 1) * T], v[row * T + 1 : (row + 1) * T + 1]
        with torch.no_grad():
            logits = model.forward_logits(x[None])[0].float()
        nll += float(F.cross_entropy(logits, y, reduction="sum").double())
        count += T
        byte_sum += sum(nbytes(int(a), int(b), tables) for a, b in zip(x, y, strict=True))
    assert res.tokens == count and res.bytes == byte_sum
    assert close(res.val_loss, nll / count)
    assert close(res.val_bpb, nll / (math.log(2) * byte_sum))
    assert model.training and res.seconds >= 0


def test_standard_rank_split_adds_up(model: GPT, tables: Tables) -> None:
    val = stream(7 * T + 1)
    one = ev.score_batches(model, ev.standard_batches(model, val, T, 2, tables, Env(CPU)), CPU)
    parts = [
        ev.score_batches(model, ev.standard_batches(model, val, T, 2, tables, Env(CPU, r, 2)), CPU) for r in range(2)
    ]
    assert sum(p.token_count.item() for p in parts) == one.token_count.item() == 7 * T
    assert sum(p.byte_count.item() for p in parts) == one.byte_count.item()
    assert close(sum(p.nll_sum.item() for p in parts), one.nll_sum.item())
    assert parts[0].token_count.item() == 3 * T  # rows [0, 3) and [3, 7): contiguous split


class Spy(torch.nn.Module):
    """Wraps a model and records, in order, every scoring forward (window inputs) and every chunk
    handed to the adaptation hook, so a test can check what was scored before what was handed."""

    def __init__(self, inner: GPT) -> None:
        super().__init__()
        self.inner, self.events = inner, []

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.events.append(("score", x.clone()))
        return self.inner.forward_logits(x)


def window_of(row: torch.Tensor, v: torch.Tensor, stride: int) -> int | None:
    """The start of the window whose inputs are `row` (None for a padding row)."""
    for ws in range(0, v.numel() - 1, stride):
        n = min(T, v.numel() - 1 - ws)
        if torch.equal(row[:n], v[ws : ws + n]) and not row[n:].any():
            return ws
    return None


@pytest.mark.parametrize("tail", ev.TAILS)
def test_chunked_sliding_without_adaptation_equals_plain(model: GPT, tables: Tables, tail: str) -> None:
    """Chunking changes only the batching: the same windows, tokens and bytes; the float64 loss sum is
    grouped by chunk, so it may differ in the last bits (measured: equal here)."""
    val, stride = stream(9 * T + 1 + 5), 4
    plain = ev.eval_sliding(model, val, T, stride, 3, tables, Env(CPU), tail=tail)
    chunked = ev.eval_sliding(model, val, T, stride, 3, tables, Env(CPU), tail=tail,
                              adapt=lambda chunk: None, chunk_tokens=2 * T + 3)  # fmt: skip
    assert (chunked.tokens, chunked.bytes) == (plain.tokens, plain.bytes)
    assert close(chunked.val_bpb, plain.val_bpb, rel=1e-12) and close(chunked.val_loss, plain.val_loss, rel=1e-12)


def test_adaptation_sees_only_scored_tokens_in_order(model: GPT, tables: Tables) -> None:
    """A cheating hook gets no access: each chunk's tokens are a copy (no storage to read ahead in),
    every one of its targets was scored by an earlier forward, and over the run the hook sees the
    targets 0..(K-1)*chunk in order, each once. It trains on every chunk (lr 0.5, a large step), and
    the next chunk is scored by the adapted model: the total differs from the frozen model's."""
    val, stride, chunk_tokens = stream(6 * T + 1 + 5), 4, 2 * T
    adapted = baseline_gpt(model.spec)
    adapted.load_state_dict(model.state_dict())
    spy, opt = Spy(adapted), torch.optim.SGD(adapted.parameters(), lr=0.5)

    def cheat(chunk: ValChunk) -> None:
        assert not torch.is_inference_mode_enabled() and adapted.training and chunk.scored
        assert chunk.tokens.untyped_storage().nbytes() == chunk.tokens.numel() * 8  # nothing beyond it
        spy.events.append(("adapt", chunk.tokens.clone()))
        x, y = chunk.rows(T)
        opt.zero_grad()
        adapted(x, y).backward()
        opt.step()

    res = ev.eval_sliding(spy, val, T, stride, 3, tables, Env(CPU), adapt=cheat, chunk_tokens=chunk_tokens)
    v, total = val.long(), val.numel() - 1
    scored: set[int] = set()
    handed: list[int] = []
    for kind, data in spy.events:
        if kind == "score":
            for row in data:
                if (ws := window_of(row, v, stride)) is not None:
                    lo, hi = ev.scored_span(ws, total, T, stride)
                    scored.update(range(ws + lo, ws + hi))
        else:
            first = len(handed)  # chunks are contiguous: the next chunk starts where the last one ended
            assert torch.equal(data, v[first : first + data.numel()])
            targets = range(first, first + data.numel() - 1)
            assert set(targets) <= scored, f"targets {sorted(set(targets) - scored)[:5]} handed before scoring"
            handed.extend(targets)
    k = -(-total // chunk_tokens)
    assert handed == list(range((k - 1) * chunk_tokens)) and [e[0] for e in spy.events].count("adapt") == k - 1
    frozen = ev.eval_sliding(model, val, T, stride, 3, tables, Env(CPU), adapt=lambda c: None,
                             chunk_tokens=chunk_tokens)  # fmt: skip
    assert res.tokens == frozen.tokens and not close(res.val_loss, frozen.val_loss, rel=1e-3)
    first_chunk = [ws for ws in range(0, total, stride) if ws + ev.scored_span(ws, total, T, stride)[0] < chunk_tokens]
    b0 = ev.sliding_batches(model, val, T, stride, 3, tables, Env(CPU), starts=first_chunk)
    b1 = ev.sliding_batches(spy.inner, val, T, stride, 3, tables, Env(CPU), starts=first_chunk)
    assert not torch.equal(next(b0).nll_sum, next(b1).nll_sum)  # the adapted model differs from the frozen one


def test_chunk_rows_are_this_ranks_share() -> None:
    tokens = torch.arange(5 * T + 3)
    chunk = ValChunk(tokens, 0, 2, Env(CPU, 1, 2))
    x, y = chunk.rows(T)  # 5 full rows: rank 1 of 2 gets rows [2, 5)
    assert torch.equal(x, tokens[2 * T : 5 * T].reshape(3, T))
    assert torch.equal(y, tokens[2 * T + 1 : 5 * T + 1].reshape(3, T))


# ---------------------------------------------------------------- window arithmetic


def count_scored(total: int, seq_len: int, stride: int, tail: str = "rescore_tail") -> tuple[int, int]:
    """(windows, scored positions) without a model: checks the tail arithmetic at full scale."""
    starts = ev.window_starts(total, seq_len, stride, tail)
    spans = (ev.scored_span(ws, total, seq_len, stride, tail) for ws in starts)
    return len(starts), sum(hi - lo for lo, hi in spans)


def literal_t05(total: int, seq_len: int, stride: int) -> Counter:
    """The records' rule, written out: first window all positions, later windows their last `stride`."""
    scored: Counter = Counter()
    for ws in range(0, total, stride):
        wlen = min(ws + seq_len, total) - ws
        lo = 0 if ws == 0 else max(wlen - stride, 0)
        scored.update(range(ws + lo, ws + wlen))
    return scored


def spans(total: int, seq_len: int, stride: int, tail: str) -> Counter:
    scored: Counter = Counter()
    for ws in ev.window_starts(total, seq_len, stride, tail):
        lo, hi = ev.scored_span(ws, total, seq_len, stride, tail)
        scored.update(range(ws + lo, ws + hi))
    return scored


@pytest.mark.parametrize("seq_len,stride", [(8, 1), (8, 3), (8, 4), (8, 8), (16, 5), (16, 16)])
def test_scored_positions_small_totals(seq_len: int, stride: int) -> None:
    for total in range(1, 70):
        assert spans(total, seq_len, stride, "rescore_tail") == literal_t05(total, seq_len, stride)
        once = spans(total, seq_len, stride, "once")
        assert once == Counter(range(total)), (total, seq_len, stride)  # every target exactly once
        record_extra = sum(literal_t05(total, seq_len, stride).values()) - total
        assert count_scored(total, seq_len, stride, "rescore_tail")[1] == total + record_extra
        if total % stride == 0 and seq_len % stride == 0 and total >= seq_len:
            assert record_extra == seq_len - stride  # (T/s - 1) clipped windows, each re-scoring s


def test_once_uses_the_first_window_containing_each_position() -> None:
    """Under tail="once" token p gets the context of the first window that contains it: the most
    context a window can give without re-scoring."""
    total, seq_len, stride = 61, 16, 5
    owner = {}
    for ws in ev.window_starts(total, seq_len, stride, "once"):
        lo, hi = ev.scored_span(ws, total, seq_len, stride, "once")
        owner.update({p: ws for p in range(ws + lo, ws + hi)})
    assert owner == {p: max(0, stride * math.ceil((p - seq_len + 1) / stride)) for p in range(total)}


def literal_pr63(total: int, seq_len: int, stride: int) -> Counter:
    """PR #63's loop, written out: `while pos + T < N` over N = total + 1 stream tokens; after the
    first window `pos = T - stride`, then `+= stride`; the first window scores all, later ones
    their last `stride` targets."""
    scored: Counter = Counter()
    pos = 0
    while pos + seq_len < total + 1:
        lo = 0 if pos == 0 else seq_len - stride
        scored.update(range(pos + lo, pos + seq_len))
        pos = seq_len - stride if pos == 0 else pos + stride
    return scored


@pytest.mark.parametrize("seq_len,stride", [(8, 1), (8, 3), (8, 4), (16, 5), (16, 15)])
def test_pr63_tail_is_the_records_loop(seq_len: int, stride: int) -> None:
    for total in range(1, 70):
        assert spans(total, seq_len, stride, "full_windows") == literal_pr63(total, seq_len, stride), total
    with pytest.raises(PgolfError, match="full_windows"):
        ev.window_starts(100, 16, 16, "full_windows")


def test_full_scale_counts() -> None:
    """The real validation set: 62,021,632 tokens, T=2048, stride 64."""
    assert count_scored(62_021_632, 2048, 64, "rescore_tail") == (969_088, 62_023_616)
    # PR #63: windows 0, 1984, 2048, ... while start + 2048 <= total; targets 2048..3967 never scored
    windows, scored = count_scored(62_021_632, 2048, 64, "full_windows")
    last = 1984 + 64 * ((62_021_632 - 2048 - 1984) // 64)
    assert windows == 2 + (last - 1984) // 64 and scored == last + 2048 - 1920
    windows, scored = count_scored(62_021_632, 2048, 64, "once")
    assert scored == 62_021_632 and windows == 969_088 - 31  # the clipped windows score nothing new


def test_bad_sliding_settings() -> None:
    with pytest.raises(PgolfError, match="stride"):
        ev.window_starts(100, 16, 17)
    with pytest.raises(PgolfError, match="stride"):
        ev.window_starts(100, 16, 0)
    with pytest.raises(PgolfError, match="tail"):
        ev.window_starts(100, 16, 4, "twice")


# ---------------------------------------------------------------- sliding


def test_sliding_with_full_stride_equals_standard(model: GPT, tables: Tables) -> None:
    val = stream(6 * T + 1)
    std = ev.eval_standard(model, val, T, 4, tables, Env(CPU))
    for tail in ("rescore_tail", "once"):  # "full_windows" rejects stride == seq_len (its loop would not end)
        sl = ev.eval_sliding(model, val, T, T, 4, tables, Env(CPU), tail=tail)
        assert (sl.tokens, sl.bytes) == (std.tokens, std.bytes)
        assert close(sl.val_loss, std.val_loss) and close(sl.val_bpb, std.val_bpb)


def test_sliding_once_equals_per_token_naive(model: GPT, tables: Tables) -> None:
    """Each token scored from the start of the first window containing it, one unpadded forward per
    token: checks padding, batching and span bookkeeping together."""
    val, stride = stream(5 * T + 1 - 3), 5  # total not a multiple of T or stride: a clipped tail
    total = val.numel() - 1
    res = ev.eval_sliding(model, val, T, stride, 3, tables, Env(CPU), tail="once")
    v = val.long()
    nll = byte_sum = 0.0
    for p in range(total):
        ws = max(0, stride * math.ceil((p - T + 1) / stride))
        nll += nll_of(model, v[ws : p + 1], int(v[p + 1]))
        byte_sum += nbytes(int(v[p]), int(v[p + 1]), tables)
    assert res.tokens == total and res.bytes == byte_sum
    assert close(res.val_loss, nll / total, rel=1e-5)
    assert close(res.val_bpb, nll / (math.log(2) * byte_sum), rel=1e-5)


def test_sliding_record_equals_window_loop(model: GPT, tables: Tables) -> None:
    """tail="rescore_tail": one window at a time, unpadded, scoring the records' positions (tail included)."""
    val, stride = stream(4 * T + 1), 4
    total = val.numel() - 1
    res = ev.eval_sliding(model, val, T, stride, 5, tables, Env(CPU), tail="rescore_tail")
    v = val.long()
    nll = count = byte_sum = 0.0
    for ws in range(0, total, stride):
        wlen = min(ws + T, total) - ws
        with torch.no_grad():
            logits = model.forward_logits(v[ws : ws + wlen][None])[0].float()
        lo = 0 if ws == 0 else max(wlen - stride, 0)
        y = v[ws + 1 : ws + wlen + 1]
        nll += float(F.cross_entropy(logits[lo:], y[lo:], reduction="sum"))
        count += wlen - lo
        byte_sum += sum(nbytes(int(v[ws + i]), int(y[i]), tables) for i in range(lo, wlen))
    assert count == total + T - stride and res.tokens == count and res.bytes == byte_sum
    assert close(res.val_loss, nll / count, rel=1e-5)


def test_sliding_pr63_equals_the_records_loop(model: GPT, tables: Tables) -> None:
    """tail="full_windows": PR #63's eval loop, one full window at a time (no padding ever needed)."""
    val, stride = stream(4 * T + 1 + 3), 4
    res = ev.eval_sliding(model, val, T, stride, 3, tables, Env(CPU), tail="full_windows")
    v = val.long()
    nll = count = byte_sum = 0.0
    pos = 0
    while pos + T < v.numel():
        with torch.no_grad():
            logits = model.forward_logits(v[pos : pos + T][None])[0].float()
        lo = 0 if pos == 0 else T - stride
        y = v[pos + 1 : pos + T + 1]
        nll += float(F.cross_entropy(logits[lo:], y[lo:], reduction="sum"))
        count += T - lo
        byte_sum += sum(nbytes(int(v[pos + i]), int(y[i]), tables) for i in range(lo, T))
        pos = T - stride if pos == 0 else pos + stride
    assert res.tokens == count and res.bytes == byte_sum
    assert close(res.val_loss, nll / count, rel=1e-5)
    assert close(res.val_bpb, nll / (math.log(2) * byte_sum), rel=1e-5)


def test_sliding_batches_have_one_shape(model: GPT, tables: Tables) -> None:
    """The short last batch is padded with empty windows: a compiled forward never recompiles."""
    spy = Spy(model)
    batches = list(ev.sliding_batches(spy, stream(3 * T + 1), T, 4, 5, tables, Env(CPU)))
    assert len(batches) == 3 and {tuple(x.shape) for _, x in spy.events} == {(5, T)}  # 12 windows
    assert sum(b.token_count.item() for b in batches) == 3 * T + T - 4


@pytest.mark.parametrize("tail", ev.TAILS)
def test_sliding_rank_split_adds_up(model: GPT, tables: Tables, tail: str) -> None:
    val, stride = stream(3 * T + 1 + 5), 6

    def sums(rank: int, world: int) -> ev.EvalSums:
        batches = ev.sliding_batches(model, val, T, stride, 4, tables, Env(CPU, rank, world), tail)
        return ev.score_batches(model, batches, CPU)

    one = sums(0, 1)
    for world in (2, 3):
        parts = [sums(r, world) for r in range(world)]
        assert sum(p.token_count.item() for p in parts) == one.token_count.item()
        assert sum(p.byte_count.item() for p in parts) == one.byte_count.item()
        assert close(sum(p.nll_sum.item() for p in parts), one.nll_sum.item())


def test_bf16_autocast_runs_on_cpu(model: GPT, tables: Tables) -> None:
    """Autocast is applied (the loss moves) and only rounds (it moves little): the relative change
    measured is 4.7e-4 (native, avx2) and 3.3e-4 (ATEN_CPU_CAPABILITY=default); bounds 10x either side."""
    val = stream(2 * T + 1)
    fp32 = ev.eval_sliding(model, val, T, 8, 4, tables, Env(CPU))
    bf16 = ev.eval_sliding(model, val, T, 8, 4, tables, Env(CPU, autocast_dtype=torch.bfloat16))
    assert bf16.tokens == fp32.tokens
    assert 3e-5 < abs(bf16.val_loss - fp32.val_loss) / fp32.val_loss < 5e-3
    assert model.training


def test_drop_short_keeps_the_first_window_and_drops_windows_shorter_than_the_stride() -> None:
    """PR #549's test-time-training eval keeps a window when `wlen >= stride or ws == 0`; its plain sliding eval
    (`rescore_tail`) keeps every start. They differ exactly when the stream's length is not a multiple of the
    stride: 70 targets, windows of 32 at stride 8 -> the start 64 (6 targets) is the extra window."""
    total, seq_len, stride = 70, 32, 8
    kept = ev.window_starts(total, seq_len, stride, "drop_short")
    assert kept == [ws for ws in range(0, total, stride) if ws == 0 or min(ws + seq_len, total) - ws >= stride]
    assert ev.window_starts(total, seq_len, stride, "rescore_tail") == [*kept, 64]
    assert ev.window_starts(64, seq_len, stride) == ev.window_starts(64, seq_len, stride, "drop_short")
    assert ev.window_starts(5, seq_len, stride, "drop_short") == [0]  # the first window, however short
