"""STE fake quantization (QAT): `qat` for the whole run, `late_qat` from an LR-scale threshold on.

What: every CastedLinear forward uses `w + (Q(w) − w).detach()`, so the forward
sees the per-row int6 grid values `Q(w) = clamp(round(w/s), qmin, qmax)·s` and the backward treats
the quantizer as identity (straight-through estimator). Four settings give each record's exact recipe
(the defaults are PR #414's):

| record | `scale` (per row, `m` = row max of `|w|`) | `qmin`, `qmax` | `precision` | `in_eval` |
|---|---|---|---|---|
| #414 | `"scale_floor"`: `max(m/31, 1/31)` | −32, 31 | `"fp32_quant"` | false |
| #194 | `"scale_floor"` | −31, 31 | `"fp32_ste"` | false |
| #63  | `"clip_floor"`: `max(m, 1/31)/31` (floor 1/961) | −31, 31 | `"activation"` | true |
| #297 | `"row_max"`: `max(m, 1e−12)/31` (no real floor) | −32, 31 | `"activation"` | false |

`fp32_quant`: quantize an fp32 copy, cast it to the activation dtype, STE in that dtype;
`fp32_ste`: STE on the fp32 master weight, then cast; `activation`: cast first, quantize in the
activation dtype.

#63's module-global flag had no train/eval check and was set after the warm-up and cleared before
serialization: with `in_eval = true` the switch turns on at the first training step and off when the
fit ends (so in-training validation sees QAT, the round-trip eval does not). Otherwise QAT starts on at build
(`qat`: PR #194's flag was set before compile, warm-up included) and act in train mode only.
`export_match = true` (off by default; not a record setting) replaces the grid by the int6
exporter's: `s = fp16(max(m/31, 1/31))`, ±31, computed on the fp32 weight. That is the fix for
#414's QAT grid ≠ export grid (QAT row max over [−32, 31] vs exported ±31 with fp16 scales);
GPTQ-lite's grid equals it whenever its 1.0 percentile wins.
`scope = "all"` (the records): every CastedLinear, i.e. every layer the model's linear slot
(`pgolf_linear`) builds: the block linears, an untied lm_head, and the projections other plugins
ask it for (bigram.proj, ve_shared.proj); `"blocks"`: the six block linears only (PR #297's set).

How: the switch is a 0-d float buffer `fake_quant_on` on each layer (non-persistent: no state-dict key;
the core's `FAKE_QUANT_SWITCH`, which eval-time training turns off with `fake_quant_off`), used as
`w + ((Q(w) − w)·fake_quant_on).detach()`. Flipping it in place from a step hook takes effect in a
`torch.compile(fullgraph=True)` graph without recompiling; the quantizer therefore also runs (and
is multiplied by 0) before a late switch, a small cost on weights only (measured on an H100, full-size
#414 step: ~0.3 %, pgolf/record 1.019 with late_qat, 1.016 without; skipped in eager CPU runs).
The records flipped Python flags instead, and whether that reaches a compiled graph depends on the
PyTorch build: `benchmarks/check_late_qat_record.py` runs #414's own model past its switch under
its own compile call. On an H100 with torch 2.11.0+cu130 the flip does NOT take effect (no
recompile; compiled loss and gradients stay those of QAT off, while eager QAT-on gives 7.326 vs
7.450); on CPU with torch 2.13 the same code recompiles and applies it. The README of the 2026-03-21
PartialRoPE_LateQAT record also reports late QAT never ran. `late_qat.effective = false` reproduces that
no-op: the activation is logged (`late_qat/activated_step`) but the buffers stay off.

PR #297's late QAT (`late_qat`, `scope = "blocks"`) switches on by wallclock, not by LR scale:
`start_frac = 0.85` turns it on at the first step whose elapsed training time is >= 85 % of
`max_wallclock_seconds` (never without a cap, as the record's check), and `lr_factor = 0.5`
multiplies every optimizer group's base LR by 0.5 at that moment (once; the warmdown scale still
applies on top). The defaults (`start_frac = 0`: the LR-scale threshold; `lr_factor = 1`) are #414's.

Why: trains the weights towards the int6 export grid, shrinking the quantization gap. Sources:
PR #63 (whole run), PR #194 (whole run), PR #414 (late, LR scale < 0.15). Reported: PR #63 ~72 vs
~69 ms/step; PR #194 "~5 %" slower; Δbpb not isolated in any record log (and for #414 likely zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core import FAKE_QUANT_SWITCH, CastedLinear, ModelSpec, Order, Plugin, Range, Tiny, TrainState, hookimpl

BLOCK_ROLES = frozenset({"attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"})

Scale = Literal["scale_floor", "clip_floor", "row_max"]
Precision = Literal["fp32_quant", "fp32_ste", "activation"]


@dataclass(frozen=True)
class QuantRule:
    """A record's fake-quantization recipe (see the module docstring)."""

    scale: Scale  # "scale_floor": s = max(m/qmax, 1/qmax) | "clip_floor": s = max(m, 1/qmax)/qmax
    qmin: int
    qmax: int
    precision: Precision  # "fp32_quant" (#414) | "fp32_ste" (#194) | "activation" (#63)
    in_eval: bool
    fp16_scale: bool = False


