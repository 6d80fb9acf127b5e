"""attn_gate: a per-head gate on the attention output, driven by the block's normed input.

What: for each token t and query head h, `y[t, h, :] *= g[t, h]` after attention (after XSA when
that is on) and before the heads merge into the output projection, with `g = act(scale · W · s_t)`:
- `variant = "out_gate"` (PR #1667, AttnOutGate): `s_t = x_t[:width]` (the first `width` channels
  of the normed block input), `act = 2·sigmoid`, W [heads, width] zero-init, so g = 1 at init.
- `variant = "dense"` (PR #1736, Gated Attention, headwise G1 of arXiv:2505.06708): `s_t = x_t`
  (all d channels), `act = sigmoid`, W [heads, d] ~ N(0, init_std²), so g ≈ 0.5 at init.
- `variant = "sparse"` (PR #1787): `s_t = x_t[:width]`, `act = sigmoid`, `scale` a constant,
  W [heads, width] zero-init (or N(0, init_std²)), so g = 0.5 at init.
Why: lets each head switch itself off (or, with 2·sigmoid, up to ×2) per token for the price of
heads·width weights per layer (96 with 8 heads, width 12). Reported Δbpb: not isolated in any of
the three records; see the package's docs page.
Roles: W is a control tensor (scalar Adam group, fp32 master weight, cast to the activation dtype
in forward), as the records' CONTROL_TENSOR_NAME_PATTERNS place `attn_gate_proj` / `attn_gate_w`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

import torch
import torch.nn.functional as F
from pgolf_core import ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, declare_role, hookimpl
from torch import Tensor, nn

__version__ = "0.1.0"


@dataclass
class Config:
    variant: Literal["out_gate", "dense", "sparse"] = "out_gate"  # PR #1667 | PR #1736 | PR #1787
    width: int = 12  # gate input channels x[..., :width] (out_gate, sparse: 1..model_dim; dense reads all d)
    init_std: Annotated[float, Range(0)] = 0.0  # 0: zero init; > 0: W ~ N(0, init_std²) (PR #1736 ran 0.005)
    scale: float = 1.0  # sparse only: g = sigmoid(scale · W x[:width]) (PR #1787 ran 1.0)


class AttentionOutputGate(nn.Module):
    """`forward(y, v, x) -> y * g[..., None]`, g [B, T, H] from x; `v` is not read."""

    def __init__(self, num_heads: int, model_dim: int, config: Config) -> None:
        super().__init__()
        self.variant = config.variant
        self.width = model_dim if config.variant == "dense" else config.width
        self.scale = float(config.scale) if config.variant == "sparse" else 1.0
        self.weight = nn.Parameter(torch.empty(num_heads, self.width, dtype=torch.float32))
        if config.init_std > 0:
            nn.init.normal_(self.weight, mean=0.0, std=config.init_std)
        else:
            nn.init.zeros_(self.weight)
        declare_role(self, "weight", control=True)

    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        # `.contiguous()` on the slice, as the records do (the gate's matmul then reads a dense input).
        src = x.contiguous() if self.variant == "dense" else x[..., : self.width].contiguous()
        z = F.linear(src, self.weight.to(x.dtype))
        if self.variant == "out_gate":
            g = 2.0 * torch.sigmoid(z)
        elif self.variant == "sparse":
            g = torch.sigmoid(self.scale * z)
        else:
            g = torch.sigmoid(z)
        return y * g[..., None]


class AttnGate(Plugin):
    """Per-head attention output gate from the block input (PR #1667; dense #1736, sparse #1787)."""

    name = "attn_gate"
    version = __version__
    order = Order.MODEL + 10  # 60, after xsa (Order.MODEL): the records gate XSA's output
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    # The plugin contract's tiny run: the default variant (out_gate, width 12) acts within its 6 steps.
    TINY = Tiny()

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """At recipe load, what the field types cannot say (the core refuses non-finite numbers itself):
        a width the model's d can feed, unless the variant is dense (which reads all d channels)."""
        top = recipe.model.model_dim
        if config.variant != "dense" and not 1 <= config.width <= top:
            raise PgolfError(f"width={config.width}: expected 1..{top} (model.model_dim)")

    @hookimpl
    def pgolf_attention_post(self, spec: ModelSpec, layer: int) -> nn.Module | None:
        return AttentionOutputGate(spec.num_heads, spec.model_dim, self.config)
