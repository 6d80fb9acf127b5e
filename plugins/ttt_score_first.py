"""Legal score-first test-time training (TTT): SGD on each validation chunk after it was scored.

What: the evaluator scores the validation windows chunk by chunk (`[eval] chunk_tokens`, 32,768 in the
records) and hands each scored chunk but the last to `pgolf_eval_adapt`. On chunk k of K this plugin
trains the model for `epochs` (3) passes over the chunk's full rows (this rank's contiguous share,
`chunk.rows(seq_len)`), `batch_rows` (32) rows per step: loss = the model's mean cross-entropy under the
eval autocast, gradients averaged over ranks (`chunk.env.average`; every rank takes as many steps as
the largest share needs, a rank past its rows adding zero gradients), clipped to a global norm of
`grad_clip` (1.0) over the trained parameters, then one SGD step (momentum 0.9) at
`lr_k = lr * 0.5 * (1 + cos(pi * k / max(K - 1, 1)))` (lr 0.002: cosine decay across chunks, set
before the chunk's first step). The parameters of the first `freeze_blocks` (2) blocks (every name
under `blocks.{i}.`, i < freeze_blocks) get `requires_grad = False` and stay bit-identical; one SGD
optimizer (its momentum) is kept from chunk to chunk and a new one starts when `chunk.index == 0`.
After the last adaptation (chunk K - 2; the last chunk is never trained on) every parameter's
`requires_grad` is restored (all True in a pgolf run, as the record sets them) and the optimizer
dropped. The adapted model scores the next chunk: the challenge's rule holds by construction, since the
evaluator hands over only already-scored tokens (the plugin does nothing about legality).

`seq_len = 0` takes the model's training sequence length (`model.spec.train_seq_len`), the records'
TTT row length (TRAIN_SEQ_LEN, 2048). `qat_off` (default true) turns every fake-quantization switch
(the qat/late_qat plugins' layers) off during adaptation and puts the values back after:
the TTT forwards run in train mode, where a switched-on fake-quantized linear would quantize, and
the records' score-first TTT ran without QAT. (No plugin imports another: `pgolf_core.fake_quant_off`
is the core's contract with any QAT plugin.)

Why: adapting on the validation text already scored lowers the loss of the text that follows.
Source: PR #461's recipe as coded in PR #549's `eval_val_sliding_ttt` (2026-03-23
LeakyReLU_LegalTTT_ParallelMuon); tests/fixtures/ttt_score_first_golden.pt holds that function's result on
small shapes (tools/make_ttt_goldens.py). Reported by #549: legal TTT -0.0025 bpb (1.1218 -> 1.1194,
mean of 3 seeds), ~410 s of eval on 8xH100.
Note on #549: its model keeps the block matrices in shared parameter banks (`qo_bank`, ... at the top
level), so its `blocks.{i}.` rule froze only the first blocks' scales, mixes and gains while every
layer's matrices trained; on pgolf's per-block parameters (and PR #461's model) the rule freezes whole
blocks. `freeze_matrices = false` reproduces #549's effect: the first blocks' six attention/MLP matrices
(`BANKED`: what #549 keeps in its banks) train, their other parameters are frozen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch
from torch import nn

from pgolf_core import Model, Order, PgolfError, Plugin, Range, Recipe, Tiny, ValChunk, fake_quant_off, hookimpl


@dataclass
class Config:
    lr: Annotated[float, Range(0, open="low")] = 0.002  # at chunk 0; cosine decay to 0 at chunk K - 1
    momentum: Annotated[float, Range(0, 1, open="high")] = 0.9
    epochs: Annotated[int, Range(0)] = 3  # passes over each scored chunk
    batch_rows: Annotated[int, Range(1)] = 32  # rows of seq_len tokens per SGD step (per rank)
    grad_clip: Annotated[float, Range(0)] = 1.0  # global gradient-norm clip over the trained parameters; 0 = off
    freeze_blocks: Annotated[int, Range(0)] = 2  # the first N blocks are not trained (fewer than model.num_layers)
    freeze_matrices: bool = True  # false: their attention/MLP matrices still train (#549's banks; the rest frozen)
    seq_len: Annotated[int, Range(0)] = 0  # 0 = the model's train_seq_len (the records: 2048)
    qat_off: bool = True  # fake quantization off during the TTT forwards (train mode)


# The six block matrices #549 keeps in its parameter banks (outside `blocks`).
BANKED = tuple(f"{role}.weight" for role in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"))


def row_length(model: nn.Module, seq_len: int) -> int:
    if seq_len > 0:
        return seq_len
    spec = getattr(model, "spec", None)
    if spec is None or not getattr(spec, "train_seq_len", 0):
        raise ValueError("seq_len=0 needs a model with spec.train_seq_len; set seq_len")
    return int(spec.train_seq_len)


def cosine_lr(lr: float, k: int, count: int) -> float:
    """PR #549's schedule across chunks: lr at chunk 0, 0 at chunk count - 1."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * k / max(count - 1, 1)))


