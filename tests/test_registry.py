"""Plugin discovery, per-run registration order, exclusive-hook conflicts, broken plugins."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pgolf_core import registry
from pgolf_core.cli import main
from pgolf_core.registry import load_recipe
from pgolf_core.run import build_model, build_model_with, model_spec
from pgolf_core.types import PgolfError, RecipeError

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_TEMPLATE = '''
import dataclasses
from torch import nn
from pgolf_core import Plugin, hookimpl


@dataclasses.dataclass
class Config:
    scale: float = 2.0


class Scale(nn.Module):
    """Multiplies the attention output by a constant (a stand-in for a real technique)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, y, v):
        return y * self.scale


class Demo(Plugin):
    """{doc}"""

    name = "{name}"
    version = "1.2.3"
    order = {order}
    Config = Config

    @hookimpl
    def pgolf_attention_post(self, spec, layer):
        if layer == spec.num_layers - 1:
            module = Scale(self.config.scale)
            module.owner = self.name
            return module
        return None
{extra}

PLUGIN = Demo
'''

ROTARY = """
    @hookimpl
    def pgolf_rotary(self, spec, layer):
        return None
"""


def make_plugin(directory: Path, name: str, order: int = 100, extra: str = "") -> None:
    text = PLUGIN_TEMPLATE.format(name=name, order=order, doc=f"Demo plugin {name}.", extra=extra)
    (directory / f"{name}.py").write_text(textwrap.dedent(text))


def recipe_with(directory: Path, tmp_path: Path, body: str, **kwargs):
    path = tmp_path / "r.toml"
    model = "[model]\nvocab_size = 64\nnum_layers = 2\nmodel_dim = 32\nnum_heads = 4\nnum_kv_heads = 2\n"
    path.write_text(model + body)
    return load_recipe(path, plugin_dirs=[directory], **kwargs)


def test_collecting_hooks_follow_order_then_name(tmp_path):
    make_plugin(tmp_path, "zeta", order=10)
    make_plugin(tmp_path, "alpha", order=50)
    make_plugin(tmp_path, "beta", order=50)
    r = recipe_with(tmp_path, tmp_path, "[plugins.alpha]\n[plugins.beta]\n[plugins.zeta]\n")
    pm = registry.create_manager(r, [tmp_path])
    assert [p.name for p in registry.ordered_plugins(pm)] == ["zeta", "alpha", "beta"]
    modules = pm.hook.pgolf_attention_post(spec=model_spec(r), layer=1)
    assert [m.owner for m in modules] == ["zeta", "alpha", "beta"]


def test_disabled_plugin_is_not_registered_and_has_no_effect(tmp_path):
    make_plugin(tmp_path, "alpha")
    on = recipe_with(tmp_path, tmp_path, "[plugins.alpha]\nscale = 3.0\n")
    off = recipe_with(tmp_path, tmp_path, "[plugins.alpha]\nscale = 3.0\n", disable=["alpha"])
    assert registry.ordered_plugins(registry.create_manager(off, [tmp_path])) == []
    pm = registry.create_manager(on, [tmp_path])
    m_on = build_model_with(model_spec(on), pm, seed=0)
    m_off = build_model_with(model_spec(off), registry.create_manager(off, [tmp_path]), seed=0)
    assert [len(b.attn.post) for b in m_on.blocks] == [0, 1]
    assert [len(b.attn.post) for b in m_off.blocks] == [0, 0]
    assert m_on.blocks[1].attn.post[0].scale == 3.0


def test_two_plugins_on_an_exclusive_hook_is_an_error_naming_both(tmp_path):
    make_plugin(tmp_path, "rope_a", extra=ROTARY)
    make_plugin(tmp_path, "rope_b", extra=ROTARY)
    message = "plugins 'rope_a' and 'rope_b' both implement the exclusive hook pgolf_rotary"
    with pytest.raises(RecipeError, match=message):  # when the recipe loads, before anything is set up
        recipe_with(tmp_path, tmp_path, "[plugins.rope_a]\n[plugins.rope_b]\n")


def test_broken_plugin_is_reported_not_fatal(tmp_path, capsys):
    make_plugin(tmp_path, "alpha")
    (tmp_path / "broken.py").write_text("raise ImportError('needs libfoo')\n")
    rows = {row["name"]: row for row in registry.describe([tmp_path])}
    assert "needs libfoo" in rows["broken"]["error"]
    assert rows["alpha"]["hooks"] == ["pgolf_attention_post"]
    assert rows["alpha"]["config"] == {"scale": 2.0} and rows["alpha"]["version"] == "1.2.3"
    assert main(["plugins", "--plugins-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "broken  BROKEN: plugin 'broken'" in out and "alpha 1.2.3" in out
    assert main(["plugins", "--json", "--plugins-dir", str(tmp_path)]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} >= {"alpha", "broken"}
    # A plugin that exits while importing, or whose Config is not a dataclass, is reported too.
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "malformed.py").write_text(MISSPELLED.format(name="malformed", body=MALFORMED))
    rows = {row["name"]: row for row in registry.describe([tmp_path])}
    assert "failed to load: SystemExit: 3" in rows["exits"]["error"]
    assert "is malformed: TypeError" in rows["malformed"]["error"] and rows["alpha"]["version"] == "1.2.3"
    assert main(["plugins", "--plugins-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    # A recipe that names the broken plugin fails with a clear error.
    with pytest.raises(PgolfError, match="plugin 'broken' .* failed to load: ImportError: needs libfoo"):
        recipe_with(tmp_path, tmp_path, "[plugins.broken]\n")


def test_plugins_order_command(tmp_path, capsys):
    make_plugin(tmp_path, "alpha", order=20)
    make_plugin(tmp_path, "beta", order=10)
    path = tmp_path / "r.toml"
    path.write_text("[plugins.alpha]\n[plugins.beta]\n")
    assert main(["plugins", "--order", str(path), "--plugins-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["1.", "beta"] and lines[1].split()[:2] == ["2.", "alpha"]


def test_cli_reports_recipe_errors_with_exit_2(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text("[train]\nmatrx_lr = 0.1\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf: error: ") and "matrx_lr" in err and "Traceback" not in err


def test_cli_reports_plugin_setting_and_path_errors_with_exit_2(tmp_path, capsys):
    """A plugin's own validation names the recipe and table; an unusable --out is no traceback."""
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    assert main(["run", str(recipes / "pr414.toml"), "--smoke", "--set", "plugins.xsa.last_n=30"]) == 2
    err = capsys.readouterr().err
    assert f"{recipes / 'pr414.toml'}: [plugins.xsa] last_n=30: expected 0..11 (model.num_layers)" in err
    assert main(["run", str(recipes / "pr414.toml"), "--smoke", "--set", "export.level=30"]) == 2
    err = capsys.readouterr().err
    assert f'{recipes / "pr414.toml"}: [export] level=30: expected 1..22 for compressor "zstd"' in err
    (tmp_path / "afile").write_text("keep me")
    args = [
        "run",
        str(recipes / "baseline.toml"),
        "--smoke",
        "--set",
        "train.iterations=1",
        "--out",
        str(tmp_path / "afile"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf: error: ") and "afile" in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "keep me"


def test_cli_names_a_missing_data_directory(tmp_path, capsys):
    args = ["run", str(Path(__file__).resolve().parents[1] / "recipes" / "baseline.toml"), "--smoke"]
    assert main([*args, "--set", f"data.path={tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"[data] path: {tmp_path / 'nowhere'} is not a directory" in err and "Traceback" not in err


def test_build_model_is_deterministic_for_the_seed(tmp_path):
    r_sets = ["model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2", "model.num_layers=2"]
    r = load_recipe(None, r_sets)
    a, b = build_model(r), build_model(r)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    other = build_model(load_recipe(None, [*r_sets, "run.seed=1338"]))
    differ = [k for k, v in other.state_dict().items() if not torch.equal(v, a.state_dict()[k])]
    assert "tok_emb.weight" in differ  # the seed reaches the init (zero-init projections stay equal)


MISSPELLED = """
from pgolf_core import Plugin, hookimpl


class Typo(Plugin):
    name = "{name}"
    version = "0"
    order = 100

    {body}


PLUGIN = Typo
"""


HOOK = "@hookimpl\n    def pgolf_post_step(self, state): pass"
MALFORMED = f"Config = int\n\n    {HOOK}"  # Config not a dataclass: `pgolf plugins` cannot read its settings


@pytest.mark.parametrize(
    "body, error",
    [
        (
            "@hookimpl\n    def pgolf_post_stepp(self, state): pass",
            'method pgolf_post_stepp is not a hook of the catalog (did you mean "pgolf_post_step"?)',
        ),
        ("def pgolf_post_step(self, state): pass", "method pgolf_post_step is not decorated with @pgolf_core.hookimpl"),
        ("@hookimpl\n    def pgolf_post_step(self, state, extra): pass", "hook 'pgolf_post_step'"),
    ],
    ids=["misspelled", "undecorated", "wrong-arguments"],
)
def test_a_hook_method_the_catalog_does_not_know_fails_at_load(tmp_path, body, error):
    """A misspelled or undecorated hook would register nothing and silently do nothing: it is a load
    error naming the plugin, where it comes from, and the method."""
    (tmp_path / "typo.py").write_text(MISSPELLED.format(name="typo", body=body))
    with pytest.raises(PgolfError) as info:  # at recipe load (names), or when registered (arguments)
        registry.create_manager(recipe_with(tmp_path, tmp_path, "[plugins.typo]\n"), [tmp_path])
    assert f"plugin 'typo' (from {tmp_path / 'typo.py'})" in str(info.value) and error in str(info.value)


# ---------------------------------------------------------------- errors an author meets (pgolf new-plugin)


def test_import_failure_names_plugin_distribution_line_and_fix(tmp_path):
    def load():
        import pgolf_no_such_dependency  # noqa: F401

    source = registry.PluginSource("fancy", "pgolf-fancy", load)
    with pytest.raises(PgolfError) as info:
        registry.load_class(source)
    msg = str(info.value)
    assert msg.startswith("plugin 'fancy' (from pgolf-fancy) failed to load: ModuleNotFoundError: No module named")
    assert f" at {__file__}:" in msg
    assert msg.endswith(
        "fix its code or install its missing dependency, then reinstall it (pip install pgolf-fancy), "
        "or uninstall it (pip uninstall pgolf-fancy)"
    )
    (tmp_path / "local.py").write_text("x = 1\nraise ValueError('bad value')\n")
    with pytest.raises(PgolfError) as info:
        recipe_with(tmp_path, tmp_path, "[plugins.local]\n")
    assert str(info.value) == (
        f"plugin 'local' (from {tmp_path / 'local.py'}) failed to load: ValueError: bad value at "
        f"{tmp_path / 'local.py'}:2; fix {tmp_path / 'local.py'}, or move it out of the --plugins-dir folder"
    )
    (tmp_path / "local.py").write_text(MISSPELLED.format(name="local", body=HOOK))  # fixed: loads now
    assert recipe_with(tmp_path, tmp_path, "[plugins.local]\n").plugins["local"].config is None


def test_config_value_without_type_annotation_is_a_load_error(tmp_path, capsys):
    text = PLUGIN_TEMPLATE.format(name="untyped", order=100, doc="Untyped.", extra="")
    (tmp_path / "untyped.py").write_text(textwrap.dedent(text).replace("    scale: float = 2.0\n", "    scale = 2.0\n"))
    expected = (
        f"plugin 'untyped' (from {tmp_path / 'untyped.py'}): Config.scale = 2.0 has no type annotation, so it is "
        "not a setting ([plugins.untyped] scale would be an unknown key); write `scale: float = 2.0`"
    )
    with pytest.raises(PgolfError) as info:
        recipe_with(tmp_path, tmp_path, "[plugins.untyped]\nscale = 3.0\n")
    assert str(info.value) == expected
    assert main(["plugins", "--plugins-dir", str(tmp_path)]) == 0  # listed as broken, not fatal
    assert f"untyped  BROKEN: {expected}" in capsys.readouterr().out


def test_unknown_hook_name_says_the_fix(tmp_path):
    body = "@hookimpl\n    def pgolf_mlpp(self, spec): pass"
    (tmp_path / "typo.py").write_text(MISSPELLED.format(name="typo", body=body))
    with pytest.raises(PgolfError) as info:  # at recipe load (names), or when registered (arguments)
        registry.create_manager(recipe_with(tmp_path, tmp_path, "[plugins.typo]\n"), [tmp_path])
    assert str(info.value) == (
        f"plugin 'typo' (from {tmp_path / 'typo.py'}): method pgolf_mlpp is not a hook of the catalog "
        '(did you mean "pgolf_mlp"?): rename it to a hook of docs/hooks.md, or give a helper method a name '
        "without the pgolf_ prefix"
    )


def test_exclusive_hook_conflict_names_where_each_plugin_comes_from(tmp_path):
    make_plugin(tmp_path, "rope_a", extra=ROTARY)
    make_plugin(tmp_path, "rope_b", extra=ROTARY)
    with pytest.raises(RecipeError) as info:  # when the recipe loads
        recipe_with(tmp_path, tmp_path, "[plugins.rope_a]\n[plugins.rope_b]\n")
    assert str(info.value) == (
        f"{tmp_path / 'r.toml'}: plugins 'rope_a' and 'rope_b' both implement the exclusive hook pgolf_rotary "
        f"('rope_a' from {tmp_path / 'rope_a.py'}, 'rope_b' from {tmp_path / 'rope_b.py'}); only one plugin may "
        "answer it: enable only one of them (--disable NAME, or remove its [plugins.NAME] table)"
    )


# ---------------------------------------------------------------- what an entry point (or PLUGIN) names

# The tutorial's first version, pasted into `pgolf new-plugin`'s package: the entry point kept the
# scaffold's class name, which the pasted code gave to the torch module.
PASTED = '''
import torch
from torch import nn
from pgolf_core import Plugin, hookimpl


