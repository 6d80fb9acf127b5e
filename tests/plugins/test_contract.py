"""The plugin contract (CONTRIBUTING.md, "A new technique"; `pgolf_core.testing`), checked for every
installed plugin:
1. its config round-trips through TOML and rejects unknown keys;
2. `torch.compile(fullgraph=True)` traces the model with no graph break;
3. compiled training through its train-phase transitions does not recompile after the warm-up;
4. a tiny model with it trains a few steps on CPU, exports, and it has an effect: the loss or the export
   bytes move by more than noise (LOSS_EFFECT, BYTES_EFFECT).
(5, exact math, lives in each plugin's own tests.) The checks are `PluginContract`'s; this file holds the
measured thresholds; what makes each plugin act in the tiny run is the plugin's own `TINY` (`pgolf_core.Tiny`),
so a third-party plugin passes the same contract without an entry here."""

from __future__ import annotations

import pytest

from pgolf_core import registry
from pgolf_core.hookspecs import catalog
from pgolf_core.testing import PluginContract

PLUGINS = sorted(registry.discover())
# "Has an effect" means more than rounding noise (~1e-7 in these losses). Measured (loss = the larger change of
# val_loss and round-trip val_loss): every training/model plugin moves the loss by >= 1.1e-3 (late_qat; xsa
# 1.5e-3, partial_rope 1.6e-3), gptq_lite by 1.3e-4 (round trip only), int6_export by 2.9e-3, lqer by 4.1e-4
# (round trip only; +2,380 bytes), sdclip by 1.3e-3 (+5,918 bytes, both with int6_export), leaky_relu2 by
# 7.4e-3, depth_recurrence by 2.8e-2, parallel_residuals by 2.5e-2 (matrix lr 0.5), prune by 1.9e-3 at 5 %
# (round trip only, with int6_export; 9.1e-5 at the record's 1 %, mostly entries int6 rounds to 0 anyway); the
# codecs change only bytes (lzma-9 6,876, brotli-11 18,044 vs zlib-9); the TTTs only the sliding-window loss,
# at their record settings: ttt_score_first 1.8e-3, ttt_sgd 1.2e-4, ttt_two_phase 4.7e-1 (125 epochs on the
# tokens it scores). Thresholds sit >= 10x under the smallest of each kind.
LOSS_EFFECT = 1e-5
BYTES_EFFECT = 300


def contract(name: str) -> PluginContract:
    return PluginContract(name, loss_effect=LOSS_EFFECT, bytes_effect=BYTES_EFFECT)


def has_train_hooks(name: str) -> bool:
    hooks = registry.hooks_of(registry.load_class(registry.discover()[name]))
    return any(catalog()[h].pgolf_phase == "train" for h in hooks)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PLUGINS)
def test_config_round_trips_and_rejects_unknown_keys(name, tmp_path):
    contract(name).check_config(tmp_path)


@pytest.mark.parametrize("name", PLUGINS)
def test_model_compiles_without_graph_breaks(name, tmp_path):
    contract(name).check_compiles(tmp_path)


# Plugins with train hooks switch something during training (QAT, EMA/SWA snapshots): the default suite checks
# those (~5 s each); the others, whose compiled graph nothing changes after the build, run with -m slow.
@pytest.mark.parametrize(
    "name", [n if has_train_hooks(n) else pytest.param(n, marks=pytest.mark.slow) for n in PLUGINS]
)
def test_compiled_training_does_not_recompile_after_warm_up(name, sample_cache, tmp_path):
    contract(name).check_no_recompile(tmp_path)


@pytest.mark.parametrize("name", PLUGINS)
def test_trains_exports_and_has_an_effect(name, sample_cache, tmp_path):
    if name == "brotli":
        pytest.importorskip("brotli")  # an optional dependency (pgolf[brotli])
    with_it, without = contract(name).check_effect(tmp_path)
    assert with_it["steps"] == 6
    if contract(name).tiny.overrides_with:  # a codec: the artifact is written with the plugin's codec
        assert with_it["artifact_format"] == f"int8_{name}" and without["artifact_format"] == "int8_zlib"
