"""The plugin contract (CONTRIBUTING.md, "A new technique"; `pgolf_core.testing`), checked for every
installed plugin:
1. its config round-trips through TOML and rejects unknown keys;
2. `torch.compile(fullgraph=True)` traces the model with no graph break;
3. compiled training through its train-phase transitions does not recompile after the warm-up;
4. a tiny model with it trains a few steps on CPU, exports, and it has an effect: the loss or the export
   bytes move by more than noise (LOSS_EFFECT, BYTES_EFFECT).
(5, exact math, lives in each plugin's own tests.) The checks are `PluginContract`'s; this file holds the
per-plugin settings that make each plugin act in the tiny run, and the measured thresholds."""

from __future__ import annotations

import pytest

from pgolf_core import registry
from pgolf_core.hookspecs import PHASES
from pgolf_core.testing import PluginContract

# Settings that make each plugin act within a 6-step, 4-layer run.
TINY_SETTINGS: dict[str, dict] = {
    "bigram_hash": {"buckets": 64, "dim": 16},
    "partial_rope": {"dims": 4},
    "value_embed": {"dim": 16, "layers": [2, 3]},
    "xsa": {"last_n": 2},
    "ortho_init": {"min_dim": 8},
    "late_qat": {"threshold": 0.6},
    "swa": {"every": 1, "threshold": 0.9},
    "gptq_lite": {},
    "lqer": {"min_numel": 256},  # every quantized 32-dim matrix is a candidate (default: > 65,536 elements)
    "prune": {"min_numel": 256, "fraction": 0.05},  # the 32-dim matrices and the embedding; 5 %: see below
    "parallel_residuals": {"start_layer": 0},
    "depth_recurrence": {"loop_start": 1, "loop_end": 2, "num_loops": 1, "start_frac": 0.5},
}
# Plugins that need a partner to act (the partner's own effect is subtracted by comparing against it).
PARTNERS = {"gptq_lite": ["int6_export"], "sdclip": ["int6_export"], "prune": ["int6_export"]}
# Recipe overrides for both runs of a plugin: the 32-dim matrices are all under the default 65,536-element
# float-passthrough limit, so the exporters would have nothing to quantize; gptq_lite's clip percentiles
# only differ from the row max on rows longer than ~100 weights whose max exceeds 1 (the scale floor is 1/31).
EXTRA = {name: ["export.keep_float_max_numel=256"] for name in ("int6_export", "lqer", "sdclip", "prune")}
EXTRA["gptq_lite"] = ["export.keep_float_max_numel=256", "model.model_dim=128", "train.matrix_lr=1.0"]
# TTT acts on the sliding-window eval only: both runs score one, the 1,024 tokens in 4 chunks of 256.
TTTS = ("ttt_score_first", "ttt_sgd", "ttt_two_phase")
EXTRA.update({name: ["eval.sliding_stride=16", "eval.chunk_tokens=256"] for name in TTTS})
# Parallel lanes differ from sequential ones by what attention wrote, which a 6-step run with zero-init
# output projections keeps tiny; a larger matrix lr makes it measurable.
EXTRA["parallel_residuals"] = ["train.matrix_lr=0.5"]
# Overrides for the run with the plugin only: a codec plugin acts when the recipe picks its codec (the run
# without it keeps the default zlib-9, which the recipe could not name brotli or lzma without the plugin).
WITH_ONLY = {
    "brotli": ["export.compressor=brotli", "export.level=11"],
    "lzma": ["export.compressor=lzma", "export.level=9"],
}

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
    return PluginContract(
        name,
        settings=TINY_SETTINGS.get(name, {}),
        partners=PARTNERS.get(name, ()),
        overrides=EXTRA.get(name, ()),
        overrides_with=WITH_ONLY.get(name, ()),
        loss_effect=LOSS_EFFECT,
        bytes_effect=BYTES_EFFECT,
    )


def has_train_hooks(name: str) -> bool:
    hooks = registry.hooks_of(registry.load_class(registry.discover()[name]))
    return any(h in PHASES["train"] for h in hooks)


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
    if name in WITH_ONLY:  # the artifact is written with the plugin's codec
        assert with_it["artifact_format"] == f"int8_{name}" and without["artifact_format"] == "int8_zlib"
