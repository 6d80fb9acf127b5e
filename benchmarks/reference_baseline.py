"""A plain functional reference of the naive-baseline GPT math.

No modules, no slots, no plugins: a dict of tensors named like the baseline record's `state_dict`
goes in, logits or the mean cross-entropy come out. The shapes are read off the tensors, so the
only hyperparameters are the logit soft cap and the RoPE base. It serves two purposes:

* `tests/test_model.py` checks `pgolf_core.model.GPT` against it with `fused=False`, where every
  step (RMSNorm, causal softmax attention with GQA, cross-entropy) is written out by hand;
* `benchmarks/bench_baseline_cpu.py` times it with `fused=True` (the same PyTorch kernels the
  record script calls: `F.rms_norm`, SDPA, `F.cross_entropy`) as the monolithic-script yardstick.

Matrices are cast to the activation dtype at use, like the records' CastedLinear; in fp32 (the
only dtype the tests and the benchmark use) every cast is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def num_layers_of(params: dict[str, Tensor]) -> int:
    return 1 + max(int(name.split(".")[1]) for name in params if name.startswith("blocks."))


def rms_norm(x: Tensor, fused: bool) -> Tensor:
    """Parameter-free RMSNorm over the last dim, eps = finfo(dtype).eps (the `F.rms_norm` default)."""
    if fused:
        return F.rms_norm(x, (x.size(-1),))
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + torch.finfo(x.dtype).eps)


def linear(x: Tensor, weight: Tensor) -> Tensor:
    return x @ weight.to(x.dtype).t()


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin of the angles t * base^(-2i/D), fp32, shape [T, D/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def rotate_half_split(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE, half-split convention: [x1 cos + x2 sin, -x1 sin + x2 cos] with x1, x2 the two halves of D."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


def causal_gqa_attention(q: Tensor, k: Tensor, v: Tensor, fused: bool) -> Tensor:
    """q [B, H, T, D]; k, v [B, Hkv, T, D]; query head h reads KV head h // (H / Hkv). Returns [B, H, T, D]."""
    group = q.size(1) // k.size(1)
    if fused and (group == 1 or _SDPA_HAS_GQA):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    seq_len = q.size(-2)
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def attention(x: Tensor, p: dict[str, Tensor], pre: str, rope: tuple[Tensor, Tensor], fused: bool) -> Tensor:
    bsz, seq_len, dim = x.shape
    num_heads = p[pre + "q_gain"].numel()
    head_dim = dim // num_heads
    num_kv_heads = p[pre + "c_k.weight"].size(0) // head_dim
    q = linear(x, p[pre + "c_q.weight"]).reshape(bsz, seq_len, num_heads, head_dim).transpose(1, 2)
    k = linear(x, p[pre + "c_k.weight"]).reshape(bsz, seq_len, num_kv_heads, head_dim).transpose(1, 2)
    v = linear(x, p[pre + "c_v.weight"]).reshape(bsz, seq_len, num_kv_heads, head_dim).transpose(1, 2)
    q, k = rms_norm(q, fused), rms_norm(k, fused)  # QK-norm over the head dim
    cos, sin = (t.to(q.dtype) for t in rope)
    q, k = rotate_half_split(q, cos, sin), rotate_half_split(k, cos, sin)
    q = q * p[pre + "q_gain"].to(q.dtype)[None, :, None, None]
    y = causal_gqa_attention(q, k, v, fused)
    return linear(y.transpose(1, 2).reshape(bsz, seq_len, dim), p[pre + "proj.weight"])


def mlp(x: Tensor, p: dict[str, Tensor], pre: str) -> Tensor:
    return linear(torch.relu(linear(x, p[pre + "fc.weight"])).square(), p[pre + "proj.weight"])


def block(x: Tensor, x0: Tensor, p: dict[str, Tensor], i: int, rope: tuple[Tensor, Tensor], fused: bool) -> Tensor:
    pre = f"blocks.{i}."
    mix = p[pre + "resid_mix"].to(x.dtype)
    x = mix[0] * x + mix[1] * x0
    x = x + p[pre + "attn_scale"].to(x.dtype) * attention(rms_norm(x, fused), p, pre + "attn.", rope, fused)
    return x + p[pre + "mlp_scale"].to(x.dtype) * mlp(rms_norm(x, fused), p, pre + "mlp.")


def hidden(params: dict[str, Tensor], input_ids: Tensor, rope_base: float = 10000.0, fused: bool = False) -> Tensor:
    """Final-normed hidden states [B, T, d] of the U-Net stack."""
    num_layers = num_layers_of(params)
    num_heads = params["blocks.0.attn.q_gain"].numel()
    x = rms_norm(params["tok_emb.weight"][input_ids], fused)
    x0 = x
    rope = rope_tables(input_ids.size(1), x.size(-1) // num_heads, rope_base, x.device)  # once per forward
    encoder = num_layers // 2
    skips = []
    for i in range(encoder):
        x = block(x, x0, params, i, rope, fused)
        skips.append(x)
    for j in range(num_layers - encoder):
        if skips:  # LIFO: decoder block j gets encoder output encoder-1-j; odd L leaves the last without one
            x = x + params["skip_weights"][j].to(x.dtype) * skips.pop()
        x = block(x, x0, params, encoder + j, rope, fused)
    return rms_norm(x, fused)


def logits(
    params: dict[str, Tensor],
    input_ids: Tensor,
    logit_softcap: float = 30.0,
    rope_base: float = 10000.0,
    fused: bool = False,
) -> Tensor:
    """Soft-capped logits [B, T, V]: tied to `tok_emb.weight` unless `lm_head.weight` is present."""
    x = hidden(params, input_ids, rope_base, fused)
    z = linear(x, params.get("lm_head.weight", params["tok_emb.weight"]))
    return logit_softcap * torch.tanh(z / logit_softcap)


def loss(
    params: dict[str, Tensor],
    input_ids: Tensor,
    target_ids: Tensor,
    logit_softcap: float = 30.0,
    rope_base: float = 10000.0,
    fused: bool = False,
) -> Tensor:
    """Mean cross-entropy over all B*T positions, computed on fp32 logits."""
    z = logits(params, input_ids, logit_softcap, rope_base, fused).float().reshape(-1, params["tok_emb.weight"].size(0))
    targets = target_ids.reshape(-1)
    if fused:
        return F.cross_entropy(z, targets, reduction="mean")
    return (torch.logsumexp(z, dim=-1) - z.gather(1, targets[:, None]).squeeze(1)).mean()
