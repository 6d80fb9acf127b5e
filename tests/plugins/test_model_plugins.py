"""Exact math of the model plugins on small shapes, each against its formula written out by hand
(the record goldens in test_record_models.py check them together; these check each alone), and the
settings each refuses when the recipe loads."""

from __future__ import annotations

import math

import pytest
import torch
from pgolf_plugins.partial_rope import Config as RopeConfig
from pgolf_plugins.partial_rope import PartialRope, PartialRotary
from pgolf_plugins.smeargate import PerDimSmear, ScalarSmear

from pgolf_core import build_model, load_recipe
from pgolf_core.types import RecipeError


def rotate_by_hand(x: torch.Tensor, dims: int, base: float) -> torch.Tensor:
    """Half-split rotary on the first `dims` of the last axis, position = index along axis -2."""
    out = x.clone()
    half = dims // 2
    for t in range(x.size(-2)):
        for i in range(half):
            theta = t * base ** (-2 * i / dims)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i] = a * math.cos(theta) + b * math.sin(theta)
            out[..., t, i + half] = -a * math.sin(theta) + b * math.cos(theta)
    return out


def test_partial_rope_rotates_the_first_dims_with_the_ntk_base():
    rope = PartialRotary(head_dim=8, dims=4, base=10000.0, ref_len=8)
    q, k = torch.randn(2, 3, 16, 8, dtype=torch.float64), torch.randn(2, 1, 16, 8, dtype=torch.float64)
    rq, rk = rope.double()(q, k)
    ntk_base = 10000.0 * (16 / 8) ** (4 / (4 - 2))  # base * (T/ref)^(d/(d-2))
    assert torch.allclose(rq, rotate_by_hand(q, 4, ntk_base), atol=1e-6)
    assert torch.allclose(rk, rotate_by_hand(k, 4, ntk_base), atol=1e-6)
    assert torch.equal(rq[..., 4:], q[..., 4:])  # the rest passes through
    short_q = q[:, :, :8]  # at or below the reference length: the plain base
    assert torch.allclose(rope(short_q, short_q)[0], rotate_by_hand(short_q, 4, 10000.0), atol=1e-6)


def test_pr414_effective_base_and_the_fix_option():
    spec = type("Spec", (), {"head_dim": 64, "rope_base": 10000.0, "train_seq_len": 2048})()
    record = PartialRope(RopeConfig()).pgolf_rotary(spec, 0)
    want = 1.0 / (10000.0 * 2 ** (16 / 14)) ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    assert abs(10000.0 * 2 ** (16 / 14) - 22081.8) < 0.1
    assert torch.allclose(record.frequencies(2048, torch.device("cpu")).double(), want, rtol=1e-6)
    fixed = PartialRope(RopeConfig(ntk_ref_len=0)).pgolf_rotary(spec, 0)  # ref = train_seq_len
    assert torch.equal(fixed.frequencies(2048, torch.device("cpu")), fixed.inv_freq) and fixed.table_len == 0


def test_partial_rope_table_equals_the_in_graph_tables_and_rounds_like_the_record():
    """At the training length the cos/sin come from build-time buffers: bit-equal to computing them
    in forward (fp32), and after a bf16 cast equal to the record's fp32 cache cast `.to(bf16)`."""
    with_table = PartialRotary(head_dim=64, dims=16, base=10000.0, ref_len=1024, table_len=2048)
    without = PartialRotary(head_dim=64, dims=16, base=10000.0, ref_len=1024)
    assert with_table.table_len == 2048 and without.table_len == 0
    q, k = torch.randn(1, 2, 2048, 64), torch.randn(1, 1, 2048, 64)
    for a, b in zip(with_table(q, k), without(q, k), strict=True):
        assert torch.equal(a, b)
    cos, sin = without.tables(2048, torch.device("cpu"))
    with_table.bfloat16()
    assert torch.equal(with_table.cos_table, cos.to(torch.bfloat16))
    assert torch.equal(with_table.sin_table, sin.to(torch.bfloat16))


