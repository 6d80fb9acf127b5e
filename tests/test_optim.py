"""The optimizers and schedules (pgolf_core/optim.py) against the records' formulas, written out here
independently and evaluated on small shapes: Newton–Schulz, Muon (Nesterov momentum, decoupled weight
decay, bf16 updates, rank sharding and its all-reduce), the parameter groups with their learning
rates, `lr_scale` and the Muon momentum warm-up.

Inputs are integer draws scaled by a power of two, so they are the same bits on every CPU.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pgolf_core import optim
from pgolf_core.optim import Muon, build_optimizers, lr_scale, muon_momentum, newton_schulz5
from pgolf_core.registry import create_manager, load_recipe
from pgolf_core.run import build_model_with, model_spec
from pgolf_core.types import PgolfError, TrainConfig, collect_roles, declare_role
from tests.record_rules import control_patterns

ROOT = Path(__file__).resolve().parents[1]

# The records' quintic Newton–Schulz coefficients and normalization epsilon (Keller Jordan's Muon).
A, B, C = 3.4445, -4.7750, 2.0315
EPS = 1e-7


def draw(shape: tuple[int, ...], seed: int) -> Tensor:
    """Portable float64 'random' values in [-2, 2] (integer draws are the same bits on every CPU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-64, 65, shape, generator=g).double() / 32


def ns_reference(g: Tensor, steps: int = 5) -> Tensor:
    """X = G / (|G|_F + eps), on the wide orientation; X <- aX + b(XX^T)X + c(XX^T)^2 X; float64."""
    x = g.double() / (g.double().norm() + EPS)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        gx = gram @ x
        x = A * x + B * gx + C * (gram @ gx)
    return x.T if tall else x


