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

Each hook below says when it runs, what it returns and its default; its `Args:` say what each
argument holds (types, shapes) and what a plugin may change, and its `Example:` is a plugin method
written the way a built-in plugin (`plugins/`) uses the hook, shortened. A method takes only the
arguments it uses (pluggy passes them by name): `def pgolf_fit_end(self, state: TrainState)`.

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

    Args:
        spec: the model's settings (`ModelSpec`): the recipe's `[model]` section with `mlp_hidden` and
            `attention` resolved, plus `train_seq_len` and the derived `head_dim` (model_dim / num_heads)
            and `kv_dim` (num_kv_heads * head_dim). Read it, never change it. Build any projection with
            `spec.linear(role, in, out)` (BigramHash's `bigram.proj`), so that the linear hook (QAT)
            reaches it. Declare each parameter's role (`declare_role`, `declare_all`) before returning:
            outside the blocks, a parameter without a declared optimizer group is an error at setup.

    Example:
        class Smear(nn.Module):  # SmearGate, per dimension: blend each position with the one before
            state_dict_prefix, stage = "smear", "post_norm"  # key `smear.gate`; after the embedding norm

            def __init__(self, dim: int) -> None:
                super().__init__()
                self.gate = nn.Parameter(torch.zeros(dim))

            def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
                g = torch.sigmoid(self.gate.to(x.dtype))
                return (1 - g) * x + g * torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

        @hookimpl
        def pgolf_embed(self, spec: ModelSpec) -> nn.Module:
            module = Smear(spec.model_dim)
            declare_all(module, group="scalar", control=True)  # scalar Adam group, kept fp32
            return module
    """


@spec("build")
def pgolf_value_extras(spec: ModelSpec) -> nn.Module | None:
    """Once: a module computed once per forward, `forward(input_ids) -> {layer: tensor}` with
    tensors [B, T, Hkv * D], added to that block's flat value projection before the heads split
    (value embeddings). Registered like `pgolf_embed` modules (`flat_state_dict` included). Default: none.

    Args:
        spec: the model's settings, as for `pgolf_embed`; `spec.kv_dim` is the width Hkv * D of the
            tensors to return, `spec.vocab_size` the number of token ids, and the layers a plugin names
            must be in 0 .. `spec.num_layers` - 1.

    Example:
        @hookimpl
        def pgolf_value_extras(self, spec: ModelSpec) -> nn.Module:
            # value_embed: one shared table [vocab, 128] projected to kv_dim, times a scale per layer;
            # forward(input_ids) -> {9: ve * s9, 10: ve * s10}
            module = ValueEmbeddings(spec, self.config)
            declare_role(module.ve_shared.embed, "weight", group="token")
            declare_all(module.ve_layer_scales, group="scalar", control=True)
            return module
    """


@spec("build", exclusive=True)
def pgolf_rotary(spec: ModelSpec, layer: int) -> nn.Module:
    """Exclusive. Once per block: the rotary module, `forward(q, k) -> (q, k)` on [B, H, T, D]
    (after QK-norm, before q_gain). Default: full RoPE with base `rope_base`.

    Args:
        spec: the model's settings, as for `pgolf_embed`: `spec.head_dim` (D), `spec.rope_base`, and
            `spec.train_seq_len` (the length a scaled RoPE takes as its reference).
        layer: the block's index, 0 .. `spec.num_layers` - 1; a module may differ by depth. Returning
            None leaves that block the default.

    Example:
        @hookimpl
        def pgolf_rotary(self, spec: ModelSpec, layer: int) -> nn.Module:
            # partial_rope: rotate the first `dims` of each head's D dimensions, the rest pass through,
            # with the base NTK-scaled past the reference length
            ref = self.config.ntk_ref_len or spec.train_seq_len
            return PartialRotary(spec.head_dim, self.config.dims, spec.rope_base, ref, spec.train_seq_len)
    """


@spec("build")
def pgolf_attention_post(spec: ModelSpec, layer: int) -> nn.Module | None:
    """Once per block: a module `forward(y, v, x) -> y` applied after attention, or None (XSA,
    attention output gates).

    `y` is the attention output [B, T, H, D] before the heads merge and project; `v` the block's
    values [B, T, Hkv, D] (GQA: query head h reads KV head h // (H // Hkv)); `x` the normed block
    input [B, T, d] that attention saw. Modules of several plugins run in plugin order. Default: none.

    Args:
        spec: the model's settings, as for `pgolf_embed` (`num_heads` H, `num_kv_heads` Hkv, `head_dim` D).
        layer: the block's index, 0 .. `spec.num_layers` - 1; return None for the blocks the technique
            leaves alone (XSA acts on the last `last_n`).

    Example:
        class ExclusiveSelfAttention(nn.Module):  # XSA: drop each head's component along its own value
            def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
                b, t, h, d = y.shape
                grouped = y.reshape(b, t, v.size(-2), h // v.size(-2), d)  # query heads by KV head
                v_hat = F.normalize(v, dim=-1).unsqueeze(-2)
                return (grouped - (grouped * v_hat).sum(-1, keepdim=True) * v_hat).reshape(b, t, h, d)

        @hookimpl
        def pgolf_attention_post(self, spec: ModelSpec, layer: int) -> nn.Module | None:
            return ExclusiveSelfAttention() if layer >= spec.num_layers - self.config.last_n else None
    """


@spec("build", exclusive=True)
def pgolf_mlp(spec: ModelSpec, layer: int) -> nn.Module:
    """Exclusive. Once per block: the MLP, `forward(x) -> x` on the normed block input [B, T, d]
    (LeakyReLU², SwiGLU). Build its layers with `spec.linear("mlp.fc", d, spec.mlp_hidden)` and
    `spec.linear("mlp.proj", spec.mlp_hidden, d)` as attributes `fc` and `proj`, in that order, so that
    the state-dict keys, QAT's linears and the random init match the baseline; declare the output
    projection `zero_init`. Default: relu², `proj(relu(fc(x))²)`.

    Args:
        spec: the model's settings, as for `pgolf_embed`: d is `spec.model_dim`, the hidden width
            `spec.mlp_hidden` (already resolved from `mlp_mult`).
        layer: the block's index, 0 .. `spec.num_layers` - 1. Returning None leaves that block the default.

    Example:
        class LeakyReLU2MLP(nn.Module):  # leaky_relu2: proj(leaky_relu(fc(x), slope)²)
            def __init__(self, spec: ModelSpec, slope: float) -> None:
                super().__init__()
                self.fc = spec.linear("mlp.fc", spec.model_dim, spec.mlp_hidden)
                self.proj = spec.linear("mlp.proj", spec.mlp_hidden, spec.model_dim)
                declare_role(self.proj, "weight", zero_init=True)
                self.slope = slope  # a Python float: a constant of the compiled graph

            def forward(self, x: Tensor) -> Tensor:
                return self.proj(F.leaky_relu(self.fc(x), negative_slope=self.slope).square())

        @hookimpl
        def pgolf_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
            return LeakyReLU2MLP(spec, self.config.negative_slope)
    """


@spec("build", exclusive=True)
def pgolf_linear(spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module:
    """Exclusive. Once per linear layer: the layer for `role` (QAT's fake-quantized linear).

    Roles: `attn.c_q`, `attn.c_k`, `attn.c_v`, `attn.proj`, `mlp.fc`, `mlp.proj`, an untied
    `lm_head`, and those plugins ask `spec.linear(role, in, out)` for (`bigram.proj`,
    `ve_shared.proj`). Keep a `.weight` [out, in] (fp32 master weight, cast to the activation dtype
    in forward) and draw the same random numbers as `CastedLinear`. Default: `CastedLinear`.

    Args:
        spec: the model's settings, as for `pgolf_embed`.
        role: which layer is being built (one of the roles above); return None for a role the plugin
            leaves to the default (QAT with `scope = "blocks"` skips `lm_head`, `bigram.proj`, ...).
        in_features: the layer's input width (the last dimension of `x`).
        out_features: its output width; the weight is [out_features, in_features], without a bias.

    Example:
        @hookimpl
        def pgolf_linear(self, spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module | None:
            if self.config.scope == "blocks" and not role.startswith(("attn.", "mlp.")):
                return None  # CastedLinear
            # qat: a CastedLinear whose forward fake-quantizes its weight (straight-through) while its
            # 0-d buffer `FAKE_QUANT_SWITCH` is 1; a train hook flips that buffer in place
            return FakeQuantLinear(in_features, out_features, self.rule)
    """


@spec("build")
def pgolf_model_built(model: Model, spec: ModelSpec) -> None:
    """Once, after the model is built (fp32, CPU, before the roles are collected, the precision
    cast, the optimizers and compile): init schemes (OrthoInit) and the static slots
    `block.norm_scale` (LN scale), `block.parallel` (parallel residuals) and
    `model.set_layer_orders([[0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]])` (depth recurrence: phases 1.. of the
    virtual-to-physical layer order; a train hook sets `model.layer_phase`). Default: nothing.

    Args:
        model: the built `Model` (the core's GPT): `model.blocks` [num_layers], `model.tok_emb`, the
            plugin modules under their `state_dict_prefix`. Change it in place: weights under
            `torch.no_grad()` (read a parameter's declared role with `role_of`), the static slots above;
            add or replace no module (the build hooks make them).
        spec: the model's settings, as for `pgolf_embed`.

    Example:
        @hookimpl
        def pgolf_model_built(self, model: Model, spec: ModelSpec) -> None:
            for i, block in enumerate(model.blocks):  # ln_scale: damp the deeper blocks' norm outputs
                block.norm_scale = 1.0 / math.sqrt(i + 1)  # a Python float, compiled as a constant
    """


# ---------------------------------------------------------------- train


@spec("train")
def pgolf_step_start(state: TrainState) -> None:
    """Before each optimizer step's forward (late-QAT switch). `state` holds step, lr_scale,
    elapsed_ms, model (uncompiled), optimizers and `report(key, value)`. Default: nothing.

    Args:
        state: the run's one `TrainState`, the same object at every train hook. `state.step` is the
            index of the step about to run (0 first), `state.lr_scale` its learning-rate factor (already
            computed; the core sets each param group's `lr = base_lr * lr_scale` right after this hook),
            `state.elapsed_ms` the training time so far (validation excluded). `state.model` is the
            uncompiled model that the compiled one shares its parameters and buffers with;
            `state.optimizers.all` the optimizers; `state.recipe`, `state.env` (device, rank, world
            size) and `state.roles` (parameter name -> `ParamRole`) are read-only. A plugin may flip
            tensor buffers in place (a 0-d switch: no recompile), set `model.layer_phase` (compiled
            during the warm-up) and change param groups' `base_lr`; it replaces no module.

    Example:
        @hookimpl
        def pgolf_step_start(self, state: TrainState) -> None:
            if self.active or state.lr_scale >= self.config.threshold:
                return
            self.active = True  # late_qat: switch fake quantization on once the LR scale drops
            for name, switch in state.model.named_buffers():
                if name.endswith(FAKE_QUANT_SWITCH):
                    switch.fill_(1.0)
            state.report("late_qat/activated_step", state.step)
    """


@spec("train")
def pgolf_post_step(state: TrainState) -> None:
    """After each optimizer step (EMA update, SWA snapshot). Default: nothing.

    Args:
        state: as for `pgolf_step_start`, after the step: `state.step` now counts the steps done (the
            step just taken is `state.step - 1`) and the model's parameters hold the updated weights.
            Read them under `torch.no_grad()` into tensors of the plugin's own (this runs inside the
            timed loop: keep it cheap, on the device); change the live weights only where that is the
            technique.

    Example:
        @hookimpl
        def pgolf_post_step(self, state: TrainState) -> None:
            decay = self.config.decay  # ema: shadow = decay * shadow + (1 - decay) * w, in fp32
            with torch.no_grad():
                for name, w in state.model.state_dict().items():
                    self.shadow[name].mul_(decay).add_(w.float(), alpha=1.0 - decay)
    """


@spec("train")
def pgolf_fit_end(state: TrainState) -> None:
    """Once, after the training loop and before the final weights are chosen (QAT switched off
    for the final evals, as PR #63 did). Default: nothing.

    Args:
        state: as for `pgolf_post_step`, after the last step: `state.step` is the number of steps run
            (fewer than `[train] iterations` when the wallclock cap stopped the loop). Put the model in
            the form the final evals and the export should see: switches flipped back in place,
            `model.layer_phase` set.

    Example:
        @hookimpl
        def pgolf_fit_end(self, state: TrainState) -> None:
            state.model.layer_phase = 1  # depth_recurrence: score and export the looped layer order
    """


@spec("train", exclusive=True)
def pgolf_final_weights(state: TrainState) -> dict[str, Tensor] | None:
    """Exclusive. Once: the state dict to export and evaluate (EMA or SWA), or None.
    Default: the live weights.

    Args:
        state: as for `pgolf_fit_end`, after it; `state.model.state_dict()` are the live weights.
            Return a dict with the same keys (the core loads it into the model strictly, casting each
            tensor to the live one's dtype and device, then scores and exports it); leave the live
            tensors as they are.

    Example:
        @hookimpl
        def pgolf_final_weights(self, state: TrainState) -> dict[str, Tensor] | None:
            state.report("swa/count", self.count)
            if self.count <= 1:
                return None  # nothing averaged: the live weights
            live = state.model.state_dict()  # swa: the mean of the snapshots, in each tensor's dtype
            return {name: (total / self.count).to(live[name].dtype) for name, total in self.total.items()}
    """


# ---------------------------------------------------------------- export


@spec("export")
def pgolf_export_plan(plan: ExportPlan, weights: dict[str, Tensor], ctx: ExportContext) -> None:
    """Once, before quantization, in plugin order: edit `plan` (name -> `TensorPlan`: clip_percentile,
    row_clip, precomputed q/scale) for the tensors of `weights` (CPU, final weights; GPTQ-lite's clip
    search, SDClip). A plugin may also replace entries of `weights` (`weights[name] = pruned`: the
    export's own dict, read by the later plans and the format), never modify a tensor in place (it may
    share storage with the live model). `ctx` holds the recipe, the parameter roles and
    `report(key, value)`. Default: an empty plan per tensor.

    Args:
        plan: `ExportPlan`, state-dict key -> `TensorPlan`, one entry per tensor of `weights`, empty
            (all None) unless an earlier plugin filled it. Set fields of the entries in place:
            `clip_percentile` (a quantile of |w| per row), `row_clip` [rows] (absolute clip per row), or
            `q` and `scale` (integers and scales already computed, used as they are). A format that
            cannot honour an entry refuses it.
        weights: state-dict key -> tensor, the final weights (after `pgolf_final_weights`), on the CPU;
            matrices are [out, in]. Replace entries, never modify a tensor in place.
        ctx: `ExportContext`: `ctx.recipe` (e.g. `ctx.recipe.export.keep_float_max_numel`, the size
            under which a tensor is kept as floats), `ctx.roles` (key -> `ParamRole`; control tensors
            pass through as fp32, `is_control(name, ctx.roles)`) and `ctx.report(key, value)`.

    Example:
        @hookimpl
        def pgolf_export_plan(self, plan: ExportPlan, weights: dict[str, Tensor], ctx: ExportContext) -> None:
            keep = ctx.recipe.export.keep_float_max_numel
            for name, w in weights.items():  # sdclip: clip each row of a matrix at k * std(row)
                if w.ndim == 2 and w.numel() > keep and not is_control(name, ctx.roles):
                    plan[name].row_clip = self.config.matrix_k * w.float().std(dim=1)
    """


@spec("export", exclusive=True)
def pgolf_export_format(recipe: Recipe) -> ExportFormat:
    """Exclusive. Once per run and per `pgolf eval`: the format object that quantizes the weights
    and reads them back (int6). Its tag is stored in the artifact, so `pgolf eval` picks the same
    reader. A format whose `needs_plan` names a reason is refused at setup when no plugin makes a plan.
    Default: the baseline's int8 per-row format.

    Args:
        recipe: the resolved `Recipe` of the run (or of `pgolf eval`), read-only: the format's shared
            settings are in `recipe.export` (`keep_float_max_numel`, `clip_quantile`), the plugin's own
            in `self.config`.

    Example:
        @hookimpl
        def pgolf_export_format(self, recipe: Recipe) -> ExportFormat:
            # int6_export: label "int6", the tags it reads, quantize(weights, plan, roles, report) -> obj
            # and dequantize(obj, dtypes) -> weights; honours the plans' clips and q/scale
            e = recipe.export
            return Int6Format(self.config, e.keep_float_max_numel, e.clip_quantile)
    """


@spec("export")
def pgolf_export_corrections(recipe: Recipe) -> Correction | None:
    """Once per run and per `pgolf eval`: a correction stacked after quantization (LQER), or None.
    Corrections run in plugin order, each on the previous one's dequantized weights; their payloads
    go into the artifact.
    Default: none.

    Args:
        recipe: the resolved `Recipe` of the run (or of `pgolf eval`), read-only; the plugin's own
            settings are in `self.config`.

    Example:
        @hookimpl
        def pgolf_export_corrections(self, recipe: Recipe) -> Correction | None:
            # lqer: tag "lqer"; encode(weights, dequantized, plan) keeps low-rank factors A, B of the
            # largest errors w - deq; apply(dequantized, payload) adds A @ B back in the reader
            return LqerCorrection(self.config)
    """


@spec("export")
def pgolf_codecs() -> list[Codec]:
    """Once per run and per `pgolf eval`: the byte codecs this plugin adds (brotli, lzma); the
    recipe's `[export] compressor` names the one that writes. Default: zlib and zstd.

    Args:
        No arguments: a codec gets the recipe's `[export] level` as `encode`'s second argument,
            checked against the codec's `levels` when the recipe loads.

    Example:
        def encode(raw: bytes, level: int) -> bytes:  # lzma: one .xz stream at the preset `level`
            return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=level)

        @hookimpl
        def pgolf_codecs(self) -> list[Codec]:
            # XZ_MAGIC, the first six bytes of every .xz stream, lets a reader tell the codec from the file
            return [Codec("lzma", encode, lzma.decompress, magic=XZ_MAGIC, levels=(0, 9))]
    """


# ---------------------------------------------------------------- eval


@spec("eval")
def pgolf_eval_adapt(model: Model, chunk: ValChunk) -> None:
    """After each chunk of the final sliding-window eval was scored (all but the last): test-time
    training on those already-scored tokens (score-first TTT, PR #461/#549). The model it leaves
    scores the next chunk.

    `chunk.tokens` [n + 1] are the chunk's inputs and targets (int64, eval device), every target
    scored before the hook runs; `chunk.rows(seq_len)` is this rank's share of its full rows;
    `chunk.env.average(grads)` averages gradients over ranks; `chunk.index`/`chunk.count` place it
    (0 starts a fresh optimizer); `chunk.report(key, value)` logs. `model` is the uncompiled model
    holding the round-tripped weights, in train mode, outside `inference_mode`. The chunk size is
    `[eval] chunk_tokens`; without a sliding stride the windows are the rows (stride = seq_len).
    Default: nothing.

    Args:
        model: the `Model` that scores the next chunk: change its parameters in place (that is the
            adaptation) and restore any `requires_grad` flags it changes; `model(x, y)` is the mean
            loss, `fake_quant_off(model)` trains the real weights of a QAT model.
        chunk: the `ValChunk` just scored, as above; `chunk.env` is this rank's `Env` (device,
            rank, world size, `autocast()`), `chunk.seq_len` the eval's sequence length, `chunk.scored`
            True. Read-only.

    Example:
        @hookimpl
        def pgolf_eval_adapt(self, model: Model, chunk: ValChunk) -> None:
            if chunk.index == 0:  # score-first TTT, shortened to one SGD step per scored chunk
                self.optimizer = torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=0.9)
            x, y = chunk.rows(chunk.seq_len)
            with fake_quant_off(model), chunk.env.autocast():
                loss = model(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            chunk.env.average([p.grad for p in model.parameters()])
            self.optimizer.step()
    """


@spec("eval")
def pgolf_eval_prescore(model: Model, chunk: ValChunk) -> None:
    """Once, before the final sliding-window eval: adapt on validation tokens *before* they are
    scored, as PR #297 and #415 did. The challenge forbids it, so any implementation marks the run
    non-compliant (`summary.json` `"eval_compliant": false`, said in the log at the start and the
    end); it exists to reproduce those records. `chunk` is the whole validation stream
    (`scored=False`, one chunk). Default: nothing.

    Args:
        model: as for `pgolf_eval_adapt`: the uncompiled model with the round-tripped weights, adapted
            in place; the sliding-window eval then scores what it leaves.
        chunk: a `ValChunk` holding every validation token (`index` 0, `count` 1, `scored` False), on
            the eval device; `chunk.rows(seq_len)`, `chunk.env` and `chunk.report` as for
            `pgolf_eval_adapt`.

    Example:
        @hookimpl
        def pgolf_eval_prescore(self, model: Model, chunk: ValChunk) -> None:
            # ttt_sgd's pre-scoring form: `epochs` SGD passes over all of the validation rows
            optimizer = torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=self.config.momentum)
            steps = self._adapt(model, chunk, optimizer)
            chunk.report("ttt_sgd/prescore_steps", steps)
    """


# ---------------------------------------------------------------- the catalog, derived from the specs above


def catalog() -> dict[str, Callable[..., Any]]:
    """Every hook spec by name, in the order of this file (which is the order of a run's phases)."""
    return {name: value for name, value in globals().items() if hasattr(value, "pgolf_phase")}


EXCLUSIVE_HOOKS = tuple(name for name, function in catalog().items() if function.pgolf_spec["firstresult"])  # type: ignore[attr-defined]
