"""Recipe loading: defaults, overrides, and clear errors (file, table, key, expected, did-you-mean)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import pytest

from pgolf_core.recipe import SMOKE_OVERRIDES, check_settings, read_recipe
from pgolf_core.registry import load_recipe
from pgolf_core.types import PgolfError, Plugin, Range, RecipeError, dump_toml

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class DemoConfig:
    decay: float = 0.997
    layers: list[int] = dataclasses.field(default_factory=lambda: [9, 10])


class DemoPlugin(Plugin):
    name = "demo"
    Config = DemoConfig


def classes(names, source):
    known = {"demo": DemoPlugin}
    for n in names:
        if n not in known:
            raise RecipeError(f"{source}: [plugins.{n}] unknown plugin {n!r}")
    return {n: known[n] for n in names}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_baseline_recipe_has_the_record_values():
    r = load_recipe(ROOT / "recipes" / "baseline.toml")
    assert (r.model.num_layers, r.model.model_dim, r.model.num_heads, r.model.num_kv_heads) == (9, 512, 8, 4)
    assert (r.train.tied_embed_lr, r.train.matrix_lr, r.train.scalar_lr) == (0.05, 0.04, 0.04)
    assert (r.train.warmdown_iters, r.train.train_batch_tokens, r.train.train_seq_len) == (1200, 524288, 1024)
    assert r.export.compressor == "zlib" and r.export.level == 9
    assert r.plugins == {}


def test_overrides_smoke_and_seed(tmp_path):
    r = load_recipe(
        write(tmp_path, "[train]\nmatrix_lr = 0.02\n"), ["train.matrix_lr=0.03", "run.name=x y"], smoke=True
    )
    assert r.train.matrix_lr == 0.03
    assert r.run.name == "x y"  # bare words become strings
    assert r.model.model_dim == SMOKE_OVERRIDES["model.model_dim"]
    assert r.train.warmdown_iters == SMOKE_OVERRIDES["train.warmdown_iters"]


def test_int_accepted_for_float_but_not_the_reverse(tmp_path):
    r = load_recipe(write(tmp_path, "[train]\nmatrix_lr = 1\n"))
    assert r.train.matrix_lr == 1.0 and isinstance(r.train.matrix_lr, float)
    with pytest.raises(RecipeError, match=r"\[train\] iterations: expected int, got float 1.5"):
        load_recipe(write(tmp_path, "[train]\niterations = 1.5\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nmatrx_lr = 0.1\n", r"r.toml: \[train\] unknown key 'matrx_lr' \(did you mean \"matrix_lr\"\?\)"),
        ('[train]\nmatrix_lr = "fast"\n', r"r.toml: \[train\] matrix_lr: expected float, got string 'fast'"),
        ("[model]\ntie_embeddings = 1\n", r"\[model\] tie_embeddings: expected bool"),
        ("[trian]\n", r"unknown table \[trian\] \(did you mean \"train\"\?\)"),
        ("[train\nx=1", r"r.toml: invalid TOML"),
        ("[plugins.dmeo]\n", r"\[plugins.dmeo\] unknown plugin 'dmeo'"),
        ('[plugins.demo]\ndecay = "x"\n', r"\[plugins.demo\] decay: expected float, got string"),
        ('[plugins.demo]\nlayers = [1, "a"]\n', r"\[plugins.demo\] layers\[1\]: expected int"),
        ("[plugins.demo]\ndeacy = 0.9\n", r"unknown key 'deacy' \(did you mean \"decay\"\?\)"),
        ('[model]\nattention = "flsh"\n', r"\[model\] attention: expected one of 'auto', 'sdpa', 'flash'"),
        ("[model]\nmodel_dim = 100\nnum_heads = 8\n", r"model_dim=100 must be divisible by num_heads=8"),
        ("[plugins]\ndemo = 3\n", r"r.toml: plugins.demo must be a table \(\[plugins.demo\]\), got int"),
        ("[[plugins.demo]]\ndecay = 0.9\n", r"plugins.demo must be a table \(\[plugins.demo\]\), got list"),
    ],
)
def test_malformed_recipes_name_file_table_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        read_recipe(write(tmp_path, text), plugin_classes=classes)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="expected section.key=value"):
        load_recipe(None, ["train.matrix_lr"])
    with pytest.raises(RecipeError, match=r"--set train.matrx_lr=1 unknown|unknown key 'matrx_lr'"):
        load_recipe(None, ["train.matrx_lr=1"])


def test_errors_in_set_values_name_the_set(tmp_path):
    path = write(tmp_path, "[train]\niterations = 10\n")
    with pytest.raises(
        RecipeError,
        match=r"r.toml: \[train\] iterations: expected int, got string 'abc' \(from --set train.iterations=abc\)",
    ):
        load_recipe(path, ["train.iterations=abc"])
    with pytest.raises(
        RecipeError, match=r"\[plugins.demo\] decay: expected float.*\(from --set plugins.demo.decay=x\)"
    ):
        read_recipe(path, ["plugins.demo.decay=x"], plugin_classes=classes)
    with pytest.raises(RecipeError, match=r"unknown key 'itrations'.*\(from --set train.itrations=3\)"):
        load_recipe(path, ["train.itrations=3"])
    with pytest.raises(RecipeError) as bad_file:  # an error in the file itself blames no --set
        load_recipe(write(tmp_path, "[train]\niterations = 1.5\n"), ["train.warmup_steps=2"])
    assert "--set" not in str(bad_file.value)
    with pytest.raises(RecipeError) as prefix:  # a --set whose key is a prefix of the bad one is not blamed
        load_recipe(write(tmp_path, "[train]\nmuon_momentum_warmup_steps = 1.5\n"), ["train.muon_momentum=0.9"])
    assert "--set" not in str(prefix.value)


def test_plugins_enable_disable_keep_settings(tmp_path):
    path = write(tmp_path, "[plugins.demo]\ndecay = 0.9\n")
    r = read_recipe(path, plugin_classes=classes)
    assert r.enabled_plugins == ["demo"] and r.plugins["demo"].config.decay == 0.9
    r = read_recipe(path, disable=["demo"], plugin_classes=classes)
    assert r.enabled_plugins == [] and r.plugins["demo"].config.decay == 0.9
    r = read_recipe(write(tmp_path, "[plugins.demo]\nenabled = false\n"), enable=["demo"], plugin_classes=classes)
    assert r.enabled_plugins == ["demo"]
    r = read_recipe(path, ["plugins.demo.decay=0.5"], plugin_classes=classes)
    assert r.plugins["demo"].config.decay == 0.5
    with pytest.raises(RecipeError, match=r"--disable dmo: plugin 'dmo' is not in .*did you mean \"demo\""):
        read_recipe(path, disable=["dmo"], plugin_classes=classes)


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    r = read_recipe(write(tmp_path, "[plugins.demo]\nlayers = [3]\n"), ["train.adam_eps=1e-10"], plugin_classes=classes)
    text = r.to_toml()
    again = read_recipe(write(tmp_path, text), plugin_classes=classes)
    assert again.to_dict() == r.to_dict()
    assert again.sha256() == r.sha256()
    assert "[plugins.demo]\nenabled = true\ndecay = 0.997\nlayers = [3]" in text


def test_dump_toml_nested():
    assert dump_toml({"a": {"x": 1, "b": {"y": 'q"'}}}) == '[a]\nx = 1\n\n[a.b]\ny = "q\\""\n'


def test_smoke_keeps_an_explicit_mlp_width_in_proportion():
    """PR #63's MLP is 1344 = 2.625 x 512 wide; at smoke size (dim 128) it becomes 336, not 1344."""
    pr63 = Path(__file__).resolve().parents[1] / "recipes" / "pr63.toml"
    assert load_recipe(pr63).model.mlp_hidden == 1344
    assert load_recipe(pr63, smoke=True).model.mlp_hidden == 336
    assert load_recipe(pr63, ["model.mlp_hidden=200"], smoke=True).model.mlp_hidden == 200