@dataclass
class Config:
    # scale_floor: max(m/qmax, 1/qmax) | clip_floor: max(m, 1/qmax)/qmax (#63) | row_max: max(m, 1e-12)/qmax (#297)
    scale: Scale = "scale_floor"
    qmin: Annotated[int, Range(high=0, open="high")] = -32  # #414; -31 in #194 and #63 (qmin < 0 < qmax)
    qmax: Annotated[int, Range(0, open="low")] = 31
    precision: Precision = "fp32_quant"  # fp32_quant (#414) | fp32_ste (#194) | activation (#63)
    in_eval: bool = False  # true: on in eval mode too, from the first step until the fit ends (#63)
    export_match: bool = False  # the int6 exporter's grid: ±31, fp16-rounded row-max scale, fp32
    scope: Literal["all", "blocks"] = "all"  # all (every CastedLinear, as the records) | blocks (the six block linears)


@dataclass
class LateConfig(Config):
    # switch on at the first step whose LR scale is below this (#414); an LR scale in (0, 1]
    threshold: Annotated[float, Range(0, 1, open="low")] = 0.15
    effective: bool = True  # false: log the switch but keep QAT off (#414's suspected no-op)
    # > 0: switch on at this fraction of the wallclock cap instead (#297: 0.85); 0: off
    start_frac: Annotated[float, Range(0, 1)] = 0.0
    # every optimizer group's base LR x this when QAT switches on (#297: 0.5)
    lr_factor: Annotated[float, Range(0, open="low")] = 1.0


def resolve_rule(config: Config) -> QuantRule:
    """The grid a config trains on (the settings were checked when the recipe loaded)."""
    if config.export_match:
        precision: Precision = "fp32_quant" if config.precision == "activation" else config.precision
        return QuantRule("scale_floor", -31, 31, precision, config.in_eval, fp16_scale=True)
    return QuantRule(config.scale, config.qmin, config.qmax, config.precision, config.in_eval)


def fake_quantize(w: Tensor, rule: QuantRule) -> Tensor:
    """The per-row grid values of a 2-D `w` (same dtype, computed in it), without gradient."""
    w = w.detach()
    row_max = w.abs().amax(dim=1, keepdim=True)
    if rule.scale == "clip_floor":
        scale = row_max.clamp_min(1.0 / rule.qmax) / float(rule.qmax)
    elif rule.scale == "row_max":  # #297: the row max itself (an all-zero row guarded by 1e-12)
        scale = row_max.clamp_min(1e-12) / float(rule.qmax)
    else:
        scale = (row_max / float(rule.qmax)).clamp_min(1.0 / rule.qmax)
    if rule.fp16_scale:
        scale = scale.to(torch.float16).to(w.dtype)
    return torch.clamp(torch.round(w / scale), rule.qmin, rule.qmax) * scale


