"""Shared helpers for the record-equivalence tests (golden fixtures in tests/fixtures/).

The fixtures were produced by running each record's own `GPT` class (read from a clone of
openai/parameter-golf, FA3 replaced by PyTorch SDPA on CPU) with weights drawn by `randomize`
below; the record's code is not part of this repository."""

from __future__ import annotations

import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def randomize(state_dict: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights for every tensor (zero-init projections included)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        r = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if t.ndim >= 2 and "resid_mix" not in name and "skip_weights" not in name:
            r = r / math.sqrt(t.shape[-1])
        else:
            r = 0.3 * r + (1.0 if name.endswith(("attn_scale", "mlp_scale", "q_gain", "skip_weights")) else 0.0)
        out[name] = r.to(t.dtype)
    return out


def assert_matches_golden(model: torch.nn.Module, golden: dict, seq_lens=(128, 2048)) -> None:
    assert sorted(model.state_dict()) == golden["keys"]
    model.eval()
    for T in seq_lens:
        x, y = golden[f"x{T}"].long(), golden[f"y{T}"].long()
        with torch.no_grad():
            logits = model.forward_logits(x)
            loss = model(x, y)
            rows = torch.stack([model(x[i : i + 1], y[i : i + 1]) for i in range(x.size(0))])
        if f"logits{T}" in golden:
            expected = golden[f"logits{T}"]
            got = logits if expected.shape == logits.shape else logits[:, ::32]
            assert (got - expected).abs().max().item() <= 1e-5, f"T={T}"
            assert (torch.logsumexp(logits, -1) - golden[f"logsumexp{T}"]).abs().max().item() <= 1e-5
        else:  # the record exposes only its loss
            assert (rows - golden[f"row_losses{T}"]).abs().max().item() <= 1e-5
        assert abs(loss.item() - golden[f"loss{T}"].item()) <= 1e-5
