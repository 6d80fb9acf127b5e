"""leaky_relu2 against PR #549's own `MLP` (tests/fixtures/later_model_golden.pt, made by
tools/make_later_model_goldens.py from the record script; inputs rebuilt here by `mlp_inputs`), and
the build contract of the MLP slot: same keys, same init, same linears as the default relu² MLP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from pgolf_plugins import leaky_relu2

from pgolf_core import ModelSpec, build_model, load_recipe, role_of
from pgolf_core.model import MLP
from pgolf_core.types import RecipeError
from tests.plugins import golden as golden_helpers

FIXTURE = Path(__file__).parents[1] / "fixtures" / "later_model_golden.pt"
MLP_CASES = {"d32_x3": (2, 8, 32, 3), "d48_x2": (3, 5, 48, 2)}  # (batch, seq, dim, mlp_mult)
MLP_SEED = 549
# fp32, |out| < ~2: pgolf's and the record's matmuls may sum in other orders (another BLAS, another CPU),
# a few ulps (1e-7) each. Observed |pgolf - record|: 0 (AVX512, AVX2 and default dispatch).
ATOL = 1e-5
TINY = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2"]


def mlp_inputs(batch: int, seq: int, dim: int, mult: int, seed: int) -> dict[str, torch.Tensor]:
    """Integer-draw input, weights and output cotangent (the same bits on every CPU; golden.py)."""
    hidden = dim * mult
    shapes = {"x": (batch, seq, dim), "up_w": (hidden, dim), "down_w": (dim, hidden), "g": (batch, seq, dim)}
    return golden_helpers.randomize({k: torch.zeros(s) for k, s in shapes.items()}, seed)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=True)["leaky_relu2"]


def plugin_mlp(dim: int, mult: int, slope: float = 0.5) -> torch.nn.Module:
    spec = ModelSpec(model_dim=dim, mlp_hidden=dim * mult)
    return leaky_relu2.LeakyReLU2(leaky_relu2.Config(negative_slope=slope)).pgolf_mlp(spec=spec, layer=0)


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_output_and_gradients_equal_the_record_mlp(golden, case):
    batch, seq, dim, mult = MLP_CASES[case]
    want = golden[case]
    assert want["shape"] == (batch, seq, dim, mult) and want["seed"] == MLP_SEED + list(MLP_CASES).index(case)
    t = mlp_inputs(batch, seq, dim, mult, want["seed"])
    assert {k: digest(v) for k, v in t.items()} == want["inputs"], "mlp_inputs no longer makes the fixture's inputs"
    mlp = plugin_mlp(dim, mult)
    with torch.no_grad():
        mlp.fc.weight.copy_(t["up_w"])
        mlp.proj.weight.copy_(t["down_w"])
    x = t["x"].clone().requires_grad_(True)
    out = mlp(x)
    (out * t["g"]).sum().backward()
    assert (out < 0).any() or (want["out"] < 0).any()  # not all-positive: the down projection mixes signs
    for key, got in (("out", out), ("grad_x", x.grad), ("grad_up_w", mlp.fc.weight.grad),
                     ("grad_down_w", mlp.proj.weight.grad)):  # fmt: skip
        err = (got - want[key]).abs().max().item()
        assert got.dtype == want[key].dtype and err <= ATOL, f"{case} {key}: |pgolf - record| = {err:.3g}"
    # the negative side matters: relu² (slope 0) gives another function on the same inputs
    relu2 = plugin_mlp(dim, mult, slope=0.0)
    relu2.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        assert (relu2(t["x"]) - want["out"]).abs().max().item() > 1e-2


def test_slope_zero_is_the_default_relu2_mlp():
    spec = ModelSpec(model_dim=32, mlp_hidden=96)
    torch.manual_seed(0)
    default = MLP(spec)
    torch.nn.init.normal_(default.proj.weight)
    ours = plugin_mlp(32, 3, slope=0.0)
    ours.load_state_dict(default.state_dict())
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), default(x))


def test_same_keys_init_and_linears_as_the_default_mlp():
    """Building with leaky_relu2 draws the same random numbers in the same order: the whole model's
    state dict is bit-identical to the default's, the projection is zero-init, and the layer-replacing
    QAT reaches the MLP's linears the same way."""
    for extra in ([], ["qat"]):
        base = build_model(load_recipe(None, TINY, enable=extra))
        ours = build_model(load_recipe(None, TINY, enable=[*extra, "leaky_relu2"]))
        sd_base, sd_ours = base.state_dict(), ours.state_dict()
        assert list(sd_ours) == list(sd_base)
        assert all(torch.equal(sd_ours[k], sd_base[k]) for k in sd_base)
        for b_base, b_ours in zip(base.blocks, ours.blocks, strict=True):
            assert isinstance(b_ours.mlp, leaky_relu2.LeakyReLU2MLP) and isinstance(b_base.mlp, MLP)
            assert type(b_ours.mlp.fc) is type(b_base.mlp.fc) and type(b_ours.mlp.proj) is type(b_base.mlp.proj)
            assert role_of(b_ours.mlp.proj, "weight") == role_of(b_base.mlp.proj, "weight")
            assert torch.count_nonzero(b_ours.mlp.proj.weight) == 0


@pytest.mark.parametrize("slope", ["1.0", "-0.1"])
def test_bad_slope_is_a_recipe_error(slope):
    expected = rf"\[plugins.leaky_relu2\] negative_slope={slope}: expected a value in \[0, 1\)"
    with pytest.raises(RecipeError, match=expected):
        load_recipe(None, [*TINY, f"plugins.leaky_relu2.negative_slope={slope}"], enable=["leaky_relu2"])
