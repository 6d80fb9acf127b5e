"""Shared helpers for the record-equivalence tests (golden fixtures in tests/fixtures/).

The fixtures are produced by `tools/make_goldens.py`, which runs each record's own `GPT` class (read
from a clone of openai/parameter-golf, FA3 replaced by PyTorch SDPA on CPU) with weights drawn by
`randomize` below; the record's code is not part of this repository. Each fixture carries a
`provenance` stamp (record, script sha256, torch version, CPU capability)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def randomize(state_dict: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights for every tensor (zero-init projections included), from
    integer draws and exact arithmetic only (powers of two, one rounded add), so the same bits on
    every CPU: torch.randn's bits depend on the vector path (ATEN_CPU_CAPABILITY)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        u = torch.randint(0, 4096, (4, *t.shape), generator=g, dtype=torch.int64).sum(0)
        r = (u.to(torch.float32) - 8190.0) * 2.0**-11  # Irwin-Hall(4): mean 0, sd ~1.15, |r| < 4
        if t.ndim >= 2 and "resid_mix" not in name and "skip_weights" not in name:
            r = r * 2.0 ** -round(math.log2(t.shape[-1]) / 2)  # ~ 1/sqrt(fan_in), exact
        else:
            r = 0.25 * r + (1.0 if name.endswith(("attn_scale", "mlp_scale", "q_gain", "skip_weights")) else 0.0)
        out[name] = r.to(t.dtype)
    return out


# fp32 forward of an 11-layer model, |logits| <= ~5: pgolf and the record compute the same function with
# other kernels and summation orders (and CPUs differ again), so each value carries a few dozen ulps of
# rounding (one ulp at 4 is 4.8e-7). The tolerances are ~2e-5 relative to the magnitude; observed errors
# per dispatch and the margins: `python tools/tolerance_margins.py` (table in CONTRIBUTING.md).
TOLERANCE = {"logits": 1e-4, "logsumexp": 1e-4, "row_losses": 1e-4, "loss": 1e-4}


def golden_errors(model: torch.nn.Module, golden: dict, seq_lens=(128, 2048)) -> dict[str, float]:
    """Max |pgolf - record| per compared quantity and sequence length (keys like "logits128")."""
    assert sorted(model.state_dict()) == golden["keys"]
    model.eval()
    errors: dict[str, float] = {}
    for T in seq_lens:
        x, y = golden[f"x{T}"].long(), golden[f"y{T}"].long()
        with torch.no_grad():
            logits = model.forward_logits(x)
            loss = model(x, y)
            rows = torch.stack([model(x[i : i + 1], y[i : i + 1]) for i in range(x.size(0))])
        if f"logits{T}" in golden:
            expected = golden[f"logits{T}"]
            got = logits if expected.shape == logits.shape else logits[:, ::32]
            errors[f"logits{T}"] = (got - expected).abs().max().item()
            errors[f"logsumexp{T}"] = (torch.logsumexp(logits, -1) - golden[f"logsumexp{T}"]).abs().max().item()
        else:  # the record exposes only its loss
            errors[f"row_losses{T}"] = (rows - golden[f"row_losses{T}"]).abs().max().item()
        errors[f"loss{T}"] = abs(loss.item() - golden[f"loss{T}"].item())
    return errors


def assert_matches_golden(model: torch.nn.Module, golden: dict, seq_lens=(128, 2048)) -> None:
    for key, err in golden_errors(model, golden, seq_lens).items():
        assert err <= TOLERANCE[key.rstrip("0123456789")], f"{key}: |pgolf - record| = {err:.3g}"
