"""The naive-baseline GPT of the challenge, with named slots that plugins fill at build time.

Math, shapes, init and `state_dict` names follow the baseline record's `train_gpt.py`,
so an official checkpoint loads with strict key matching. The slots
(embedding modules, per-layer rotary, attention post-processing and MLP, linear factory) are
filled once, before optimizers and `torch.compile`; `forward` contains no hook calls.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.types import Model, ModelConfig, PgolfError, Roles, collect_roles, declare_role, is_control

# ---------------------------------------------------------------- attention backend
# `auto` = flash attention on CUDA when installed (and says so), PyTorch SDPA otherwise; an explicit `flash`
# without the package is an error, never a fallback.


def _find_flash(required: bool = False) -> Any:
    """The installed flash attention module: FlashAttention-3 (Hopper, used by the #374/#414 records) first, then
    FlashAttention-2. None when neither is, or, when `required` (`attention = "flash"`), an error."""
    for name in ("flash_attn_interface", "flash_attn"):
        with contextlib.suppress(ImportError):  # not installed (or not importable): try the next one
            return importlib.import_module(name)
    if required:
        raise PgolfError(
            'flash attention was requested ([model] attention = "flash") but neither flash_attn_interface nor '
            'flash_attn is installed (pip install \'pgolf[gpu]\'); use "auto" or "sdpa" to run with PyTorch SDPA'
        )


def resolve_backend(requested: str, device_type: str) -> tuple[str, str]:
    """Return (backend, reason) for the recipe's `model.attention` on this device."""
    if requested == "flash" and device_type != "cuda":
        raise PgolfError('[model] attention = "flash" needs a CUDA device; use "auto" or "sdpa"')
    if requested == "sdpa":
        return "sdpa", "PyTorch SDPA as requested"
    flash = _find_flash(required=requested == "flash") if device_type == "cuda" else None
    if flash is None:
        why = "no CUDA device" if device_type != "cuda" else "flash attention not installed"
        return "sdpa", f"auto: {why} -> PyTorch SDPA"
    if requested == "flash":
        return "flash", f"flash ({flash.__name__}) as requested"
    return "flash", f"auto: CUDA and {flash.__name__} installed -> flash attention"


# ---------------------------------------------------------------- the model


@dataclass
class ModelSpec(ModelConfig):
    """The `[model]` settings as the build needs them, handed to plugins' build hooks: a `ModelConfig` with its
    choices resolved (the MLP width, the attention backend) and the training sequence length (rotary scaling)."""

    mlp_hidden: int = 1024  # resolved: never 0 (mlp_mult x model_dim) here
    attention: Literal["auto", "sdpa", "flash"] = "sdpa"  # resolved: sdpa | flash, never "auto" here
    train_seq_len: int = 1024
    # The exclusive `pgolf_linear` hook, put here by the build. A spec made outside a build (a plugin's unit test)
    # has None, and gets what the defaults plugin answers: CastedLinear.
    linear_factory: Callable[[str, int, int], nn.Module] | None = field(default=None, repr=False, compare=False)

    def linear(self, role: str, in_features: int, out_features: int) -> nn.Module:
        """The model's linear layers, the core's and plugins' projections alike (`bigram.proj`, ...),
        come from here, so a layer-replacing plugin (QAT) reaches them at construction time (a
        plugin's tiny gate, e.g. smeargate's scalar variant, may use a plain nn.Linear)."""
        if self.linear_factory is None:
            return CastedLinear(in_features, out_features)
        return self.linear_factory(role, in_features, out_features)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


class CastedLinear(nn.Linear):
    """Linear without bias whose fp32 master weight is cast to the activation dtype (bf16 on GPU)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


# A layer that fake-quantizes its weight while training (QAT) holds a 0-d float buffer of this name,
# 1.0 = on; flipping it in place needs no recompile. The one thing eval-time training must know of QAT.
FAKE_QUANT_SWITCH = "fake_quant_on"


@contextlib.contextmanager
def fake_quant_off(model: nn.Module, off: bool = True) -> Iterator[int]:
    """Every fake-quantization switch of `model` at 0 inside the block (when `off`), put back after;
    yields how many there are. Test-time training adapts the real weights this way (PR #297's fix)."""
    switches = [b for n, b in model.named_buffers() if off and n.rsplit(".", 1)[-1] == FAKE_QUANT_SWITCH]
    saved = [s.clone() for s in switches]
    for s in switches:
        s.zero_()
    try:
        yield len(switches)
    finally:
        for s, v in zip(switches, saved, strict=True):
            s.copy_(v)


class Rotary(nn.Module):
    """Full RoPE over the head dimension, half-split convention, fp32 angles cast to the activation dtype."""

    inv_freq: Tensor

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.arange(q.size(-2), device=q.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos()[None, None].to(q.dtype), freqs.sin()[None, None].to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, spec: ModelSpec, parts: ModelParts, layer: int) -> None:
        super().__init__()
        d = spec.model_dim
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        # `flash_attn_func` (layout [B, T, H, D], GQA native), found once here: an import in `forward` breaks the graph
        self.flash = _find_flash(required=True).flash_attn_func if spec.attention == "flash" else None
        self.c_q = spec.linear("attn.c_q", d, d)
        self.c_k = spec.linear("attn.c_k", d, spec.kv_dim)
        self.c_v = spec.linear("attn.c_v", d, spec.kv_dim)
        self.proj = spec.linear("attn.proj", d, d)
        declare_role(self.proj, "weight", zero_init=True)
        self.q_gain = nn.Parameter(torch.full((spec.num_heads,), spec.qk_gain_init, dtype=torch.float32))
        declare_role(self, "q_gain", control=True)
        self.rotary = parts.rotary(layer)
        self.post = nn.ModuleList(parts.attention_post(layer))

    def forward(self, x: Tensor, v_extra: Tensor | None = None) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x)
        if v_extra is not None:  # value embeddings join the flat values before the head split
            v = v + v_extra
        v = v.reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        q = F.rms_norm(q, (q.size(-1),))
        k = F.rms_norm(k, (k.size(-1),))
        q, k = self.rotary(q, k)
        q = q * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        if self.flash is not None:  # flash attention: layout [B, T, H, D], GQA native
            y = self.flash(q.transpose(1, 2), k.transpose(1, 2), v, causal=True)
            y = y[0] if isinstance(y, tuple) else y  # FA3 returns (out, lse)
        else:  # PyTorch SDPA: [B, H, T, D] in, [B, T, H, D] out
            gqa: dict[str, Any] = {"enable_gqa": True} if k.size(1) != q.size(1) else {}
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, **gqa).transpose(1, 2)
        for module in self.post:
            y = module(y, v, x)
        return self.proj(y.contiguous().reshape(bsz, seqlen, dim))


