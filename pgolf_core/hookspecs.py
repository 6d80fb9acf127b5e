# mypy: disable-error-code="empty-body"
"""The hook catalog: the public contract between the core and plugins, grouped by phase.

A run calls the hooks at these points (nothing of a plugin's runs inside a model's `forward`):

    # setup                                         (pgolf_core.run)
    plugins = load(recipe)                          # a pgolf_* method not in this catalog: load error
    export = (pgolf_export_format(recipe), pgolf_export_corrections(recipe), pgolf_codecs())
    model = GPT(slots = pgolf_embed, pgolf_value_extras, pgolf_rotary, pgolf_attention_post, pgolf_mlp,
                pgolf_linear)
    pgolf_model_built(model, spec)
    roles = collect_roles(model)                    # optimizer groups, fp32 keeping, export passthrough
    optimizers, compiled = build_optimizers(model, roles), torch.compile(model, fullgraph=True)
    # fit                                           (pgolf_core.run.Run.fit)
    warm_up(); restore()                            # untimed: compilation
    for step in range(iterations):                  # until the wallclock cap
        pgolf_step_start(state)
        loss = train_step()                         # forward, backward, optimizer step
        pgolf_post_step(state)
    pgolf_fit_end(state)
    # finish                                        (pgolf_core.run.Run.finish)
    weights = pgolf_final_weights(state) or live weights
    plan = {name: TensorPlan()}; pgolf_export_plan(plan, weights, ctx)
    obj = format.quantize(weights, plan, roles); each correction adds its payload
    write(codec.encode(torch.save(obj)))            # codec = [export] compressor
    weights = read_artifact(file)                   # the reader `pgolf eval` uses
    score round trip
    pgolf_eval_prescore(model, all_val_tokens)      # reproduces pre-scoring TTT; marks the run non-compliant
    score sliding window chunk by chunk; pgolf_eval_adapt(model, chunk) after each chunk was scored

Build hooks return *modules* that the core puts into named slots before the optimizers exist and
before `torch.compile(fullgraph=True)`; anything that changes during training is a tensor buffer
updated in place from a train hook. Collecting hooks return one answer per plugin in
`(plugin.order, name)` order. Exclusive hooks (`EXCLUSIVE_HOOKS`) are answered by at most one
enabled plugin; their defaults are the built-in plugin `pgolf_core.registry.Defaults`, which pluggy calls last.

Settings (not a hook): a plugin's `Config` fields declare their valid values in their types, and
its `check(config, recipe)` classmethod the rest; both run once when the recipe loads, before
anything is built, trained or written (see `pgolf_core.Plugin`).

Static model slots, set in `pgolf_model_built` (no hook of their own): `block.norm_scale` (LN
scale), `block.parallel` (GPT-J parallel attention and MLP), and the layer schedule
`model.set_layer_orders(orders)` with `model.layer_phase` switched by a train hook (depth
recurrence; the warm-up compiles every phase, so the switch never recompiles).

Slots planned for the later leaderboard (see the coverage table in docs/hooks.md), designed to fit
without changing the hooks above: a calibration pass inside the training budget
(`pgolf_calibrate`: full-Hessian GPTQ), and the others the coverage table proposes (`pgolf_logits`,
`pgolf_optimizers`, `pgolf_tokenizer`, `pgolf_eval_score`). `x`, the block input, already reaches
attention post-processing (attention output gates).

Parameter roles (build phase, not a hook): a module says what its parameters are with
`pgolf_core.declare_role(module, "weight", ...)` (optimizer group, control tensor, own Adam, zero
init); see `pgolf_core.types`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pluggy
from torch import Tensor, nn

from pgolf_core.model import ModelSpec
from pgolf_core.types import (
    Codec,
    Correction,
    ExportContext,
    ExportFormat,
    ExportPlan,
    Model,
    Recipe,
    TrainState,
    ValChunk,
)

PROJECT = "pgolf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
Hook = TypeVar("Hook", bound=Callable[..., Any])


def spec(phase: str, exclusive: bool = False) -> Callable[[Hook], Hook]:
    """A hook of `phase`. `exclusive`: at most one enabled plugin may answer it (its first answer is the
    result; two plugins implementing it is a load error naming both)."""

    def mark(function: Hook) -> Hook:
        function.pgolf_phase = phase  # type: ignore[attr-defined]
        return hookspec(firstresult=exclusive)(function)

    return mark


# ---------------------------------------------------------------- build


@spec("build")
def pgolf_embed(spec: ModelSpec) -> nn.Module | None:
    """Once: a module applied around the token embedding (BigramHash, SmearGate), or None.

    `forward(x, input_ids) -> x` with x [B, T, d], input_ids [B, T]. Its `stage` attribute says
    where: `"pre_norm"` on the raw embedding before the embedding RMSNorm (BigramHash adds),
    `"post_norm"` after it (SmearGate mixes); the last post-norm output is the residual anchor x0.
    It is registered as `model.<state_dict_prefix>` (a required attribute) so that state-dict keys
    match the record scripts'; `flat_state_dict = True` drops that prefix from its keys in
    `state_dict()` and `load_state_dict()` (a record's top-level names). Default: none.
    """


@spec("build")
def pgolf_value_extras(spec: ModelSpec) -> nn.Module | None:
    """Once: a module computed once per forward, `forward(input_ids) -> {layer: tensor}` with
    tensors [B, T, Hkv * D], added to that block's flat value projection before the heads split
    (value embeddings). Registered like `pgolf_embed` modules (`flat_state_dict` included). Default: none.
    """


@spec("build", exclusive=True)
def pgolf_rotary(spec: ModelSpec, layer: int) -> nn.Module:
    """Exclusive. Once per block: the rotary module, `forward(q, k) -> (q, k)` on [B, H, T, D]
    (after QK-norm, before q_gain). Default: full RoPE with base `rope_base`."""


@spec("build")
def pgolf_attention_post(spec: ModelSpec, layer: int) -> nn.Module | None:
    """Once per block: a module `forward(y, v, x) -> y` applied after attention, or None (XSA,
    attention output gates).

    `y` is the attention output [B, T, H, D] before the heads merge and project; `v` the block's
    values [B, T, Hkv, D] (GQA: query head h reads KV head h // (H // Hkv)); `x` the normed block
    input [B, T, d] that attention saw. Modules of several plugins run in plugin order. Default: none.
    """


@spec("build", exclusive=True)
def pgolf_mlp(spec: ModelSpec, layer: int) -> nn.Module:
    """Exclusive. Once per block: the MLP, `forward(x) -> x` on the normed block input [B, T, d]
    (LeakyReLU², SwiGLU). Build its layers with `spec.linear("mlp.fc", d, spec.mlp_hidden)` and
    `spec.linear("mlp.proj", spec.mlp_hidden, d)` as attributes `fc` and `proj`, in that order, so that
    the state-dict keys, QAT's linears and the random init match the baseline; declare the output
    projection `zero_init`. Default: relu², `proj(relu(fc(x))²)`."""


@spec("build", exclusive=True)
def pgolf_linear(spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module:
    """Exclusive. Once per linear layer: the layer for `role` (QAT's fake-quantized linear).

    Roles: `attn.c_q`, `attn.c_k`, `attn.c_v`, `attn.proj`, `mlp.fc`, `mlp.proj`, an untied
    `lm_head`, and those plugins ask `spec.linear(role, in, out)` for (`bigram.proj`,
    `ve_shared.proj`). Keep a `.weight` [out, in] (fp32 master weight, cast to the activation dtype
    in forward) and draw the same random numbers as `CastedLinear`. Default: `CastedLinear`.
    """


@spec("build")
def pgolf_model_built(model: Model, spec: ModelSpec) -> None:
    """Once, after the model is built (fp32, CPU, before the roles are collected, the precision
    cast, the optimizers and compile): init schemes (OrthoInit) and the static slots
    `block.norm_scale` (LN scale), `block.parallel` (parallel residuals) and
    `model.set_layer_orders([[0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]])` (depth recurrence: phases 1.. of the
    virtual-to-physical layer order; a train hook sets `model.layer_phase`). Default: nothing."""


# ---------------------------------------------------------------- train


@spec("train")
def pgolf_step_start(state: TrainState) -> None:
    """Before each optimizer step's forward (late-QAT switch). `state` holds step, lr_scale,
    elapsed_ms, model (uncompiled), optimizers and `report(key, value)`. Default: nothing."""


@spec("train")
def pgolf_post_step(state: TrainState) -> None:
    """After each optimizer step (EMA update, SWA snapshot). Default: nothing."""


@spec("train")
def pgolf_fit_end(state: TrainState) -> None:
    """Once, after the training loop and before the final weights are chosen (QAT switched off
    for the final evals, as PR #63 did). Default: nothing."""


@spec("train", exclusive=True)
def pgolf_final_weights(state: TrainState) -> dict[str, Tensor] | None:
    """Exclusive. Once: the state dict to export and evaluate (EMA or SWA), or None.
    Default: the live weights."""


# ---------------------------------------------------------------- export


@spec("export")
def pgolf_export_plan(plan: ExportPlan, weights: dict[str, Tensor], ctx: ExportContext) -> None:
    """Once, before quantization, in plugin order: edit `plan` (name -> `TensorPlan`: clip_percentile,
    row_clip, precomputed q/scale) for the tensors of `weights` (CPU, final weights; GPTQ-lite's clip
    search, SDClip). A plugin may also replace entries of `weights` (`weights[name] = pruned`: the
    export's own dict, read by the later plans and the format), never modify a tensor in place (it may
    share storage with the live model). `ctx` holds the recipe, the parameter roles and
    `report(key, value)`. Default: an empty plan per tensor."""


@spec("export", exclusive=True)
def pgolf_export_format(recipe: Recipe) -> ExportFormat:
    """Exclusive. Once per run and per `pgolf eval`: the format object that quantizes the weights
    and reads them back (int6). Its tag is stored in the artifact, so `pgolf eval` picks the same
    reader. A format whose `needs_plan` names a reason is refused at setup when no plugin makes a plan.
    Default: the baseline's int8 per-row format."""


@spec("export")
def pgolf_export_corrections(recipe: Recipe) -> Correction | None:
    """Once per run and per `pgolf eval`: a correction stacked after quantization (LQER), or None.
    Corrections run in plugin order, each on the previous one's dequantized weights; their payloads
    go into the artifact.
    Default: none."""


@spec("export")
def pgolf_codecs() -> list[Codec]:
    """Once per run and per `pgolf eval`: the byte codecs this plugin adds (brotli, lzma); the
    recipe's `[export] compressor` names the one that writes. Default: zlib and zstd."""


# ---------------------------------------------------------------- eval


@spec("eval")
def pgolf_eval_adapt(model: Model, chunk: ValChunk) -> None:
    """After each chunk of the final sliding-window eval was scored (all but the last): test-time
    training on those already-scored tokens (score-first TTT, PR #461/#549). The model it leaves
    scores the next chunk.

    `chunk.tokens` [n + 1] are the chunk's inputs and targets (int64, eval device), every target
    scored before the hook runs; `chunk.rows(seq_len)` is this rank's share of its full rows;
    `chunk.where.average(grads)` averages gradients over ranks; `chunk.index`/`chunk.count` place it
    (0 starts a fresh optimizer); `chunk.report(key, value)` logs. `model` is the uncompiled model
    holding the round-tripped weights, in train mode, outside `inference_mode`. The chunk size is
    `[eval] chunk_tokens`; without a sliding stride the windows are the rows (stride = seq_len).
    Default: nothing."""


@spec("eval")
def pgolf_eval_prescore(model: Model, chunk: ValChunk) -> None:
    """Once, before the final sliding-window eval: adapt on validation tokens *before* they are
    scored, as PR #297 and #415 did. The challenge forbids it, so any implementation marks the run
    non-compliant (`summary.json` `"eval_compliant": false`, said in the log at the start and the
    end); it exists to reproduce those records. `chunk` is the whole validation stream
    (`scored=False`, one chunk). Default: nothing."""


# ---------------------------------------------------------------- the catalog, derived from the specs above


def catalog() -> dict[str, Callable[..., Any]]:
    """Every hook spec by name, in the order of this file (which is the order of a run's phases)."""
    return {name: value for name, value in globals().items() if hasattr(value, "pgolf_phase")}


def phases() -> dict[str, list[str]]:
    """Phase -> its hooks, as the run calls them."""
    grouped: dict[str, list[str]] = {}
    for name, function in catalog().items():
        grouped.setdefault(function.pgolf_phase, []).append(name)  # type: ignore[attr-defined]
    return grouped


EXCLUSIVE_HOOKS = tuple(name for name, function in catalog().items() if function.pgolf_spec["firstresult"])  # type: ignore[attr-defined]