class MatmulLog(TorchFunctionMode):
    """Records (left operand shape, dtype) of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm):
            self.calls.append((tuple(args[0].shape), args[0].dtype))
        return func(*args, **(kwargs or {}))


# --- Newton–Schulz -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (5, 5), (12, 3)])
def test_newton_schulz_is_the_records_quintic_iteration(shape):
    g = draw(shape, seed=sum(shape))
    got = newton_schulz5(g, dtype=torch.float64)
    assert got.shape == shape and got.dtype == torch.float64
    # Same function, other association order: float64 rounding only (observed 2.3e-15 on every dispatch).
    assert torch.allclose(got, ns_reference(g), rtol=0, atol=1e-12)
    # ... and it does orthogonalize (the reference is not a typo): singular values near 1.
    s = torch.linalg.svdvals(got)
    assert s.min() > 0.5 and s.max() < 1.5  # observed [0.682, 1.134]


def test_newton_schulz_steps_count():
    g = draw((4, 6), seed=3)
    for steps in (1, 3):
        assert torch.allclose(newton_schulz5(g, steps, dtype=torch.float64), ns_reference(g, steps), atol=1e-12)
    assert not torch.allclose(newton_schulz5(g, 3, dtype=torch.float64), ns_reference(g, 5), atol=1e-3)


def test_newton_schulz_works_on_the_wide_side_in_the_given_dtype():
    """A tall matrix is transposed first, so every product has min(rows, cols) rows (the records' cost
    and bits); the iteration runs in bf16 by default (as the records), in float32 when asked."""
    g = draw((12, 3), seed=1).float()
    with MatmulLog() as log:
        out = newton_schulz5(g)
    assert out.shape == (12, 3) and out.dtype == torch.bfloat16
    assert len(log.calls) == 15  # 3 products x 5 steps
    assert {rows for (rows, _), _ in log.calls} == {3} and {dt for _, dt in log.calls} == {torch.bfloat16}
    with MatmulLog() as log32:
        out32 = newton_schulz5(g, dtype=torch.float32)
    assert out32.dtype == torch.float32 and {dt for _, dt in log32.calls} == {torch.float32}
    assert torch.allclose(out32.double(), ns_reference(g), atol=1e-5)  # observed 5.9e-7
    wide = newton_schulz5(g.T.contiguous(), dtype=torch.float32)
    assert torch.allclose(wide, out32.T, rtol=0, atol=1e-5)  # the transposed wide case (3.0e-7)


def test_newton_schulz_of_a_zero_gradient_is_zero():
    """The epsilon in the normalization keeps a zero gradient finite (no 0/0)."""
    assert torch.equal(newton_schulz5(torch.zeros(3, 5)), torch.zeros(3, 5, dtype=torch.bfloat16))


# --- Muon ----------------------------------------------------------------------------------------

SHAPES = [(4, 6), (6, 4), (5, 5), (3, 8), (8, 2)]


def muon_reference(weights, grads_per_step, lrs, momenta, wd):
    """W <- W (1 - lr wd) - lr bf16(NS(g + mu B) sqrt(max(1, rows/cols))), B <- mu B + g (from 0)."""
    w = [x.clone() for x in weights]
    buf = [torch.zeros_like(x) for x in weights]
    for grads, lr, mu in zip(grads_per_step, lrs, momenta, strict=True):
        for i, g in enumerate(grads):
            buf[i] = mu * buf[i] + g
            u = ns_reference(g + mu * buf[i]) * math.sqrt(max(1.0, g.shape[0] / g.shape[1]))
            w[i] = w[i] * (1 - lr * wd) - lr * u.to(torch.bfloat16).double()
    return w


def run_muon(weights, grads_per_step, lrs, momenta, wd):
    params = [nn.Parameter(x.clone()) for x in weights]
    opt = Muon(params, lr=lrs[0], momentum=momenta[0], weight_decay=wd, orthogonalize=ns_reference)
    for grads, lr, mu in zip(grads_per_step, lrs, momenta, strict=True):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        for group in opt.param_groups:  # as Optimizers.set_lr_scale / set_muon_momentum do
            group["lr"], group["momentum"] = lr, mu
        opt.step()
    return [p.detach() for p in params], opt


def test_muon_three_steps_match_the_formula():
    """Nesterov momentum, the shape scale, bf16-rounded updates and weight decay with the *current*
    (scheduled) learning rate, over three steps whose lr and momentum change."""
    weights = [draw(s, seed=10 + i) for i, s in enumerate(SHAPES)]
    grads = [[draw(s, seed=100 * k + i) for i, s in enumerate(SHAPES)] for k in range(1, 4)]
    lrs, momenta, wd = [0.25, 0.125, 0.0625], [0.85, 0.9, 0.95], 0.5
    got, opt = run_muon(weights, grads, lrs, momenta, wd)
    expected = muon_reference(weights, grads, lrs, momenta, wd)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=0, atol=1e-12)  # observed: equal or 1 float64 ulp
    # The momentum buffer is the plain sum mu*B + g (not the Nesterov vector).
    buf = torch.zeros_like(grads[0][0])
    for k in range(3):
        buf = momenta[k] * buf + grads[k][0]
    assert torch.allclose(opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"], buf, atol=1e-15)


def test_muon_update_is_rounded_to_bf16_before_it_is_applied():
    """The records put every update in one bf16 buffer: with float64 weights and lr = 2^-2, the applied
    step divided by lr is exactly a bf16 number, and it differs from the unrounded update."""
    weights = [draw(s, seed=20 + i) for i, s in enumerate(SHAPES)]
    grads = [[draw(s, seed=200 + i) for i, s in enumerate(SHAPES)]]
    got, _ = run_muon(weights, grads, [0.25], [0.9], 0.0)
    for w0, w1, g in zip(weights, got, grads[0], strict=True):
        step = (w0 - w1) / 0.25
        assert torch.equal(step, step.to(torch.bfloat16).double())
        unrounded = ns_reference(g + 0.9 * g) * math.sqrt(max(1.0, g.shape[0] / g.shape[1]))
        assert (step - unrounded).abs().max() > 1e-4  # observed >= 1.6e-3


class FakeDist:
    """Stands in for torch.distributed inside optim: `world` ranks, this one `rank`; all_reduce calls
    `reduce(tensor)` after checking the op is SUM."""

    ReduceOp = dist.ReduceOp

    def __init__(self, world: int, rank: int, reduce) -> None:
        self.world, self.rank, self.reduce = world, rank, reduce

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world

    def get_rank(self) -> int:
        return self.rank

    def all_reduce(self, tensor: Tensor, op) -> None:
        assert op == dist.ReduceOp.SUM
        self.reduce(tensor)


def test_muon_shards_parameters_over_ranks_and_sums_the_updates(monkeypatch):
    """Rank r orthogonalizes parameters i with i % world == r into its share of one flat bf16 buffer
    (zeros elsewhere); the SUM all-reduce gives every rank the single-process update, bit for bit."""
    weights = [draw(s, seed=30 + i) for i, s in enumerate(SHAPES)]
    grads = [[draw(s, seed=300 + i) for i, s in enumerate(SHAPES)]]
    single, _ = run_muon(weights, grads, [0.25], [0.9], 0.1)
    world, shares = 2, {}
    for rank in range(world):
        monkeypatch.setattr(optim, "dist", FakeDist(world, rank, lambda t, r=rank: shares.__setitem__(r, t.clone())))
        _, opt = run_muon(weights, grads, [0.25], [0.9], 0.1)
        owned = [i for i, p in enumerate(opt.param_groups[0]["params"]) if p in opt.state]
        assert owned == [i for i in range(len(SHAPES)) if i % world == rank]
    sizes = [math.prod(s) for s in SHAPES]
    offsets = [sum(sizes[:i]) for i in range(len(SHAPES))]
    for rank, flat in shares.items():
        assert flat.dtype == torch.bfloat16 and flat.numel() == sum(sizes)
        for i, (off, n) in enumerate(zip(offsets, sizes, strict=True)):
            nonzero = bool(flat[off : off + n].count_nonzero())
            assert nonzero == (i % world == rank), (rank, i)
    total = shares[0] + shares[1]
    for rank in range(world):
        monkeypatch.setattr(optim, "dist", FakeDist(world, rank, lambda t: t.copy_(total)))
        after, _ = run_muon(weights, grads, [0.25], [0.9], 0.1)
        for a, s in zip(after, single, strict=True):
            assert torch.equal(a, s)


# --- Parameter groups and learning rates ---------------------------------------------------------


def tiny(*sets: str, recipe: Path | None = None, smoke: bool = False):
    base = ["model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2", "model.num_layers=4"]
    r = load_recipe(recipe, [*(base if recipe is None else []), *sets], smoke=smoke)
    pm = create_manager(r)
    model = build_model_with(model_spec(r), pm, r.run.seed)
    return r, model, collect_roles(model), control_patterns(r)


def members(opt: torch.optim.Optimizer, model: nn.Module) -> set[str]:
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    return {n for n, p in model.state_dict(keep_vars=True).items() if id(p) in ids}  # state-dict (records') keys


def expected_groups(model: nn.Module, patterns: list[str]) -> dict[str, set[str]]:
    """The baseline's rules: tok_emb -> token; lm_head -> head; block matrices matching no
    control pattern -> Muon; everything else (1-D, control-named, skip_weights) -> scalar Adam."""
    groups: dict[str, set[str]] = {"token": set(), "head": set(), "matrix": set(), "scalar": set()}
    for n, p in model.named_parameters():
        if n == "tok_emb.weight":
            groups["token"].add(n)
        elif n.startswith("lm_head."):
            groups["head"].add(n)
        elif n.startswith("blocks.") and p.ndim == 2 and not any(c in n for c in patterns):
            groups["matrix"].add(n)
        else:
            groups["scalar"].add(n)
    return groups


def test_baseline_groups_and_learning_rates():
    recipe, model, roles, patterns = tiny()
    cfg = recipe.train
    opts = build_optimizers(model, cfg, roles, "cpu")
    token, muon, scalar = opts.all
    want = expected_groups(model, patterns)
    assert members(token, model) == want["token"] == {"tok_emb.weight"}
    assert members(muon, model) == want["matrix"] and len(want["matrix"]) == 4 * 6  # q k v proj fc proj
    assert members(scalar, model) == want["scalar"]
    assert {"skip_weights", "blocks.0.resid_mix"} <= want["scalar"]  # 2-D, but control tensors
    assert model.get_parameter("blocks.0.resid_mix").ndim == 2
    assert opts.muon is muon and isinstance(muon, Muon)
    assert type(token) is torch.optim.Adam and type(scalar) is torch.optim.Adam
    assert [(o.param_groups[0]["lr"], o.param_groups[0]["base_lr"]) for o in opts.all] == [
        (0.05, 0.05),  # tied_embed_lr
        (0.04, 0.04),  # matrix_lr
        (0.04, 0.04),  # scalar_lr
    ]
    assert muon.param_groups[0]["momentum"] == 0.95 and muon.param_groups[0]["weight_decay"] == 0.0
    assert muon.param_groups[0]["backend_steps"] == 5
    assert muon.orthogonalize.func is newton_schulz5 and muon.orthogonalize.keywords == {"dtype": torch.bfloat16}
    for adam in (token, scalar):
        g = adam.param_groups[0]
        assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 and g["weight_decay"] == 0.0


def test_untied_head_and_adamw_and_muon_settings():
    sets = [
        "model.tie_embeddings=false",
        "train.embed_lr=0.6",
        "train.head_lr=0.008",
        "train.adam_weight_decay=0.04",
        "train.muon_weight_decay=0.038",
        "train.muon_backend_steps=3",
        "train.muon_ns_dtype=float32",
        "train.beta2=0.99",
    ]
    recipe, model, roles, patterns = tiny(*sets)
    opts = build_optimizers(model, recipe.train, roles, "cpu")
    token, head, muon, scalar = opts.all  # the records' order: token, head, matrix, scalar
    assert members(token, model) == {"tok_emb.weight"} and members(head, model) == {"lm_head.weight"}
    assert token.param_groups[0]["lr"] == 0.6 and head.param_groups[0]["lr"] == 0.008  # embed_lr, head_lr
    for adam in (token, head, scalar):
        assert type(adam) is torch.optim.AdamW
        assert adam.param_groups[0]["weight_decay"] == 0.04 and adam.param_groups[0]["betas"] == (0.9, 0.99)
    g = muon.param_groups[0]
    assert (g["weight_decay"], g["backend_steps"]) == (0.038, 3)
    assert muon.orthogonalize.keywords == {"dtype": torch.float32}


class Toy(nn.Module):
    """A model with plugin-style parameters outside the core's naming rules."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(8, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4, bias=False)])
        self.extra_proj = nn.Parameter(torch.zeros(4, 4))
        self.extra_table = nn.Parameter(torch.zeros(6, 4))
        self.gate_a = nn.Parameter(torch.zeros(4))
        self.gate_b = nn.Parameter(torch.zeros(4))
        self.gate_c = nn.Parameter(torch.zeros(4))


