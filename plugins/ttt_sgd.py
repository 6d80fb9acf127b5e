"""Full-model SGD test-time training (TTT) as PR #297's code runs it; pre-scoring (the record) or score-first.

What: `epochs` (1) passes in file order over the full rows of `seq_len` tokens (0 = the model's
`train_seq_len`, the record's 2048) of the tokens it is given, `batch_rows` (32) rows per step (a
shorter last batch), on ALL parameters: mean cross-entropy under the eval autocast (bf16 on the GPU,
off on the CPU), backward, plain `torch.optim.SGD(lr=3e-4, momentum=0.95)` step; no schedule, no
clipping, no gradient all-reduce. As in the record, every rank processes every batch (the rows are not
split), and after the pass the parameters are averaged over ranks (`chunk.env.average`; the ranks
computed the same update, so this only evens out nondeterminism). `qat_off` (default true, the record's
`_ste_qat = False` on every CastedLinear before its TTT) turns every fake-quantization switch (the
qat/late_qat plugins' layers, through the core's `pgolf_core.fake_quant_off`: no plugin imports another)
off while adapting, and puts the values back after. The TTT forwards run in train mode, where pgolf's
late_qat layers would otherwise fake-quantize: its `pgolf_fit_end` switches QAT off only with
`in_eval = true`, and #297's recipe has `in_eval = false`.

Two forms, decided by which eval hook the instance implements:
- `score_first = false` (the record, NOT compliant): `pgolf_eval_prescore` adapts on the whole
  validation stream before anything of it is scored; pgolf then scores it with the sliding window and
  marks the run non-compliant (`summary.json` `"eval_compliant": false`). The record then restored the
  weights it had before its TTT (for its LoRA TTT, off by default). Restoring is moot in pgolf's flow:
  the round trip is scored before the pre-scoring hook and the sliding window is the last thing scored
  (`run.score`); the artifact and `final_model.pt` were written before. So nothing is restored.
- `score_first = true` (compliant): `pgolf_eval_adapt` makes the same update on each already-scored
  chunk (`[eval] chunk_tokens`), one SGD optimizer (its momentum) kept from chunk to chunk, a new one
  when `chunk.index == 0`; parameters averaged over ranks after each chunk.
`forms` names the configured form's hook and the registry registers only that one (`Plugin.forms`),
so a score-first `ttt_sgd` implements only `pgolf_eval_adapt` and the run stays compliant
(tests/plugins/test_ttt.py checks both registrations).

Why: the adaptation reported by PR #152 (SGD 3e-4, momentum 0.95: -0.034 bpb), which #297 ships.
Source: PR #297 `eval_val_sgd_ttt` (2026-03-20_STE_QAT_MLP3x_SmearBigram_LoRATTT); its reported
1.16292025 ran no TTT (see recipes/pr297.toml). tests/fixtures/ttt_sgd_golden.pt holds that function's
result on small shapes (tools/make_ttt_goldens.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch
from torch import nn

from pgolf_core import Model, Order, Plugin, Range, Tiny, ValChunk, fake_quant_off, hookimpl


@dataclass
class Config:
    lr: Annotated[float, Range(0, open="low")] = 3e-4
    momentum: Annotated[float, Range(0, 1, open="high")] = 0.95
    epochs: Annotated[int, Range(0)] = 1  # passes over the tokens (the record: one)
    batch_rows: Annotated[int, Range(1)] = 32  # rows per SGD step; every rank processes every row
    seq_len: Annotated[int, Range(0)] = 0  # 0 = the model's train_seq_len (the record: 2048)
    qat_off: bool = True  # fake quantization off during the TTT forwards (the record's _ste_qat = False)
    score_first: bool = False  # true: adapt after each scored chunk (compliant) instead of before scoring


def row_length(model: nn.Module, seq_len: int) -> int:
    if seq_len > 0:
        return seq_len
    spec = getattr(model, "spec", None)
    if spec is None or not getattr(spec, "train_seq_len", 0):
        raise ValueError("seq_len=0 needs a model with spec.train_seq_len; set seq_len")
    return int(spec.train_seq_len)


class TTTSGD(Plugin):
    """PR #297's full-model SGD TTT: one epoch over the validation rows; pre-scoring or score-first."""

    name = "ttt_sgd"
    version = "0.1.0"
    order = Order.EVAL
    Config: TypeAlias = Config
    config: Config
    # TTT acts on the sliding-window eval only: both runs score one, the 1,024 tokens in 4 chunks of 256.
    TINY = Tiny(overrides=("eval.sliding_stride=16", "eval.chunk_tokens=256"))

    @classmethod
    def forms(cls, config: Config) -> tuple[str, ...]:
        """One form per run: the other eval hook is not registered (see the module docstring)."""
        return ("pgolf_eval_adapt",) if config.score_first else ("pgolf_eval_prescore",)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.optimizer: torch.optim.SGD | None = None

    def _adapt(self, model: Model, chunk: ValChunk, optimizer: torch.optim.SGD) -> int:
        """`epochs` passes over all full rows of `chunk.tokens`; returns the number of SGD steps."""
        c = self.config
        seq_len = row_length(model, c.seq_len)
        rows = (chunk.tokens.numel() - 1) // seq_len
        x_all = chunk.tokens[: rows * seq_len].reshape(rows, seq_len)
        y_all = chunk.tokens[1 : rows * seq_len + 1].reshape(rows, seq_len)
        model.train()
        steps = 0
        with fake_quant_off(model, c.qat_off):
            for _ in range(c.epochs):
                for first in range(0, rows, c.batch_rows):
                    optimizer.zero_grad(set_to_none=True)
                    with chunk.env.autocast():
                        loss = model(x_all[first : first + c.batch_rows], y_all[first : first + c.batch_rows])
                    loss.backward()
                    optimizer.step()
                    steps += 1
        optimizer.zero_grad(set_to_none=True)
        chunk.env.average([p.data for p in model.parameters()])  # the record: all_reduce(p.data, AVG)
        return steps

    def _new_optimizer(self, model: Model) -> torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=self.config.momentum)

    @hookimpl
    def pgolf_eval_prescore(self, model: Model, chunk: ValChunk) -> None:
        steps = self._adapt(model, chunk, self._new_optimizer(model))
        chunk.report("ttt_sgd/prescore_steps", steps)

    @hookimpl
    def pgolf_eval_adapt(self, model: Model, chunk: ValChunk) -> None:
        if chunk.index == 0 or self.optimizer is None:
            self.optimizer = self._new_optimizer(model)
        steps = self._adapt(model, chunk, self.optimizer)
        chunk.report("ttt_sgd/chunks", chunk.index + 1)
        chunk.report("ttt_sgd/steps", steps)
        if chunk.index >= chunk.count - 2:  # the last adaptation
            self.optimizer = None
