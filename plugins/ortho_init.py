"""OrthoInit: orthogonal init of the large linear layers, with the records' output scaling.

What (PR #297/#374/#414 rule): for every Linear, flagged zero-init → zeros;
else if both dims ≥ `min_dim` (64) → `orthogonal_(gain=1)`, and if its name contains ".proj." or
ends with ".proj" → × 1/√(2L). Record quirk: the block output projections are zero-init flagged,
so the 1/√(2L) scaling reaches only `bigram.proj` and `ve_shared.proj`. `scale_zero_init_proj =
true` is the fix the READMEs describe (orthogonal × 1/√(2L) on attn.proj/mlp.proj too), off in
the record recipes. PR #194's rule: `min_dim = 1` (every non-zero-init Linear).
PR #297's "Overtone" init adds two settings (both off by default, on in `recipes/pr297.toml`):
`overtone = true` reshapes the tied embedding's spectrum (SVD `W = U diag(S) Vᵀ` of the normal
init, then `S_k = S_1 / √k`, a power-law decay like a string's overtones), before the orthogonal
pass as the record does; `phase_resid_mix = true` sets block i's `resid_mix` to (φ_i, 1 − φ_i) with
φ_i = σ(3·(i/(L−1) − 0.5)), so early blocks lean on the embedding x0 and late ones on the residual.
Runs late (order 700, `Order.INIT`) so that it sees every plugin's layers, as the records' `_init_weights` does.
Why: orthogonal matrices keep every singular value at 1, so early Muon steps (which orthogonalize
updates) start from well-conditioned weights; PR #194's README says SmearGate needs it.
Sources: the 2026-03-20 SmearGate_BigramHash record, PR #194, #297, #374, #414. Reported Δbpb: not isolated
(PR #194 cites PR #212's ablation, unverified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, TypeAlias, cast

import torch
from torch import nn

from pgolf_core import Model, ModelSpec, Order, Plugin, Range, Tiny, hookimpl, role_of


@dataclass
class Config:
    min_dim: Annotated[int, Range(0)] = 64
    scale_proj: bool = True
    scale_zero_init_proj: bool = False
    overtone: bool = False  # PR #297: tied embedding singular values S_k = S_1 / sqrt(k)
    phase_resid_mix: bool = False  # PR #297: block i's resid_mix = (phi_i, 1 - phi_i), phi_i = sigmoid(3(i/(L-1) - .5))


def overtone_spectrum(w: torch.Tensor) -> torch.Tensor:
    """`w` with its singular values replaced by S_1 / sqrt(k), k = 1.. (same singular vectors)."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    target = s[0] * (1.0 / torch.arange(1, s.shape[0] + 1, dtype=s.dtype)) ** 0.5
    return cast(torch.Tensor, (u * target[None, :]) @ vh)


class OrthoInit(Plugin):
    """Orthogonal init for large matrices; 1/sqrt(2L) on output projections."""

    name = "ortho_init"
    version = "0.1.0"
    order = Order.INIT  # after every build hook, so that it sees every plugin's layers
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"min_dim": 8})

    @hookimpl
    def pgolf_model_built(self, model: Model, spec: ModelSpec) -> None:
        c = self.config
        gain = 1.0 / math.sqrt(2 * spec.num_layers)
        with torch.no_grad():
            if c.overtone and spec.tie_embeddings:  # the record reshapes only a tied table
                table = cast(nn.Embedding, model.tok_emb)  # (`Model` does not declare its modules)
                table.weight.data = overtone_spectrum(table.weight.data)
            for name, module in model.named_modules():
                if not isinstance(module, nn.Linear):
                    continue
                w = module.weight
                if role_of(module, "weight").zero_init and not c.scale_zero_init_proj:
                    nn.init.zeros_(w)
                    continue
                if w.ndim == 2 and min(w.shape) >= c.min_dim:
                    nn.init.orthogonal_(w, gain=1.0)
                    if c.scale_proj and (".proj." in name or name.endswith(".proj")):  # an output projection
                        w.mul_(gain)
            if c.phase_resid_mix:
                for i, block in enumerate(model.blocks):
                    # φ_i = σ(3·(i/(L−1) − 0.5)) (a 0-d fp32 tensor), the weight of the residual stream in block i
                    phase = torch.sigmoid(torch.tensor(3.0 * (i / max(spec.num_layers - 1, 1) - 0.5)))
                    mix = cast(torch.Tensor, block.resid_mix)  # (`blocks` holds untyped `Module`s)
                    mix.data[0] = phase * torch.ones(mix.shape[1])
                    mix.data[1] = (1 - phase) * torch.ones(mix.shape[1])