def test_plugin_tags_place_parameters_and_own_adams_group_by_settings():
    model = Toy()
    declare_role(model, "extra_proj", group="matrix")
    declare_role(model, "extra_table", group="token")
    for p in ("gate_a", "gate_b"):
        declare_role(model, p, group="scalar", adam={"lr": 0.02, "betas_2": 0.99, "weight_decay": 0.0})
    declare_role(model, "gate_c", adam={"lr": 0.5})
    cfg = TrainConfig()
    opts = build_optimizers(model, cfg, collect_roles(model), "cpu")
    token, muon, own_ab, own_c = opts.all  # no head, no scalar members: those groups are skipped
    assert members(token, model) == {"tok_emb.weight", "extra_table"}
    assert members(muon, model) == {"blocks.0.weight", "extra_proj"}
    assert members(own_ab, model) == {"gate_a", "gate_b"} and members(own_c, model) == {"gate_c"}
    a, c = own_ab.param_groups[0], own_c.param_groups[0]
    assert type(own_ab) is torch.optim.Adam and (a["lr"], a["base_lr"], a["betas"]) == (0.02, 0.02, (0.9, 0.99))
    assert (c["lr"], c["betas"], c["weight_decay"], c["eps"]) == (0.5, (0.9, 0.95), 0.0, 1e-8)  # defaults
    # The schedule scales every optimizer, own Adams included; momentum is Muon's only.
    opts.set_lr_scale(0.5)
    assert [o.param_groups[0]["lr"] for o in opts.all] == [0.025, 0.02, 0.01, 0.25]
    opts.set_muon_momentum(0.9)
    assert muon.param_groups[0]["momentum"] == 0.9 and "momentum" not in token.param_groups[0]