class OutGate(nn.Module):
    """Base class for all neural network modules (what `pgolf plugins` used to list)."""

    def __init__(self, num_heads=4):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads))

    def forward(self, y, v, x):
        return y


class OutGatePlugin(Plugin):
    name = "{name}"
    version = "0.1.0"

    @hookimpl
    def pgolf_attention_post(self, spec, layer):
        return OutGate(spec.num_heads)


def make_gate():
    return OutGatePlugin


PLUGIN = {target}
'''
# what the entry point (or PLUGIN) names -> how the error says what it points at
NOT_A_PLUGIN = {
    "OutGate": "points at a torch module (OutGate)",
    "make_gate": "points at <function make_gate at 0x",
    "OutGatePlugin, not a Plugin": "points at OutGatePlugin, which is not a subclass of pgolf_core.Plugin",
    "OutGatePlugin, without hooks": "points at OutGatePlugin, which has no pgolf_* hook method, so it would do nothing",
    "OutGatePlugin, without version": "points at OutGatePlugin, whose name or version is missing or not the plugin's",
    "OutGatePlugin, named another": "points at OutGatePlugin, whose name or version is missing or not the plugin's",
}


def pasted(name: str, case: str) -> str:
    """The module of PASTED, its PLUGIN set to the class (or function) of `case`, changed as `case` says."""
    text = textwrap.dedent(PASTED).format(name="other" if "named another" in case else name, target=case.split(",")[0])
    if "without hooks" in case:
        text = text.replace(
            "    @hookimpl\n    def pgolf_attention_post(self, spec, layer):", "    def attention(self, spec, layer):"
        )
    if "not a Plugin" in case:  # a plain class, as plugins were before pgolf_core.Plugin
        text = text.replace("class OutGatePlugin(Plugin):", "class OutGatePlugin:")
    return text.replace('    version = "0.1.0"\n', "") if "without version" in case else text


def install(site: Path, name: str, code: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution `pgolf-<name>` (a dist-info folder on sys.path, as pip's --target writes)
    whose `pgolf.plugins` entry point `<name>` is `pgolf_<name>:<target>`."""
    (site / f"pgolf_{name}").mkdir(parents=True)
    (site / f"pgolf_{name}" / "__init__.py").write_text(code)
    info = site / f"pgolf_{name}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pgolf-{name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[pgolf.plugins]\n{name} = pgolf_{name}:{target}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, f"pgolf_{name}", raising=False)  # imported fresh, forgotten after the test


def refused_everywhere(name: str, message: str, extra: list[str], tmp_path: Path, capsys) -> None:
    """`pgolf plugins` lists the plugin as BROKEN with `message` and goes on; `pgolf run` naming it exits 2 with
    `message` as its one-line error, no traceback, before anything is written."""
    assert main(["plugins", *extra]) == 0
    out = capsys.readouterr().out
    assert f"{name}  BROKEN: {message}" in out and "xsa 0.1.0" in out
    out_dir = tmp_path / "run"
    args = ["run", str(ROOT / "recipes" / "baseline.toml"), "--smoke", "--enable", name, "--out", str(out_dir), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"pgolf: error: {message}\n" and not out_dir.exists()


@pytest.mark.parametrize("case", NOT_A_PLUGIN)
def test_an_entry_point_naming_no_plugin_class_is_a_load_error_naming_it_and_the_fix(
    case, tmp_path, monkeypatch, capsys
):
    name = "gate_" + "".join(c for c in case.split(",")[-1] if c.isalpha())[:12].lower()
    target = case.split(",")[0]
    install(tmp_path / "site", name, pasted(name, case), target, monkeypatch)
    with pytest.raises(PgolfError) as info:
        registry.load_class(registry.discover()[name])
    message = str(info.value)
    assert message.startswith(
        f"plugin {name!r} (from pgolf-{name}): the entry point {name} = pgolf_{name}:{target} {NOT_A_PLUGIN[case]}"
    )
    assert message.endswith(
        f'; point it at the plugin class (a pgolf_core.Plugin with name = {name!r}, a version such as "0.1.0", '
        "hooks decorated with @pgolf_core.hookimpl) in its pyproject.toml, then reinstall it"
    )
    refused_everywhere(name, message, [], tmp_path, capsys)


def test_a_file_whose_plugin_is_a_torch_module_or_missing_is_a_load_error(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "out_gate.py").write_text(pasted("out_gate", "OutGate"))
    fix = (
        "; point it at the plugin class (a pgolf_core.Plugin with name = 'out_gate', a version such as \"0.1.0\", "
        "hooks decorated with "
        "@pgolf_core.hookimpl)"
    )
    message = (
        f"plugin 'out_gate' (from {folder / 'out_gate.py'}): the file's PLUGIN points at a torch module (OutGate){fix}"
    )
    refused_everywhere("out_gate", message, ["--plugins-dir", str(folder)], tmp_path, capsys)
    # (each file is imported once per process: the variants below are other files)
    (folder / "no_plugin.py").write_text(pasted("no_plugin", "OutGate").replace("PLUGIN = OutGate\n", ""))
    with pytest.raises(PgolfError) as info:
        registry.load_class(registry.discover([folder])["no_plugin"])
    assert str(info.value) == message.replace("out_gate", "no_plugin").replace(
        "a torch module (OutGate)", "None, not a class"
    )
    (folder / "fixed.py").write_text(pasted("fixed", "OutGatePlugin"))  # the fix: it loads
    assert registry.load_class(registry.discover([folder])["fixed"]).__name__ == "OutGatePlugin"


def test_a_plugins_dir_file_named_like_an_installed_plugin_is_refused(tmp_path, monkeypatch, capsys):
    """A file would silently replace the installed plugin of its name (here the built-in xsa, and a
    third-party package): which code ran would depend on the command line, unsaid."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "xsa.py").write_text(MISSPELLED.format(name="xsa", body=HOOK))
    message = (
        f"--plugins-dir {folder}: {folder / 'xsa.py'} would shadow the plugin 'xsa' from pgolf; "
        "rename the file and its plugin's name"
    )
    with pytest.raises(PgolfError) as info:
        registry.discover([folder])
    assert str(info.value) == message
    recipe = ROOT / "recipes" / "pr414.toml"
    for argv in (["plugins"], ["run", str(recipe), "--smoke", "--out", str(tmp_path / "run")]):
        assert main([*argv, "--plugins-dir", str(folder)]) == 2
        assert capsys.readouterr().err == f"pgolf: error: {message}\n"
    assert not (tmp_path / "run").exists()
    (folder / "xsa.py").rename(folder / "my_xsa.py")  # the fix the message names (and the class's name)
    (folder / "my_xsa.py").write_text(MISSPELLED.format(name="my_xsa", body=HOOK))
    assert registry.discover([folder])["my_xsa"].origin == str(folder / "my_xsa.py")
    install(tmp_path / "site", "shadowed", pasted("shadowed", "OutGatePlugin"), "OutGatePlugin", monkeypatch)
    (folder / "shadowed.py").write_text(MISSPELLED.format(name="shadowed", body=HOOK))
    with pytest.raises(PgolfError, match=r"shadowed.py would shadow the plugin 'shadowed' from pgolf-shadowed; "):
        registry.discover([folder])


def test_a_form_naming_a_hook_the_plugin_lacks_is_a_load_error(tmp_path):
    """`forms()` picks which hooks register; a misspelled name would register none of the form's hooks and the
    plugin would do nothing without a word (found in review)."""
    forms = """
    @classmethod
    def forms(cls, config):
        return ("pgolf_attention_post", "pgolf_eval_adpat")
"""
    make_plugin(tmp_path, "alpha", extra=forms)
    with pytest.raises(
        PgolfError, match=r"plugin 'alpha' \(from .*alpha.py\): forms\(\) names \['pgolf_eval_adpat'\], not its"
    ):
        recipe_with(tmp_path, tmp_path, "[plugins.alpha]\n")


def test_a_form_registers_only_its_hooks(tmp_path):
    forms = """
    @classmethod
    def forms(cls, config):
        return ("pgolf_rotary",)
"""
    make_plugin(tmp_path, "alpha", extra=ROTARY + forms)
    r = recipe_with(tmp_path, tmp_path, "[plugins.alpha]\n")
    pm = registry.create_manager(r, [tmp_path])
    assert sorted(h.name for h in pm.get_hookcallers(pm.get_plugin("alpha"))) == ["pgolf_rotary"]