class TTTScoreFirst(Plugin):
    """Score-first TTT: SGD with momentum on each already-scored chunk, first blocks frozen."""

    name = "ttt_score_first"
    version = "0.1.0"
    order = Order.EVAL
    Config: TypeAlias = Config
    config: Config
    # TTT acts on the sliding-window eval only: both runs score one, the 1,024 tokens in 4 chunks of 256.
    TINY = Tiny(overrides=("eval.sliding_stride=16", "eval.chunk_tokens=256"))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """At least one block trains."""
        if config.freeze_blocks >= (layers := recipe.model.num_layers):
            raise PgolfError(f"freeze_blocks={config.freeze_blocks}: expected 0..{layers - 1} (model.num_layers - 1)")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.optimizer: torch.optim.SGD | None = None
        self.params: list[nn.Parameter] = []
        self.saved_grad_flags: list[tuple[nn.Parameter, bool]] = []

    def _start(self, model: Model) -> None:
        """Freeze the first blocks and make a fresh optimizer over the rest (chunk 0)."""
        self._restore()
        prefixes = tuple(f"blocks.{i}." for i in range(self.config.freeze_blocks))
        self.saved_grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        self.params = []
        for name, p in model.named_parameters():
            frozen = name.startswith(prefixes) and (self.config.freeze_matrices or not name.endswith(BANKED))
            p.requires_grad_(not frozen)
            if not frozen:
                self.params.append(p)
        self.optimizer = torch.optim.SGD(self.params, lr=self.config.lr, momentum=self.config.momentum)

    def _restore(self) -> None:
        for p, flag in self.saved_grad_flags:
            p.requires_grad_(flag)
        self.saved_grad_flags, self.params, self.optimizer = [], [], None

    @hookimpl
    def pgolf_eval_adapt(self, model: Model, chunk: ValChunk) -> None:
        c, t0 = self.config, time.perf_counter()
        if chunk.index == 0 or self.optimizer is None:
            self._start(model)
        assert self.optimizer is not None
        lr = cosine_lr(c.lr, chunk.index, chunk.count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seq_len = row_length(model, c.seq_len)
        x_all, y_all = chunk.rows(seq_len)
        # Every rank steps as often as the largest share needs, so that the gradient all-reduces pair up
        # (shares differ by a row; a rank past its rows adds zero gradients through a zero-weighted row).
        largest = -(-((chunk.tokens.numel() - 1) // seq_len) // chunk.env.world_size)
        spare = chunk.tokens[: seq_len + 1]
        model.train()
        with fake_quant_off(model, c.qat_off):
            for _ in range(c.epochs):
                for first in range(0, largest, c.batch_rows):
                    x, y = x_all[first : first + c.batch_rows], y_all[first : first + c.batch_rows]
                    self.optimizer.zero_grad(set_to_none=True)
                    with chunk.env.autocast():
                        loss = model(x, y) if x.size(0) else model(spare[None, :-1], spare[None, 1:]) * 0.0
                    loss.backward()
                    chunk.env.average([p.grad for p in self.params])
                    if c.grad_clip > 0.0:
                        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                    self.optimizer.step()
        chunk.report("ttt_score_first/chunks", chunk.index + 1)
        self.seconds = (0.0 if chunk.index == 0 else getattr(self, "seconds", 0.0)) + time.perf_counter() - t0
        if chunk.index == 0:
            chunk.report("ttt_score_first/trained_params", sum(p.numel() for p in self.params))
        if chunk.index >= chunk.count - 2:  # the last adaptation: the last chunk is never trained on
            chunk.report("ttt_score_first/seconds", round(self.seconds, 3))  # adaptation only (scoring apart)
            self.optimizer.zero_grad(set_to_none=True)
            self._restore()