def test_smeargate_variants_by_hand():
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    prev = torch.cat([torch.zeros(2, 1, 4, dtype=torch.float64), x[:, :-1]], dim=1)
    per_dim = PerDimSmear(4, "post_norm", gate_init=0.0).double()
    with torch.no_grad():
        per_dim.gate.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    g = torch.sigmoid(per_dim.gate)
    assert torch.allclose(per_dim(x, None), (1 - g) * x + g * prev)
    scalar = ScalarSmear(4, "post_norm").double()
    assert torch.equal(scalar(x, None), x)  # zero-init: identity
    with torch.no_grad():
        scalar.gate.weight.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.4]]))
        scalar.lam.fill_(0.7)
    gate = torch.sigmoid(x @ scalar.gate.weight.T)
    assert torch.allclose(scalar(x, None), x + 0.7 * gate * prev)


def test_ln_scale_sets_one_over_sqrt_layer():
    recipe = load_recipe(
        None, ["model.num_layers=4", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2"]
    )
    recipe_ln = load_recipe(
        None,
        ["model.num_layers=4", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2"],
        enable=["ln_scale"],
    )
    assert [b.norm_scale for b in build_model(recipe).blocks] == [1.0] * 4
    assert [b.norm_scale for b in build_model(recipe_ln).blocks] == [1 / math.sqrt(i + 1) for i in range(4)]


def orthogonal_rows_times(w: torch.Tensor, gain: float) -> bool:
    """`w` (out >= in or out <= in) is semi-orthogonal times `gain`: W Wᵀ or Wᵀ W = gain² I."""
    w = w.double()
    gram = w @ w.T if w.size(0) <= w.size(1) else w.T @ w
    return torch.allclose(gram, gain**2 * torch.eye(gram.size(0), dtype=torch.float64), atol=1e-5)


def test_ortho_init_record_rule_and_the_fix():
    """Record rule: zero-init projections stay zero, so 1/sqrt(2L) reaches only bigram/VE projections;
    `scale_zero_init_proj = true` makes attn.proj/mlp.proj orthogonal x 1/sqrt(2L) (the READMEs' intent)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "pr414.toml"
    gain = 1 / math.sqrt(2 * 11)
    record = build_model(load_recipe(path))
    fixed = build_model(load_recipe(path, ["plugins.ortho_init.scale_zero_init_proj=true"]))
    weights, weights_fixed = record.state_dict(), fixed.state_dict()  # the records' names (ve_shared.*)
    for name in ("blocks.3.attn.proj.weight", "blocks.3.mlp.proj.weight"):
        assert torch.count_nonzero(weights[name]) == 0
        assert orthogonal_rows_times(weights_fixed[name], gain)
    for name in ("bigram.proj.weight", "ve_shared.proj.weight"):
        assert orthogonal_rows_times(weights[name], gain)
    for name in ("blocks.3.attn.c_q.weight", "blocks.3.mlp.fc.weight"):
        assert orthogonal_rows_times(weights[name], 1.0)


def test_ortho_init_overtone_and_phase_resid_mix_are_off_by_default():
    """PR #297's settings: off (the other recipes' init unchanged: resid_mix (1, 0), a normal table's
    spectrum); on: S_k/S_1 = 1/sqrt(k) for the tied table, resid_mix of block i = (phi_i, 1 - phi_i)."""
    from pathlib import Path

    from pgolf_plugins.ortho_init import Config

    assert not Config().overtone and not Config().phase_resid_mix
    path = Path(__file__).resolve().parents[2] / "recipes" / "pr297.toml"
    small = ["model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2", "model.num_layers=5",
             "plugins.ortho_init.overtone=false", "plugins.ortho_init.phase_resid_mix=false"]  # fmt: skip
    plain = build_model(load_recipe(path, small))
    on = build_model(load_recipe(path, [*small[:-2], "plugins.ortho_init.overtone=true",
                                        "plugins.ortho_init.phase_resid_mix=true"]))  # fmt: skip
    k = torch.arange(1, 65, dtype=torch.float64)
    for model, overtone in ((plain, False), (on, True)):
        s = torch.linalg.svdvals(model.tok_emb.weight.detach().double())
        assert ((s / s[0] - k**-0.5).abs().max().item() <= 1e-5) == overtone
    for i, (a, b) in enumerate(zip(plain.blocks, on.blocks, strict=True)):
        assert torch.equal(a.resid_mix[0], torch.ones(64)) and torch.equal(a.resid_mix[1], torch.zeros(64))
        phi = 1 / (1 + math.exp(-3 * (i / 4 - 0.5)))
        assert torch.allclose(b.resid_mix.detach(), torch.tensor([phi, 1 - phi])[:, None].expand(2, 64), atol=1e-7)


# Each refused setting, with the message the user reads: the file, the table, the key and value, what was expected.
# The model is the contract's tiny one (4 layers, head_dim 8).
TINY_MODEL = ["model.num_layers=4", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2"]
REFUSED = [
    ("bigram_hash", "buckets=1", "buckets=1: expected >= 2"),
    ("bigram_hash", "dim=0", "dim=0: expected >= 1"),
    ("smeargate", 'variant="gate"', "variant: expected one of 'per_dim', 'scalar', got 'gate'"),
    ("smeargate", 'placement="post"', "placement: expected one of 'post_norm', 'pre_norm', got 'post'"),
    ("smeargate", "own_adam_lr=-0.1", "own_adam_lr=-0.1: expected >= 0"),
    ("smeargate", "own_adam_beta2=1.0", "own_adam_beta2=1.0: expected a value in [0, 1)"),
    ("smeargate", 'state_key=""', "state_key='': expected a state-dict name such as 'smear.gate'"),
    ("partial_rope", "dims=2", "dims=2: expected >= 4"),
    ("partial_rope", "dims=5", "dims=5: expected an even number >= 4 <= head_dim 8 (model_dim / num_heads)"),
    ("partial_rope", "dims=10", "dims=10: expected an even number >= 4 <= head_dim 8 (model_dim / num_heads)"),
    ("partial_rope", "ntk_ref_len=-1", "ntk_ref_len=-1: expected >= 0"),
    ("xsa", "last_n=-1", "last_n=-1: expected >= 0"),
    ("xsa", "last_n=5", "last_n=5: expected 0..4 (model.num_layers)"),
    ("value_embed", "dim=0", "dim=0: expected >= 1"),
    ("value_embed", "init_std=-0.01", "init_std=-0.01: expected >= 0"),
    ("value_embed", "layers=[-1, 3]", "layers=-1: expected >= 0"),
    ("value_embed", "layers=[2, 2]", "layers=[2, 2]: expected each layer at most once"),
    ("value_embed", "layers=[3, 4]", "layers=[3, 4]: expected layers in 0..3 (model.num_layers=4), got [4]"),
    ("parallel_residuals", "start_layer=-1", "start_layer=-1: expected >= 0"),
    ("parallel_residuals", "start_layer=4", "start_layer=4: expected 0..3 (a block index)"),
    ("depth_recurrence", "loop_start=-1", "loop_start=-1: expected >= 0"),
    ("depth_recurrence", "loop_start=3", "loop_start=3 loop_end=5: expected 0 <= loop_start <= loop_end <= 3"),
    ("depth_recurrence", "loop_end=0", "loop_start=3 loop_end=0: expected 0 <= loop_start <= loop_end <= 3"),
    ("depth_recurrence", "num_loops=0", "num_loops=0: expected >= 1"),
    ("depth_recurrence", "start_frac=1.5", "start_frac=1.5: expected a value in [0, 1]"),
    ("ortho_init", "min_dim=-1", "min_dim=-1: expected >= 0"),
]


@pytest.mark.parametrize(("name", "setting", "expected"), REFUSED, ids=[f"{n}-{s}" for n, s, _ in REFUSED])
def test_bad_settings_are_recipe_errors_naming_the_key(name, setting, expected):
    with pytest.raises(RecipeError) as refused:
        load_recipe(None, [*TINY_MODEL, f"plugins.{name}.{setting}"], enable=[name])
    assert str(refused.value).startswith(f"<defaults>: [plugins.{name}] {expected}")
