"""Load a record's `train_gpt.py` (a path the user already has) as a module, at run time.

pgolf never vendors record code; benchmarks that compare against a record import the user's copy.
The record scripts import FlashAttention-3 at top level; where it is absent (any CPU machine) a
stand-in with the same math and layout is installed: `flash_attn_func(q, k, v, causal)` on
[batch, seq, heads, head_dim] tensors, computed by PyTorch SDPA with GQA, which is also what
pgolf's `sdpa` backend runs, so a CPU timing compares the models and not two attention kernels.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def _sdpa_flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=causal,
        enable_gqa=k.size(2) != q.size(2),
    )
    return y.transpose(1, 2)


def load_record(path: Path, required: str) -> types.ModuleType:
    """Import `path` as a module; exit with a clear message if it lacks attribute `required`."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (pass the path of the record's file, e.g. its train_gpt.py)")
    if "flash_attn_interface" not in sys.modules and importlib.util.find_spec("flash_attn_interface") is None:
        stub = types.ModuleType("flash_attn_interface")
        stub.flash_attn_func = _sdpa_flash_attn_func  # type: ignore[attr-defined]
        sys.modules["flash_attn_interface"] = stub
    spec = importlib.util.spec_from_file_location("record_train_gpt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, required):
        raise SystemExit(f"{path}: no {required} (not the record file this needs)")
    return module


def pr414_record_kwargs(recipe) -> dict:
    """The #414 record GPT's constructor arguments, from a pgolf recipe (the same hyperparameters)."""
    m, p = recipe.model, {name: e.config for name, e in recipe.plugins.items() if e.enabled}
    return dict(
        vocab_size=m.vocab_size,
        num_layers=m.num_layers,
        model_dim=m.model_dim,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        mlp_mult=m.mlp_mult,
        tie_embeddings=m.tie_embeddings,
        tied_embed_init_std=m.tied_embed_init_std,
        logit_softcap=m.logit_softcap,
        rope_base=m.rope_base,
        qk_gain_init=m.qk_gain_init,
        bigram_vocab_size=p["bigram_hash"].buckets,
        bigram_dim=p["bigram_hash"].dim,
        xsa_last_n=p["xsa"].last_n,
        rope_dims=p["partial_rope"].dims,
        ln_scale=True,
        ve_enabled=True,
        ve_dim=p["value_embed"].dim,
        ve_layers=",".join(map(str, p["value_embed"].layers)),
    )


def perturb(model: torch.nn.Module, seed: int) -> torch.Generator:
    """Add seeded noise to every parameter (non-zero projections and gates, as after some training);
    returns the generator, so callers draw their batch from the same stream."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.02 * torch.randn(p.shape, generator=g)).to(device=p.device, dtype=p.dtype))
    return g


def as_the_record_trains_on_cuda(record: types.ModuleType, model: torch.nn.Module) -> torch.nn.Module:
    """The records' `main()` precision: bf16 model, `CastedLinear` back to fp32, low-dim/control fp32."""
    model.bfloat16()
    for module in model.modules():
        if isinstance(module, record.CastedLinear):
            module.float()
    record.restore_low_dim_params_to_fp32(model)
    return model