def test_untagged_or_unknown_groups_are_errors():
    with pytest.raises(PgolfError, match=r"'extra_proj' has no optimizer group.*declare_role"):
        build_optimizers(Toy(), TrainConfig(), {}, "cpu")
    with pytest.raises(PgolfError, match=r"declare_role\('gate_c'\): group 'muon' is not one of"):
        declare_role(Toy(), "gate_c", group="muon")


def test_shipped_plugins_place_their_parameters_as_the_records():
    """PR #414: bigram and value-embedding tables with the token Adam, their projections with Muon,
    their scales (and the smear gate) with the scalar Adam; PR #194: the SmearGate vector in an Adam of
    its own (lr 0.02, beta2 0.99)."""
    recipe, model, roles, patterns = tiny(
        "plugins.bigram_hash.dim=64", recipe=ROOT / "recipes" / "pr414.toml", smoke=True
    )
    token, muon, scalar = build_optimizers(model, recipe.train, roles, "cpu").all
    assert members(token, model) == {"tok_emb.weight", "bigram.embed.weight", "ve_shared.embed.weight"}
    assert {"bigram.proj.weight", "ve_shared.proj.weight"} <= members(muon, model)
    assert {"bigram.scale", "ve_shared.scale", "ve_layer_scales.0", "smear.gate"} <= members(scalar, model)
    assert type(token) is torch.optim.AdamW and token.param_groups[0]["lr"] == recipe.train.tied_embed_lr

    recipe, model, roles, patterns = tiny(recipe=ROOT / "recipes" / "pr194.toml", smoke=True)
    opts = build_optimizers(model, recipe.train, roles, "cpu").all
    own = opts[-1]
    assert members(own, model) == {"smear_gate_param"} and len(opts) == 4
    assert (own.param_groups[0]["lr"], own.param_groups[0]["betas"]) == (0.02, (0.9, 0.99))


