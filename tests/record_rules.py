"""The records' name-substring rule for control tensors, kept in the tests only.

The records marked their small control tensors with CONTROL_TENSOR_NAME_PATTERNS (substrings of
parameter names); pgolf declares roles where parameters are built instead. The tests use these
patterns to check that the declared roles pick exactly the same tensors, and to give exporters
roles for state dicts that have no model behind them.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgolf_core.types import ParamRole

BASELINE_CONTROL = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain", "skip_weight",
    "skip_weights",
)  # fmt: skip
# What pgolf's plugins appended to the baseline list before roles existed (the classification the
# golden tests were first passed with).
PLUGIN_CONTROL = {"bigram_hash": ("bigram.scale",), "value_embed": ("ve_layer_scales", "ve_shared.scale")}


def control_patterns(recipe) -> tuple[str, ...]:
    """The control substrings of a recipe's run, as the records' rule and pgolf's plugins had them."""
    out = list(BASELINE_CONTROL)
    for name in recipe.enabled_plugins:
        out += PLUGIN_CONTROL.get(name, ())
        if name == "smeargate" and recipe.plugins[name].config.as_control:
            out.append("smear")
    return tuple(out)


def pattern_roles(names: Iterable[str], patterns: Iterable[str]) -> dict[str, ParamRole]:
    """Roles for a plain state dict: control where a name contains one of `patterns`."""
    patterns = tuple(patterns)
    return {n: ParamRole(control=True) for n in names if any(p in n for p in patterns)}