class CheckedPlugin(DemoPlugin):
    """A third-party plugin with the documented `check(config, recipe)` (`pgolf_core.Plugin`)."""

    @classmethod
    def check(cls, config, recipe):
        n = recipe.model.num_layers
        if bad := [i for i in config.layers if not 0 <= i < n]:
            raise PgolfError(f"layers={config.layers}: expected layer indices in 0..{n - 1} (not {bad})")


def test_plugin_validate_gets_the_resolved_model_and_errors_name_the_table(tmp_path):
    def checked(names, source):
        return {n: CheckedPlugin for n in names}

    path = write(tmp_path, "[model]\nnum_layers = 4\n\n[plugins.demo]\nlayers = [3]\n")
    assert read_recipe(path, plugin_classes=checked).plugins["demo"].config.layers == [3]
    with pytest.raises(RecipeError) as err:
        read_recipe(path, ["model.num_layers=3"], plugin_classes=checked)
    assert str(err.value) == f"{path}: [plugins.demo] layers=[3]: expected layer indices in 0..2 (not [3])"
    # a disabled plugin is not checked against the model: it will not join it
    assert not read_recipe(path, ["model.num_layers=3"], disable=["demo"], plugin_classes=checked).enabled_plugins
    with pytest.raises(RecipeError, match=r"\[plugins.demo\] decay=inf: expected a finite number"):
        read_recipe(path, ["plugins.demo.decay=inf"], plugin_classes=checked)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_heads=0", r"\[model\] num_heads=0: expected > 0 \(from --set model.num_heads=0\)"),
        ("train.beta2=1.0", r"\[train\] beta2=1.0: expected a value in \[0, 1\)"),
        ("export.clip_quantile=1.0000001", r"\[export\] clip_quantile=1.0000001: expected a value in \(0, 1\]"),
        ("run.seed=4294967296", r"\[run\] seed=4294967296: expected a value in \[0, 4294967295\]"),
    ],
)
def test_range_messages_name_key_value_and_range(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])
    assert load_recipe(None, ["run.seed=4294967295", "train.beta2=0.0", "export.clip_quantile=1.0"])


@dataclasses.dataclass
class Optional_:
    n: Annotated[int, Range(0)] | None = None


def test_a_range_reads_both_open_ends_and_an_optional_setting():
    """Found in review: `open="both"` with no upper bound printed ">= 0" while refusing 0, and a range inside
    `Optional[...]` was not read at all, so -5 passed."""
    assert Range(0, open="both").text() == "expected > 0" and not Range(0, open="both").admits(0)
    assert Range(high=0, open="high").text() == "expected < 0"
    assert Range(0, 1, open="both").text() == "expected a value in (0, 1)"

    check_settings(Optional_(None), "where")
    check_settings(Optional_(3), "where")
    with pytest.raises(RecipeError, match=r"where n=-5: expected >= 0"):
        check_settings(Optional_(-5), "where")
