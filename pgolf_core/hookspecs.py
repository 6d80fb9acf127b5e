"""The hook catalog: the public contract between the core and plugins.

Hooks run at build time, once per optimizer step, at export and at eval; never inside a model's
`forward`. Build hooks return *modules* that the core puts into named slots before the
optimizers exist and before `torch.compile(fullgraph=True)`; anything that changes during
training must be a tensor buffer updated in place from a step hook.

Collecting hooks return one answer per plugin, in `(plugin.order, name)` order. Exclusive hooks
(`firstresult`) may be answered by at most one enabled plugin; the core supplies the default.

Settings validation (configure phase, not a hook): a plugin class may define
`validate(config, model, recipe) -> None` as a `staticmethod`. `load_recipe` calls it for each
enabled plugin once the recipe is resolved, before anything is built, trained or written, with the
plugin's validated `Config`, the resolved `[model]` settings (`ModelConfig`: `num_layers`,
`model_dim`, `num_heads`, ...) and the whole `Recipe`. Raise `ValueError` (or `PgolfError`) whose
message starts with the key, the value and the valid range (`"last_n=12: expected 0..11"`); the
core prefixes the recipe file and `[plugins.<name>]`. Why a static method: the check needs no
instance, so a bad setting is reported as the recipe loads, before `pgolf run` touches its output.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "pgolf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# Hooks that at most one enabled plugin may implement (checked when the run's plugins load).
EXCLUSIVE_HOOKS = ("pgolf_rotary", "pgolf_linear", "pgolf_final_weights", "pgolf_quantize", "pgolf_compress")


@hookspec
def pgolf_configure(run: Any) -> None:
    """Adjust run-level settings once, before the model is built.

    `run` is the `RunContext`: `run.recipe` (the resolved `Recipe`), `run.control_patterns`
    (a list of name substrings marking small control tensors; append your parameters' names so
    that they go to the scalar optimizer group and stay fp32), and `run.log(msg)`.
    """


@hookspec
def pgolf_embed(spec: Any) -> Any:
    """Return an `nn.Module` (or None) applied around the token embedding.

    The module has `forward(x, input_ids) -> x` and a `stage` attribute: `"pre_norm"` modules run
    on the raw embedding before the embedding RMSNorm (BigramHash adds), `"post_norm"` modules
    after it (SmearGate mixes); the result of the last post-norm module is the residual anchor x0.
    The module is registered as `model.<state_dict_prefix>` (a required attribute), so that its
    state-dict keys match the record scripts' and record checkpoints load.
    """


@hookspec
def pgolf_value_extras(spec: Any) -> Any:
    """Return a module (or None) computed once per forward: `forward(input_ids) -> {layer: tensor}`
    of shape [B, T, Hkv * D], added to that block's flat value projection before the heads split
    (so it flows through attention and attention post-processing). Registered like `pgolf_embed`
    modules; an empty `state_dict_prefix` puts the module's children at the model's top level.
    """


@hookspec(firstresult=True)
def pgolf_rotary(spec: Any, layer: int) -> Any:
    """Exclusive. Return the rotary module of block `layer`: `forward(q, k) -> (q, k)` on tensors
    of shape [B, H, T, D] (after QK-norm, before q_gain). Default: full RoPE, base `rope_base`."""


@hookspec
def pgolf_attention_post(spec: Any, layer: int) -> Any:
    """Return a module `(y, v) -> y` applied after attention in block `layer` (or None).

    `y` is the attention output [B, T, H, D] before the heads are merged and projected; `v` is the
    block's value tensor [B, T, Hkv, D] (GQA: query head h uses KV head h // (H // Hkv)).
    """


@hookspec(firstresult=True)
def pgolf_linear(spec: Any, role: str, in_features: int, out_features: int) -> Any:
    """Exclusive. Return the linear layer for `role` (or None for the default): the block linears
    `attn.c_q`, `attn.c_k`, `attn.c_v`, `attn.proj`, `mlp.fc`, `mlp.proj`, an untied `lm_head`, and
    whatever role plugins ask `spec.linear(role, in, out)` for (`bigram.proj`, `ve_shared.proj`).
    It must keep a `.weight` of shape [out, in] (fp32 master weight cast to the activation dtype in
    forward) and draw the same random numbers as `CastedLinear` (records' init order). Default:
    `CastedLinear`."""


@hookspec
def pgolf_model_built(model: Any, spec: Any) -> None:
    """Called once after the model is built (fp32, CPU, before the precision cast, optimizers and
    compile): init schemes, parameter group tags, static slots such as `block.norm_scale`."""


@hookspec
def pgolf_step_start(state: Any) -> None:
    """Called before each optimizer step's forward. `state` is the `TrainState` (step, lr_scale,
    elapsed_ms, model, optimizers, log)."""


@hookspec
def pgolf_post_step(state: Any) -> None:
    """Called after each optimizer step (EMA update, SWA snapshot, late-QAT switch)."""


@hookspec(firstresult=True)
def pgolf_final_weights(state: Any) -> Any:
    """Exclusive. Return the state dict to export and evaluate (EMA or SWA), or None to keep the
    live weights. Default: the live weights."""


@hookspec
def pgolf_pre_export(state: Any, weights: dict, plan: dict) -> None:
    """Edit the export `plan` (tensor name -> dict of settings such as `bits`, `clip`) before
    quantization (GPTQ-lite clip search, pruning)."""


@hookspec(firstresult=True)
def pgolf_quantize(state: Any, weights: dict, plan: dict) -> Any:
    """Exclusive. Return `(label, quantized_object, dequantize_fn)`: `label` names the format in
    log lines (e.g. "int6"), `quantized_object` is what gets `torch.save`d and compressed, and
    `dequantize_fn(quantized_object)` returns a state dict. Default: the baseline's int8."""


@hookspec(firstresult=True)
def pgolf_dequantize(obj: Any, dtypes: dict) -> Any:
    """Return a state dict when `obj` (a deserialized artifact, e.g. `final_model.ptz` read back by
    `pgolf eval --checkpoint`) is in a format this plugin writes, else None; `dtypes` maps each
    name to the live model's dtype. Why: a plugin's `pgolf_quantize` format is only readable by
    that plugin. Default: the baseline's int8 format and raw state dicts."""


@hookspec(firstresult=True)
def pgolf_compress(raw: bytes) -> Any:
    """Exclusive. Return `(codec_name, compressed_bytes)`; `codec_name` must be one that
    `pgolf_core.artifact.decompress` reads back ("zlib", "zstd"). Default: the recipe's `[export]`
    compressor (zlib level 9 in the baseline)."""


@hookspec
def pgolf_eval_adapt(model: Any, chunk: Any, state: Any) -> None:
    """Called with each validation chunk *after* it was scored (test-time training on already
    scored tokens only). `chunk` is `(x, y)`, the batch's input and target ids; `model` is the
    uncompiled model holding the round-tripped weights, in eval mode, outside `inference_mode`.
    Runs during the last, reported eval stage only (sliding window if enabled, else the round
    trip); the run log names the plugins and the stage."""
