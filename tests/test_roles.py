"""Parameter roles: declared where parameters are built, they pick exactly the tensors the records'
name-substring rule picked, for every shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pgolf_core import build_model, declare_all, declare_role, load_recipe, role_of
from pgolf_core.types import PgolfError, collect_roles, group_of, is_control
from tests.record_rules import control_patterns

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_declared_control_tensors_are_the_records_pattern_matches(path):
    recipe = load_recipe(path, smoke=True)
    model = build_model(recipe)
    roles, patterns = collect_roles(model), control_patterns(recipe)
    names = [n for n, _ in model.named_parameters()]
    declared = {n for n in names if is_control(n, roles)}
    by_pattern = {n for n in names if any(p in n for p in patterns)}
    assert declared == by_pattern and declared  # same set, and not empty
    # Zero init: exactly the output projections (and an untied head), as the records' _zero_init flags.
    zero = {n for n in names if roles.get(n) is not None and roles[n].zero_init}
    want = {n for n in names if n.endswith((".attn.proj.weight", ".mlp.proj.weight")) or n == "lm_head.weight"}
    assert zero == want


def test_roles_of_a_module_and_its_children():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    declare_all(m, group="scalar")
    declare_role(m[1], "weight", zero_init=True)
    roles = collect_roles(m)
    assert set(roles) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # a later declaration replaces one role
    assert roles["1.weight"].zero_init and roles["1.weight"].group is None and roles["0.bias"].group == "scalar"
    assert role_of(m[0], "weight").group == "scalar" and not role_of(m[0], "nothing").control
    assert group_of("blocks.0.w", torch.zeros(2, 2), {}) == "matrix"
    with pytest.raises(PgolfError, match="group 'adam' is not one of token, matrix, scalar, head"):
        declare_role(m, "x", group="adam")
