"""The plugin contract (CONTRIBUTING.md, "A new technique"), checked for every installed plugin:
1. its config round-trips through TOML and rejects unknown keys;
2. a tiny model with it builds, trains a few steps on CPU and exports;
3. it has an effect: the loss or the export bytes move by more than noise (LOSS_EFFECT, BYTES_EFFECT);
4. `torch.compile(fullgraph=True)` traces the model with no graph break.
(5, exact math, lives in each plugin's own tests.)"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pgolf_core import registry
from pgolf_core.build import build_model
from pgolf_core.errors import RecipeError
from pgolf_core.recipe import dump_toml, load_recipe
from pgolf_core.train import train

TINY = [
    "model.model_dim=32",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.num_layers=4",
    "train.train_seq_len=32",
    "train.train_batch_tokens=256",
    "train.iterations=6",
    "train.warmup_steps=1",
    "train.max_wallclock_seconds=0",
    "train.warmdown_iters=4",
    "train.val_loss_every=0",
    "train.train_log_every=1",
    "train.grad_accum_steps=1",
    "eval.max_tokens=1024",
    "eval.batch_tokens=512",
]
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
}
# Plugins that need a partner to act (the partner's own effect is subtracted by comparing against it).
PARTNERS = {"gptq_lite": ["int6_export"]}
# Recipe overrides for both runs of a plugin: the 32-dim matrices are all under the default 65,536-element
# float-passthrough limit, so the exporters would have nothing to quantize; gptq_lite's clip percentiles
# only differ from the row max on rows longer than ~100 weights whose max exceeds 1 (the scale floor is 1/31).
EXTRA = {name: ["export.keep_float_max_numel=256"] for name in ("int6_export", "lqer")}
EXTRA["gptq_lite"] = ["export.keep_float_max_numel=256", "model.model_dim=128", "train.matrix_lr=1.0"]
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
# (round trip only; +2,380 bytes); the codecs change only bytes (lzma-9 6,876, brotli-11 18,044 vs zlib-9).
# Thresholds sit >= 10x under the smallest of each kind.
LOSS_EFFECT = 1e-5
BYTES_EFFECT = 300


def tiny_recipe(tmp_path, plugins: list[str], extra: list[str] = ()):
    tables = {"plugins": {name: dict(TINY_SETTINGS.get(name, {})) for name in plugins}}
    path = tmp_path / f"{'-'.join(plugins) or 'none'}.toml"
    path.write_text(dump_toml(tables))
    return load_recipe(path, TINY + list(extra))


@pytest.mark.parametrize("name", PLUGINS)
def test_config_round_trips_and_rejects_unknown_keys(name, tmp_path):
    recipe = tiny_recipe(tmp_path, [name])
    again_path = tmp_path / "again.toml"
    again_path.write_text(recipe.to_toml())
    again = load_recipe(again_path)
    assert again.plugins[name].config == recipe.plugins[name].config
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[plugins.{name}]\nno_such_key_xyz = 1\n")
    expected = "unknown key 'no_such_key_xyz'" if recipe.plugins[name].config is not None else "takes no settings"
    with pytest.raises(RecipeError, match=expected):
        load_recipe(bad)
    if dataclasses.is_dataclass(recipe.plugins[name].config):
        assert dataclasses.asdict(again.plugins[name].config) == dataclasses.asdict(recipe.plugins[name].config)


@pytest.mark.parametrize("name", PLUGINS)
def test_model_compiles_without_graph_breaks(name, tmp_path):
    model = build_model(tiny_recipe(tmp_path, PARTNERS.get(name, []) + [name]))
    model.train()
    x = torch.randint(0, 1024, (2, 32))
    explanation = torch._dynamo.explain(model)(x, x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.fixture(scope="module")
def reference_runs(sample_cache, tmp_path_factory):
    """Runs without the plugin under test (per partner set), cached for the module."""
    cache: dict[tuple, dict] = {}

    def run(plugins: list[str], extra: list[str]) -> dict:
        key = (tuple(plugins), tuple(extra))
        if key not in cache:
            out = tmp_path_factory.mktemp("ref")
            cache[key] = train(tiny_recipe(out, plugins, extra), out / "run", interactive=False)
        return cache[key]

    return run


@pytest.mark.parametrize("name", PLUGINS)
def test_trains_exports_and_has_an_effect(name, reference_runs, tmp_path):
    if name == "brotli":
        pytest.importorskip("brotli")  # an optional dependency (pgolf[brotli])
    partners = PARTNERS.get(name, [])
    extra = EXTRA.get(name, [])
    without = reference_runs(partners, extra)
    with_extra = extra + WITH_ONLY.get(name, [])
    with_it = train(tiny_recipe(tmp_path, partners + [name], with_extra), tmp_path / "run", interactive=False)
    assert with_it["steps"] == 6 and (tmp_path / "run" / "summary.json").is_file()
    assert name in [p["name"] for p in with_it["plugins"]]
    if name in WITH_ONLY:  # the artifact is written with the plugin's codec
        assert with_it["artifact_format"] == f"int8_{name}" and without["artifact_format"] == "int8_zlib"
    loss = max(abs(with_it[k] - without[k]) for k in ("val_loss", "roundtrip_val_loss"))
    size = abs(with_it["model_bytes"] - without["model_bytes"])
    print(f"{name}: loss effect {loss:.3e}, artifact effect {size} bytes")
    assert loss >= LOSS_EFFECT or size >= BYTES_EFFECT, f"{name}: loss moved {loss:.2e}, artifact {size} bytes"
    log = (tmp_path / "run" / "train.log").read_text()
    assert "final_" in log and json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6