# --- Schedules -----------------------------------------------------------------------------------


def reference_lr_scale(step: int, elapsed_ms: float, iterations: int, warmdown: int, cap_s: float) -> float:
    """The records' warmdown: by steps without a cap, else from the average step time so far."""
    if warmdown <= 0:
        return 1.0
    if cap_s <= 0:
        first = max(iterations - warmdown, 0)
        return (iterations - step) / warmdown if first <= step < iterations else 1.0
    warmdown_ms = warmdown * (elapsed_ms / max(step, 1))
    remaining_ms = max(1000 * cap_s - elapsed_ms, 0.0)
    return remaining_ms / warmdown_ms if remaining_ms <= warmdown_ms else 1.0


def test_lr_scale_by_steps_without_a_cap():
    cfg = TrainConfig(iterations=10, warmdown_iters=4, max_wallclock_seconds=0)
    got = [lr_scale(step, 1e9, cfg) for step in range(12)]  # elapsed time plays no part
    assert got == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25, 1, 1]
    long = TrainConfig(iterations=4, warmdown_iters=8, max_wallclock_seconds=0)  # warmdown > iterations
    assert [lr_scale(s, 0.0, long) for s in range(4)] == [0.5, 0.375, 0.25, 0.125]
    assert lr_scale(7, 0.0, TrainConfig(iterations=10, warmdown_iters=0, max_wallclock_seconds=0)) == 1.0


@pytest.mark.parametrize(
    "step, elapsed_ms, expected",
    [
        (0, 0.0, 1.0),  # nothing measured yet
        (100, 50_000.0, 1.0),  # 500 ms/step: warmdown = last 4 x 500 ms, 550 s remain
        (1000, 598_000.0, 2_000 / (4 * 598.0)),  # 598 ms/step, 2 s left
        (1190, 599_000.0, 1_000 / (4 * 599_000 / 1190)),
        (1200, 600_000.0, 0.0),  # at the cap
        (1201, 700_000.0, 0.0),  # past it: never negative
    ],
)
def test_lr_scale_by_elapsed_time_with_a_cap(step, elapsed_ms, expected):
    cfg = TrainConfig(iterations=20_000, warmdown_iters=4, max_wallclock_seconds=600.0)
    assert lr_scale(step, elapsed_ms, cfg) == pytest.approx(expected, rel=1e-12)
    assert reference_lr_scale(step, elapsed_ms, 20_000, 4, 600.0) == pytest.approx(expected, rel=1e-12)


def test_lr_scale_matches_the_formula_on_a_grid():
    for iterations, warmdown, cap in [(50, 10, 0.0), (50, 60, 0.0), (50, 0, 5.0), (10_000, 20, 5.0)]:
        cfg = TrainConfig(iterations=iterations, warmdown_iters=warmdown, max_wallclock_seconds=cap)
        for step in range(0, 60, 3):
            for elapsed in (0.0, 37.5 * step, 90.0 * step, 4_999.0, 6_000.0):
                want = reference_lr_scale(step, elapsed, iterations, warmdown, cap)
                assert lr_scale(step, elapsed, cfg) == pytest.approx(want, rel=1e-12, abs=0), (cfg, step, elapsed)


def test_muon_momentum_warms_up_linearly_then_stays():
    cfg = TrainConfig(muon_momentum_warmup_start=0.85, muon_momentum=0.95, muon_momentum_warmup_steps=500)
    got = [muon_momentum(s, cfg) for s in (0, 100, 250, 499, 500, 10_000)]
    assert got == pytest.approx([0.85, 0.87, 0.90, 0.95 - 0.1 / 500, 0.95, 0.95], rel=1e-12)
    assert muon_momentum(0, TrainConfig(muon_momentum=0.99, muon_momentum_warmup_steps=0)) == 0.99


def test_ns_dtype_partial_is_what_the_run_uses():
    """`train.muon_ns_dtype` reaches the orthogonalization (float32 on CPU smoke runs)."""
    recipe, model, roles, patterns = tiny("train.muon_ns_dtype=float32")
    muon = build_optimizers(model, recipe.train, roles, "cpu").muon
    assert muon is not None
    g = draw((6, 4), seed=5).float()
    assert torch.equal(muon.orthogonalize(g, 5), partial(newton_schulz5, dtype=torch.float32)(g, 5))
