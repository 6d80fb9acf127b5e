"""Two-phase test-time training (PR #415): first the per-channel scales and mixes, then the last blocks.

What (as PR #415's code runs, the defaults): the validation stream is cut into rows of the eval sequence
length (`(n - 1) // seq_len` full rows; the rows used are the largest multiple of `batch_rows` x ranks,
or all rows when there are fewer). Each epoch draws `torch.randperm(rows, device=device)` from the
device's default generator (rank 0's draw broadcast to every rank), and each step takes the next
`batch_rows` x ranks rows of it, rank r the r-th `batch_rows` of them. Per step: zero the gradients,
the model's mean loss in train mode (bf16 autocast on GPU), backward, gradients averaged over ranks,
optimizer step. The learning rate of epoch e of E is `lr * (1 + cos(pi * e / E)) / 2`, constant within
the epoch. Only the phase's parameters have `requires_grad`; every other tensor is left untouched.
- phase 1: Adam (torch defaults, betas 0.9/0.999, eps 1e-8) at lr 0.01 for 100 epochs on every
  block's `attn_scale`, `mlp_scale` and `resid_mix` (22,528 parameters at PR #415's size; its README's
  "norm recalibration": its RMSNorms have no weights, and these are what its name filter matched);
- phase 2: SGD lr 0.005, momentum 0.9, for 25 epochs on the last `phase2_last_blocks` = 3 blocks, the
  phase-1 parameters of all blocks and the token embedding (tied: also the output head), 7,624,728
  parameters at full size.
A fresh optimizer per phase; phase 2 starts from phase 1's weights.

Forms. Default (`score_first = false`): the record's, `pgolf_eval_prescore`: all 125 epochs on the
whole validation stream, then the scored sliding-window eval of the same tokens. That adapts on
tokens before they are scored, so the run is marked non-compliant (and at full size the record's
TTT alone took 705 s on 8xH100, over the 10-minute eval cap). `score_first = true`: `pgolf_eval_adapt`,
both phases on each already-scored chunk (`[eval] chunk_tokens`) before the next chunk is scored,
the model carrying on from chunk to chunk; compliant. Set fewer epochs for it: the defaults are the
record's whole-stream counts.

QAT during TTT: PR #415's late QAT is a class-wide flag (`CastedLinear._qat_enabled`) that stays set
after training, and its TTT runs in train mode under a fresh `torch.compile`, so every TTT forward is
fake-quantized, while the scored eval (eval mode) is not: TTT fits a quantized forward that is never
scored. pgolf's `late_qat` behaves the same (its fake-quantization switches stay 1 after the fit unless
`in_eval = true`, and its layers fake-quantize in train mode), so `qat_off = false` reproduces the
record. `qat_off = true`, the fix, turns every switch off while adapting and puts the values back after
(`pgolf_core.fake_quant_off`, the core's contract with any QAT plugin: no plugin imports another).
(With `late_qat.effective = false`, the no-op reproduction of training, the switches stay 0, so the TTT
is not quantized, unlike the record.)

Reports `ttt_two_phase/phase1_seconds`, `phase2_seconds` (summed over chunks in the score-first form),
the mean loss of each phase's first and last epoch, and the parameter counts.

Why: phase 1 re-fits the cheap per-channel gains to the int6 round-tripped weights, phase 2 adapts the
last blocks and the embedding to the validation text. Source: PR #415 (2026-03-22_TwoPhase_TTT_NormRepair):
val_bpb 1.1216 after its TTT, 1.1421 before, on tokens it had trained on first. The gradient average is
`chunk.env.average` (all-reduce AVG) where the record sums and divides by the world size.
tests/fixtures/ttt_two_phase_golden.pt holds the record's own TTT on small shapes
(tools/make_ttt_two_phase_goldens.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf_core import Model, Order, PgolfError, Plugin, Range, Recipe, Tiny, ValChunk, fake_quant_off, hookimpl

PHASE1 = ("attn_scale", "mlp_scale", "resid_mix")  # per-channel block parameters (leaf names)
EMBEDDINGS = ("tok_emb.weight", "lm_head.weight")


@dataclass
class Config:
    score_first: bool = False  # true: per already-scored chunk (compliant); false: the record's pre-scoring
    batch_rows: Annotated[int, Range(1)] = 64  # rows per rank per step
    seq_len: Annotated[int, Range(0)] = 0  # row length; 0: the recipe's eval sequence length
    phase1_epochs: Annotated[int, Range(0)] = 100
    phase1_lr: Annotated[float, Range(0, open="low")] = 0.01  # Adam
    phase2_epochs: Annotated[int, Range(0)] = 25
    phase2_lr: Annotated[float, Range(0, open="low")] = 0.005  # SGD
    phase2_momentum: Annotated[float, Range(0, 1, open="high")] = 0.9
    phase2_last_blocks: Annotated[int, Range(0)] = 3  # phase 2 trains these last blocks whole (up to model.num_layers)
    qat_off: bool = False  # true: fake quantization off during TTT (the fix); false: on, as the record
    compile: Literal["auto", "on", "off"] = "auto"  # auto: compile the TTT forward on CUDA (as the record) | on | off


def phase1_names(model: nn.Module) -> list[str]:
    """Phase 1's parameters: every block's per-channel scales and residual mix."""
    return [n for n, _ in model.named_parameters() if n.startswith("blocks.") and n.rsplit(".", 1)[-1] in PHASE1]


def phase2_names(model: Model, last_blocks: int) -> list[str]:
    """Phase 2's: the last `last_blocks` blocks whole, phase 1's parameters and the embedding/head."""
    n_blocks = len(model.blocks)
    last = tuple(f"blocks.{i}." for i in range(n_blocks - last_blocks, n_blocks))
    first = set(phase1_names(model))
    return [n for n, _ in model.named_parameters() if n.startswith(last) or n in first or n in EMBEDDINGS]


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


class TTTTwoPhase(Plugin):
    """PR #415's two-phase TTT: Adam on the scales and mixes, then SGD on the last blocks (pre-scoring
    as the record, or score-first per chunk)."""

    name = "ttt_two_phase"
    version = "0.1.0"
    order = Order.EVAL
    Config: TypeAlias = Config
    config: Config
    SMOKE = {"phase1_epochs": 2, "phase2_epochs": 1}  # 125 epochs would dominate a smoke run
    # TTT acts on the sliding-window eval only: both runs score one, the 1,024 tokens in 4 chunks of 256.
    TINY = Tiny(overrides=("eval.sliding_stride=16", "eval.chunk_tokens=256"))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """Phase 2 trains at most every block."""
        if config.phase2_last_blocks > (layers := recipe.model.num_layers):
            raise PgolfError(f"phase2_last_blocks={config.phase2_last_blocks}: expected 0..{layers} (model.num_layers)")

    @classmethod
    def forms(cls, config: Config) -> tuple[str, ...]:
        """The form decides the hook, and the hook decides compliance: only the form's hook is registered."""
        return ("pgolf_eval_adapt",) if config.score_first else ("pgolf_eval_prescore",)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.seconds = [0.0, 0.0]

    @hookimpl
    def pgolf_eval_prescore(self, model: Model, chunk: ValChunk) -> None:
        """Both phases on `chunk.tokens`; the model's `requires_grad` flags are restored afterwards."""
        c = self.config
        # The row length: the setting, else the eval's sequence length, else (a chunk made outside a run,
        # without one) the model's training sequence length.
        spec: Any = getattr(model, "spec", None)
        seq_len = c.seq_len or chunk.seq_len or int(spec.train_seq_len)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        phases: list[tuple[list[str], int, Callable[[list[Tensor], float], torch.optim.Optimizer], float]] = [
            (phase1_names(model), c.phase1_epochs, lambda ps, lr: torch.optim.Adam(ps, lr=lr), c.phase1_lr),
            (
                phase2_names(model, c.phase2_last_blocks),
                c.phase2_epochs,
                lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=c.phase2_momentum),
                c.phase2_lr,
            ),
        ]
        with fake_quant_off(model, c.qat_off):
            try:
                for k, (names, epochs, make, lr) in enumerate(phases, start=1):
                    sync(chunk.env.device)
                    t0 = time.perf_counter()
                    first, last = run_phase(model, chunk, seq_len, c.batch_rows, names, epochs, lr, make, c.compile)
                    sync(chunk.env.device)
                    self.seconds[k - 1] += time.perf_counter() - t0
                    chunk.report(f"{self.name}/phase{k}_seconds", round(self.seconds[k - 1], 3))
                    if chunk.index == 0:
                        count = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
                        chunk.report(f"{self.name}/phase{k}_params", count)
                    if not math.isnan(first):
                        chunk.report(f"{self.name}/phase{k}_first_epoch_loss", round(first, 6))
                        chunk.report(f"{self.name}/phase{k}_last_epoch_loss", round(last, 6))
            finally:
                for n, p in model.named_parameters():
                    p.requires_grad_(flags[n])

    pgolf_eval_adapt = pgolf_eval_prescore  # the score-first form: the same adaptation on each scored chunk


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_phase(
    model: Model,
    chunk: ValChunk,
    seq_len: int,
    batch_rows: int,
    names: list[str],
    epochs: int,
    lr: float,
    make: Callable[[list[Tensor], float], torch.optim.Optimizer],
    compile_mode: str,
) -> tuple[float, float]:
    """One phase (see the module docstring); returns the mean loss of its first and last epoch."""
    env, tokens = chunk.env, chunk.tokens
    chosen = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
    rows = (tokens.numel() - 1) // seq_len
    per_step = batch_rows * env.world_size
    usable = (rows // per_step) * per_step or rows
    if epochs == 0 or not params or usable == 0:  # nothing to train (a chunk shorter than one row)
        return float("nan"), float("nan")
    xs = tokens[: usable * seq_len].reshape(usable, seq_len)
    ys = tokens[1 : usable * seq_len + 1].reshape(usable, seq_len)
    on = compile_mode == "on" or (compile_mode == "auto" and env.device.type == "cuda")
    forward = torch.compile(model, dynamic=False, fullgraph=True) if on else model
    opt = make(params, lr)
    model.train()
    distributed = env.world_size > 1 and dist.is_available() and dist.is_initialized()
    losses = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs)
        perm = torch.randperm(usable, device=env.device)  # the device's default generator, as the record
        if distributed:
            dist.broadcast(perm, src=0)
        total = torch.zeros((), device=env.device, dtype=torch.float64)
        count = 0
        for start in range(0, usable, per_step):
            mine = perm[start + env.rank * batch_rows : start + (env.rank + 1) * batch_rows]
            opt.zero_grad(set_to_none=True)
            if mine.numel():
                with env.autocast():
                    loss = forward(xs[mine], ys[mine])
                loss.backward()
                total += loss.detach().to(torch.float64) * mine.numel()
                count += mine.numel()
            if distributed:  # every rank all-reduces every parameter's gradient, in the same order
                for param in params:
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                env.average([param.grad for param in params])
            opt.step()
        losses.append(total / max(count, 1))
    return float(losses[0].item()), float(losses[-1].item())