class MLP(nn.Module):
    """relu² MLP (from modded-nanogpt); the default answer of `pgolf_mlp`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.fc = spec.linear("mlp.fc", spec.model_dim, spec.mlp_hidden)
        self.proj = spec.linear("mlp.proj", spec.mlp_hidden, spec.model_dim)
        declare_role(self.proj, "weight", zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    # Static slots, set in `pgolf_model_built`: a constant that multiplies both pre-norm outputs (LN
    # scale sets 1/sqrt(layer+1)); GPT-J-style parallel lanes, attention and MLP reading the same input.
    norm_scale: float = 1.0
    parallel: bool = False

    def __init__(self, spec: ModelSpec, parts: ModelParts, layer: int) -> None:
        super().__init__()
        d = spec.model_dim
        self.attn = CausalSelfAttention(spec, parts, layer)
        self.mlp = parts.mlp(layer)
        self.attn_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))).float())
        for name in ("attn_scale", "mlp_scale", "resid_mix"):
            declare_role(self, name, control=True)

    def _norm(self, x: Tensor) -> Tensor:
        x = F.rms_norm(x, (x.size(-1),))
        return x * self.norm_scale if self.norm_scale != 1.0 else x

    def forward(self, x: Tensor, x0: Tensor, v_extra: Tensor | None = None) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        h = x + self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(self._norm(x), v_extra)
        return h + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(self._norm(x if self.parallel else h))


class ModelParts(NamedTuple):
    """The build-time slot fillers: the answers of the enabled plugins' build hooks, or of the defaults plugin
    where none answers (`run.build_model_with` makes them). The model has no fallbacks of its own."""

    embed: Callable[[], list[nn.Module]]
    value_extras: Callable[[], list[nn.Module]]
    rotary: Callable[[int], nn.Module]
    attention_post: Callable[[int], list[nn.Module]]
    mlp: Callable[[int], nn.Module]


class GPT(Model):
    """U-Net GPT: encoder half pushes skips, decoder half pops them (LIFO) with learned weights.

    Layer schedule (depth recurrence): `layer_orders[layer_phase]` lists the block run at each virtual
    layer, physical indices that may repeat; the first half (rounded down) is the encoder. Phase 0 is
    `0..L-1`. `layer_phase` is a Python int, so `torch.compile` keeps one graph per phase: the run's
    warm-up compiles every phase, and a plugin switching phases mid-run never recompiles.
    """

    def __init__(self, spec: ModelSpec, parts: ModelParts) -> None:
        super().__init__()
        self.spec = spec
        self.tok_emb = nn.Embedding(spec.vocab_size, spec.model_dim)
        self.set_layer_orders([])
        self.blocks = nn.ModuleList([Block(spec, parts, i) for i in range(spec.num_layers)])
        self.lm_head = None if spec.tie_embeddings else spec.linear("lm_head", spec.model_dim, spec.vocab_size)
        if self.lm_head is not None:
            declare_role(self.lm_head, "weight", zero_init=True)
        self.flat_prefixes: list[str] = []
        embeds = [(self._attach(module), getattr(module, "stage", "post_norm")) for module in parts.embed()]
        self.embed_pre_names = tuple(name for name, stage in embeds if stage == "pre_norm")
        self.embed_post_names = tuple(name for name, stage in embeds if stage != "pre_norm")
        self.value_extra_names = tuple(self._attach(module) for module in parts.value_extras())
        if spec.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=spec.tied_embed_init_std)
        roles = collect_roles(self)  # every parameter declared zero_init (the output projections)
        for name, param in self.named_parameters():
            if name in roles and roles[name].zero_init:
                nn.init.zeros_(param)

    def set_layer_orders(self, orders: list[list[int]]) -> None:
        """Phases 1.. of the layer schedule (build time: `pgolf_model_built`, before the optimizers); the
        skip weights are sized for the phase with the most encoder/decoder pairs, and phase k's decoder
        position i uses skip weight i (PR #1493's rule)."""
        n = self.spec.num_layers
        if bad := [o for o in orders if not o or not all(0 <= p < n for p in o)]:
            raise ValueError(f"layer order {bad[0]}: expected a non-empty list of block indices in [0, {n})")
        self.layer_orders, self.layer_phase = (tuple(range(n)), *(tuple(o) for o in orders)), 0
        num_skips = max(len(o) // 2 for o in self.layer_orders)  # min(enc, dec) = enc: the encoder is the smaller half
        self.skip_weights = nn.Parameter(torch.ones(num_skips, self.spec.model_dim, dtype=torch.float32))
        declare_role(self, "skip_weights", control=True)

    def _attach(self, module: nn.Module) -> str:
        """Register a plugin module as `self.<state_dict_prefix>`. One with `flat_state_dict = True` keeps a
        record's top-level key names (`ve_shared.embed.weight`, not `value_embed.ve_shared...`): an
        adapter at save and load, `_record_keys` and `_module_keys`."""
        name = str(module.state_dict_prefix)
        self.add_module(name, module)
        if getattr(module, "flat_state_dict", False):
            if not self.flat_prefixes:
                self.register_state_dict_post_hook(GPT._record_keys)
                self.register_load_state_dict_pre_hook(GPT._module_keys)
            self.flat_prefixes.append(name + ".")
        return name

    def state_key(self, name: str) -> str:
        """The state-dict key of a parameter or buffer name (a flat plugin module's lose their prefix)."""
        return next((name[len(p) :] for p in self.flat_prefixes if name.startswith(p)), name)

    def _record_keys(self, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        """Flat modules' keys without their prefix, a record's order: its top-level tensors (the model's,
        then the flat modules' own, e.g. PR #194's `smear_gate_param`) first, then the rest as built."""
        items = [(k[: len(prefix)] + self.state_key(k[len(prefix) :]) if k.startswith(prefix) else k, v)
                 for k, v in state_dict.items()]  # fmt: skip
        state_dict.clear()
        state_dict.update([kv for kv in items if "." not in kv[0][len(prefix) :]])
        state_dict.update(items)

    def _module_keys(self, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        names = {self.state_key(n): n for n, _ in [*self.named_parameters(), *self.named_buffers()]}
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] in names]:
            state_dict[prefix + names[key[len(prefix) :]]] = state_dict.pop(key)

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states [B, T, d]."""
        x = self.tok_emb(input_ids)
        for name in self.embed_pre_names:
            x = getattr(self, name)(x, input_ids)
        x = F.rms_norm(x, (x.size(-1),))
        for name in self.embed_post_names:
            x = getattr(self, name)(x, input_ids)
        x0 = x
        extra: dict[int, Tensor] = {}  # per-layer additions to the flat values, summed over the value-extras modules
        for name in self.value_extra_names:
            for layer, value in getattr(self, name)(input_ids).items():
                extra[layer] = extra[layer] + value if layer in extra else value
        order = self.layer_orders[self.layer_phase]
        skips: list[Tensor] = []
        for layer in order[: len(order) // 2]:
            x = self.blocks[layer](x, x0, extra.get(layer))
            skips.append(x)
        for i, layer in enumerate(order[len(order) // 2 :]):
            if skips:
                x = x + self.skip_weights[i].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[layer](x, x0, extra.get(layer))
        return F.rms_norm(x, (x.size(-1),))

    def logits_of(self, x: Tensor) -> Tensor:
        logits = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        return self.spec.logit_softcap * torch.tanh(logits / self.spec.logit_softcap)

    def forward_logits(self, input_ids: Tensor) -> Tensor:
        """Soft-capped logits [B, T, V] (sliding-window eval and analysis)."""
        return self.logits_of(self.hidden(input_ids))

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Mean cross-entropy (fp32) of the soft-capped logits."""
        logits = self.logits_of(self.hidden(input_ids).flatten(0, 1))  # [B*T, V]
        return F.cross_entropy(logits.float(), target_ids.reshape(-1), reduction="mean")


def apply_training_precision(model: nn.Module, roles: Roles, fp32_embeddings: bool = False) -> None:
    """The records' GPU precision policy: cast everything to bf16, then restore every Linear and
    every small/control parameter to fp32. Embedding tables therefore train as bf16, unless
    `fp32_embeddings` (the fix) restores them too."""
    model.bfloat16()
    for module in model.modules():
        if isinstance(module, nn.Linear) or (fp32_embeddings and isinstance(module, nn.Embedding)):
            module.float()
    for name, param in model.named_parameters():
        if param.ndim < 2 or is_control(name, roles):
            param.data = param.data.float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