class FakeQuantLinear(CastedLinear):
    """CastedLinear whose forward sees the fake-quantized weight while the 0-d `fake_quant_on` buffer is 1."""

    fake_quant_on: Tensor  # the 0-d switch buffer (`FAKE_QUANT_SWITCH`)

    def __init__(self, in_features: int, out_features: int, rule: QuantRule, on: bool = False) -> None:
        super().__init__(in_features, out_features)
        self.rule = rule
        self.register_buffer(FAKE_QUANT_SWITCH, torch.tensor(float(on)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rule = self.rule
        if not (self.training or rule.in_eval):
            return F.linear(x, self.weight.to(x.dtype))
        if not self.fake_quant_on.is_cuda and not torch.compiler.is_compiling() and not self.fake_quant_on:
            # Eager CPU with the switch off: skip the quantizer it would multiply by 0 (same result,
            # bit for bit). Compiled graphs keep it so that the switch needs no recompile; CUDA keeps
            # it because reading the flag would sync the device.
            return F.linear(x, self.weight.to(x.dtype))
        if rule.precision == "fp32_ste":  # #194: STE on the fp32 master, then cast
            w = self.weight
            w = (w + ((fake_quantize(w, rule) - w) * self.fake_quant_on).detach()).to(x.dtype)
        elif rule.precision == "fp32_quant":  # #414: quantize an fp32 copy, STE in the activation dtype
            w = self.weight.to(x.dtype)
            w_q = fake_quantize(self.weight.float(), rule).to(x.dtype)
            w = w + ((w_q - w) * self.fake_quant_on.to(x.dtype)).detach()
        else:  # #63: cast, then quantize in the activation dtype
            w = self.weight.to(x.dtype)
            w = w + ((fake_quantize(w, rule) - w) * self.fake_quant_on.to(x.dtype)).detach()
        return F.linear(x, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid=[{self.rule.qmin}, {self.rule.qmax}], precision={self.rule.precision}"


def set_qat(model: nn.Module, on: bool) -> int:
    """Flip every fake-quant layer's switch in place; returns how many layers were set."""
    layers = [m for m in model.modules() if isinstance(m, FakeQuantLinear)]
    with torch.no_grad():
        for m in layers:
            m.fake_quant_on.fill_(float(on))
    return len(layers)


class QAT(Plugin):
    """Fake int6 quantization (STE) of the linear layers for the whole run."""

    name = "qat"
    version = "0.1.0"
    order = Order.TRAIN_SWITCH
    Config: TypeAlias = Config
    config: Config
    on_at_build = True  # the layers are built with the switch on (unless `in_eval`: on at the first step)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.rule = resolve_rule(config)
        self.active = False

    @hookimpl
    def pgolf_linear(self, spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module | None:
        if self.config.scope == "blocks" and role not in BLOCK_ROLES:
            return None
        return FakeQuantLinear(in_features, out_features, self.rule, on=self.on_at_build and not self.rule.in_eval)

    @hookimpl
    def pgolf_step_start(self, state: TrainState) -> None:
        if not self.active:
            self.active = True
            set_qat(state.model, True)

    @hookimpl
    def pgolf_fit_end(self, state: TrainState) -> None:
        if self.rule.in_eval:  # #63 cleared its global flag before serialization and the final evals
            set_qat(state.model, False)


class LateQAT(QAT):
    """Fake int6 quantization (STE) switched on at the first step whose LR scale < threshold."""

    name = "late_qat"
    Config: TypeAlias = LateConfig
    config: LateConfig
    on_at_build = False
    # The tiny run (6 steps, a warmdown over the last 4) has LR scales 1, 0.75, 0.5, 0.25 in its last steps:
    # 0.6 switches QAT on at step 4; the default 0.15 is never reached.
    TINY = Tiny(settings={"threshold": 0.6})

    def _due(self, state: TrainState) -> bool:
        c = self.config
        if c.start_frac <= 0.0:
            return state.lr_scale < c.threshold
        cap_ms = 1000.0 * state.recipe.train.max_wallclock_seconds
        return cap_ms > 0 and state.elapsed_ms / cap_ms >= c.start_frac  # #297: no cap, no QAT

    @hookimpl
    def pgolf_step_start(self, state: TrainState) -> None:
        c = self.config
        if self.active or not self._due(state):
            return
        self.active = True
        if c.effective:
            set_qat(state.model, True)
        if c.lr_factor != 1.0:  # before this step's LRs are set from base_lr x scale, as #297 does
            for opt in state.optimizers.all:
                for group in opt.param_groups:
                    group["base_lr"] *= c.lr_factor
        state.report("late_qat/activated_step", state.step)
        state.report("late_qat/lr_scale", round(float(state.lr_scale), 6))
        if c.start_frac > 0.0:
            frac = state.elapsed_ms / (1000.0 * state.recipe.train.max_wallclock_seconds)
            state.report("late_qat/wallclock_frac", round(frac, 6))
        if not c.effective:
            state.report("late_qat/effective", False)
