"""The authoring kit: `pgolf new-plugin` writes a package that installs, is discovered and passes its own
generated tests unmodified; `--plugins-dir` loads a plugin file without packaging; the contract's
checks (`pgolf_core.testing`) catch a graph break, a recompilation and a plugin without effect."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pgolf_core import authoring, registry
from pgolf_core.cli import main
from pgolf_core.testing import PluginContract, assert_matches_golden
from pgolf_core.types import PgolfError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def run_py(args: list[str], cwd: Path, site: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def generate(tmp_path: Path, name: str, phase: str, capsys) -> Path:
    assert main(["new-plugin", name, "--dir", str(tmp_path), "--phase", phase]) == 0
    out = capsys.readouterr().out
    assert f"[plugins.{name}]" in out and f"pip install -e {tmp_path / f'pgolf-{name}'}" in out
    return tmp_path / f"pgolf-{name}"


def install_and_test(tmp_path: Path, pkg: Path, name: str) -> str:
    """pip-installs `pkg` into its own folder, then lists it with `pgolf plugins` and runs its tests."""
    site = tmp_path / "site"
    pip = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(pkg)]
    done = run_py(pip, tmp_path)
    assert done.returncode == 0, done.stderr
    listed = run_py(["-m", "pgolf", "plugins"], tmp_path, site)
    assert listed.returncode == 0, listed.stderr
    assert f"{name} 0.1.0  (order 100, from pgolf-{name})" in listed.stdout
    tests = run_py(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")], tmp_path, site)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout
    return tests.stdout


def check_package(pkg: Path, name: str, phase: str) -> None:
    """The files and entry point of a generated package (it names the plugin class `<Name>Plugin`); the
    module's hook is the phase's; the golden generator stub says what to fill in and writes nothing."""
    files = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file())
    assert files == [
        f"docs/{name}.md", "pyproject.toml", f"src/pgolf_{name}/__init__.py", f"tests/test_{name}.py",
        "tools/make_golden.py",
    ]  # fmt: skip
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())
    cls = "".join(part.capitalize() for part in name.split("_")) + "Plugin"
    assert meta["project"]["entry-points"]["pgolf.plugins"] == {name: f"pgolf_{name}:{cls}"}
    module = (pkg / "src" / f"pgolf_{name}" / "__init__.py").read_text()
    assert f"def {authoring.PHASES[phase][0]}(self" in module and "@dataclass\nclass Config:" in module
    assert f"\nclass {cls}(Plugin):\n" in module and f"\nPLUGIN = {cls}\n" in module
    test = (pkg / "tests" / f"test_{name}.py").read_text()
    assert f'PluginContract(\n    "{name}"' in test or f'PluginContract("{name}"' in test
    assert "CONTRACT.check_all(tmp_path)" in test and 'Path(__file__).parent / "golden.pt"' in test
    stub = run_py(
        [str(pkg / "tools" / "make_golden.py"), "--record-script", str(pkg / "pyproject.toml"), "--pr", "1"], pkg
    )
    assert stub.returncode == 1 and "fill in RECORD_NAMES and compute() first" in stub.stderr
    assert not (pkg / "tests" / "golden.pt").exists()


SLOW = pytest.mark.slow  # export, train and eval: the same path as build (the tutorial's phase), ~15 s each
PHASES = ["build", *(pytest.param(phase, marks=SLOW) for phase in ("export", "train", "eval"))]


@pytest.mark.parametrize("phase", PHASES)
def test_generated_plugin_installs_is_listed_and_passes_its_tests(phase, sample_cache, tmp_path, capsys):
    name = f"kit_{phase}"
    pkg = generate(tmp_path, name, phase, capsys)
    check_package(pkg, name, phase)
    install_and_test(tmp_path, pkg, name)


def test_new_plugin_refuses_bad_names_and_writes_nothing(tmp_path, capsys):
    for argv, expected in [
        (["new-plugin", "Attn-Gate"], "'Attn-Gate' is not a valid plugin name; expected a lowercase Python identifier"),
        (["new-plugin", "class"], "'class' is not a valid plugin name"),
        (["new-plugin", "xsa"], "a plugin named 'xsa' is already installed (from pgolf); choose another name"),
    ]:
        assert main([*argv, "--dir", str(tmp_path)]) == 2
        assert expected in capsys.readouterr().err
    (tmp_path / "pgolf-taken").mkdir()
    assert main(["new-plugin", "taken", "--dir", str(tmp_path)]) == 2
    assert f"{tmp_path / 'pgolf-taken'} already exists; choose another name or --dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["new-plugin", "fine", "--dir", str(tmp_path), "--phase", "forward"])
    assert exc.value.code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["pgolf-taken"] and not any((tmp_path / "pgolf-taken").iterdir())


def test_recipe_table_and_docs_page(tmp_path, capsys):
    pkg = generate(tmp_path, "my_clip", "export", capsys)
    assert authoring.recipe_table("my_clip", "export") == "[plugins.int6_export]\n\n[plugins.my_clip]\npercentile = 0.9"
    doc = (pkg / "docs" / "my_clip.md").read_text()
    assert "| `percentile` | 0.9 |" in doc and "[plugins.my_clip]\npercentile = 0.9" in doc


def local_plugin(folder: Path, name: str, body: str) -> Path:
    """A plugin file for `--plugins-dir`: module `<name>.py` exporting `PLUGIN`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder


SCALE = """
    from dataclasses import dataclass

    import torch
    from pgolf_core import Plugin, Tiny, hookimpl


    @dataclass
    class Config:
        factor: float = 0.5


    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.register_buffer("factor", torch.tensor(factor), persistent=False)

        def forward(self, y, v, x):
            return y * self.factor


    class LocalScale(Plugin):
        \"\"\"Scales the attention output (a plugin file, not a package).\"\"\"

        name = "local_scale"
        version = "0.2.0"
        Config = Config
        TINY = Tiny(settings={"factor": 0.5})

        @hookimpl
        def pgolf_attention_post(self, spec, layer):
            return Scale(self.config.factor)


    PLUGIN = LocalScale
"""


def test_plugins_dir_loads_a_plugin_file_without_packaging(tmp_path, sample_cache, capsys):
    folder = local_plugin(tmp_path / "mine", "local_scale", SCALE)
    assert main(["plugins", "--plugins-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"local_scale 0.2.0  (order 100, from {folder / 'local_scale.py'})" in out
    assert "hooks:  pgolf_attention_post" in out and "config: factor=0.5" in out
    contract = PluginContract("local_scale", plugin_dirs=[folder])
    assert contract.tiny.settings == {"factor": 0.5}  # the class's TINY
    contract.check_config(tmp_path / "config")
    with_it, without = contract.check_effect(tmp_path / "effect")
    assert with_it["plugins"][0]["name"] == "local_scale" and with_it["val_loss"] != without["val_loss"]


# A host sync in forward: dynamo breaks the graph at `.item()`.
BREAKS = SCALE.replace("return y * self.factor", "return y * self.factor.item()")
# A Python attribute read in forward, flipped by a train hook at step 3: dynamo's guard on it fails, so the
# compiled model recompiles inside the timed loop (the bug a tensor buffer updated in place avoids).
RECOMPILES = """
    import torch
    from pgolf_core import Plugin, hookimpl


    class Doubler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.on = False

        def forward(self, y, v, x):
            return y * 2.0 if self.on else y


    class LocalScale(Plugin):
        name = "local_scale"
        version = "0.1.0"

        def __init__(self, config):
            super().__init__(config)
            self.made = []

        @hookimpl
        def pgolf_attention_post(self, spec, layer):
            self.made.append(Doubler())
            return self.made[-1]

        @hookimpl
        def pgolf_step_start(self, state):
            for module in self.made:
                module.on = state.step >= 3


    PLUGIN = LocalScale
"""


def test_contract_names_the_graph_break_and_where(tmp_path):
    folder = local_plugin(tmp_path / "mine", "local_scale", BREAKS)
    with pytest.raises(AssertionError) as exc:
        PluginContract("local_scale", plugin_dirs=[folder]).check_compiles(tmp_path)
    msg = str(exc.value)
    assert msg.startswith("local_scale: forward compiles to") and "graph breaks (expected 1 graph, 0 breaks)" in msg
    assert f"{folder / 'local_scale.py'}:" in msg and "(forward)" in msg


def test_contract_catches_a_recompilation_after_warm_up(tmp_path, sample_cache):
    folder = local_plugin(tmp_path / "mine", "local_scale", RECOMPILES)
    contract = PluginContract("local_scale", plugin_dirs=[folder])
    contract.check_compiles(tmp_path / "compiles")  # one graph, no break: the flag is a constant while tracing
    with pytest.raises(AssertionError, match=r"local_scale: timed step 3 \(lr_scale [0-9.]+\) recompiled the model"):
        contract.check_no_recompile(tmp_path / "recompile")


def test_contract_refuses_a_plugin_without_effect(tmp_path, sample_cache):
    folder = local_plugin(
        tmp_path / "mine", "local_scale", SCALE.replace('settings={"factor": 0.5}', 'settings={"factor": 1.0}')
    )
    contract = PluginContract("local_scale", plugin_dirs=[folder])
    with pytest.raises(AssertionError, match="local_scale: no effect on the tiny run: loss moved 0.00e"):
        contract.check_effect(tmp_path)


def test_assert_matches_golden_names_the_largest_difference():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert_matches_golden(expected + 1e-7, expected, atol=1e-6, what="gate")
    with pytest.raises(
        AssertionError,
        match=r"gate: 1 of 4 values differ by more than atol=1e-06 rtol=0; "
        r"largest 5\.000e-01 at \(1, 0\): 3\.5 vs golden 3\.0",
    ):
        assert_matches_golden(expected + torch.tensor([[0.0, 0.0], [0.5, 0.0]]), expected, atol=1e-6, what="gate")
    with pytest.raises(AssertionError, match=r"gate: shape \(4,\), golden \(2, 2\)"):
        assert_matches_golden(expected.flatten(), expected, atol=1.0, what="gate")
    with pytest.raises(AssertionError, match="gate: dtype torch.float64, golden torch.float32"):
        assert_matches_golden(expected.double(), expected, atol=1.0, what="gate")


def test_testing_module_imports_neither_pytest_nor_plugins():
    code = (
        "import sys; import pgolf_core.testing; "
        "bad = [m for m in sys.modules if m == 'pytest' or m.startswith(('pgolf_plugins', '_pytest'))]; "
        "assert not bad, bad"
    )
    done = run_py(["-c", code], ROOT)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- docs/writing-plugins.md

TUTORIAL = ROOT / "docs" / "writing-plugins.md"
EXAMPLE_GOLDEN = ROOT / "examples" / "pgolf-attn-gate" / "tests" / "golden.pt"


def tutorial_files() -> dict[str, str]:
    """The files the tutorial prints, each a ```python block whose first line is `# <its path>`."""
    text = TUTORIAL.read_text(encoding="utf-8")
    blocks = [block.split("```")[0] for block in text.split("```python\n")[1:]]
    assert all(block.startswith("# pgolf-out_gate/") for block in blocks), [b.splitlines()[0] for b in blocks]
    return {block.split("\n", 1)[0][2:]: block.split("\n", 1)[1] for block in blocks}


def top_level(code: str) -> dict[str, ast.stmt]:
    """Name -> definition of a module's classes, functions and assigned names."""
    out: dict[str, ast.stmt] = {}
    for node in ast.parse(code).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names = [t.id for t in targets if isinstance(t, ast.Name)] + [getattr(node, "name", "")]
        out.update({name: node for name in names if name})
    return out


def config_fields(code: str) -> list[str]:
    config = top_level(code)["Config"]
    assert isinstance(config, ast.ClassDef)
    return [
        node.target.id for node in config.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]


def test_the_tutorial_is_the_scaffold_filled_in_under_its_names():
    """Every file the tutorial prints is one `pgolf new-plugin out_gate --phase build` writes, and keeps its
    names: the entry point's class is the tutorial's plugin class, the module and Config fields are the
    scaffold's, the test's functions and the generator's machinery (all but `compute`) are the scaffold's."""
    scaffold = {f"pgolf-out_gate/{rel}": text for rel, text in authoring.render("out_gate", "build").items()}
    files = tutorial_files()
    rels = ("src/pgolf_out_gate/__init__.py", "tests/test_out_gate.py", "tools/make_golden.py")
    module, test, generator = (f"pgolf-out_gate/{rel}" for rel in rels)
    assert sorted(files) == sorted([module, test, generator]) and set(files) <= set(scaffold)
    entry = tomllib.loads(scaffold["pgolf-out_gate/pyproject.toml"])["project"]["entry-points"]["pgolf.plugins"]
    assert entry == {"out_gate": "pgolf_out_gate:OutGatePlugin"}
    text = TUTORIAL.read_text(encoding="utf-8")
    assert (
        'out_gate = "pgolf_out_gate:OutGatePlugin"' in text
        and "pgolf new-plugin out_gate --phase build --dir ." in text
    )
    ours, theirs = top_level(files[module]), top_level(scaffold[module])
    assert set(theirs) <= set(ours) and isinstance(ours["OutGatePlugin"], ast.ClassDef)
    assert ast.unparse(ours["PLUGIN"]) == ast.unparse(theirs["PLUGIN"])  # PLUGIN = OutGatePlugin
    assert config_fields(files[module]) == config_fields(scaffold[module]) == ["width"]
    tests = [name for name in top_level(scaffold[test]) if name.startswith("test_")]
    assert tests == ["test_contract", "test_exact_math"] and set(tests) <= set(top_level(files[test]))
    ours, theirs = top_level(files[generator]), top_level(scaffold[generator])
    same = [name for name in theirs if name not in ("compute", "RECORD_NAMES")]
    assert [name for name in same if ast.dump(ours[name]) != ast.dump(theirs[name])] == []
    record_names = ours["RECORD_NAMES"]  # filled in: what compute() takes from PR #1667's script
    assert isinstance(record_names, ast.AnnAssign) and record_names.value is not None
    assert "CausalSelfAttention" in ast.literal_eval(record_names.value)


def test_the_tutorial_prints_the_error_the_pasted_module_gives():
    """Section 7's message is the one load_class gives when the entry point names the torch module."""
    namespace: dict = {}
    exec(compile(tutorial_files()["pgolf-out_gate/src/pgolf_out_gate/__init__.py"], "out_gate", "exec"), namespace)
    source = registry.PluginSource("out_gate", "pgolf-out_gate", lambda: namespace["OutGate"], "pgolf_out_gate:OutGate")
    with pytest.raises(PgolfError) as info:
        registry.load_class(source)
    assert f"  pgolf: error: {info.value}\n" in TUTORIAL.read_text(encoding="utf-8")
    source = source._replace(load=lambda: namespace["OutGatePlugin"])  # what the scaffold's entry point names: a plugin
    assert registry.load_class(source) is namespace["OutGatePlugin"]


def write_tutorial_package(root: Path) -> Path:
    """`pgolf new-plugin out_gate --phase build` in `root`, its files replaced by the tutorial's, and the
    golden file copied as the tutorial's `cp` does."""
    authoring.new_plugin("out_gate", root, "build", log=lambda msg: None)
    for path, text in tutorial_files().items():
        (root / path).write_text(text)
    shutil.copy(EXAMPLE_GOLDEN, root / "pgolf-out_gate" / "tests" / "golden.pt")
    return root / "pgolf-out_gate"


def test_the_tutorial_golden_test_passes_from_any_folder_with_the_record_width(tmp_path, monkeypatch):
    """The exact-math test as printed, run from another folder: it finds golden.pt next to itself and
    matches PR #1667's gate (width 12) within its tolerance."""
    pkg = write_tutorial_package(tmp_path)
    monkeypatch.syspath_prepend(str(pkg / "src"))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("tutorial_test_out_gate", pkg / "tests" / "test_out_gate.py")
    assert spec is not None and spec.loader is not None
    test_module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(test_module)
        assert tuple(test_module.GOLDEN["cases"]["out_gate"]["weight"].shape) == (4, 12)  # the record's width
        test_module.test_exact_math()
    finally:
        sys.modules.pop("pgolf_out_gate", None)


def test_the_tutorial_plugin_passes_the_contract(tmp_path, sample_cache):
    """docs/writing-plugins.md's plugin, as printed there, loaded with --plugins-dir: it compiles clean and acts."""
    code = tutorial_files()["pgolf-out_gate/src/pgolf_out_gate/__init__.py"]
    folder = local_plugin(tmp_path / "mine", "out_gate", code)
    contract = PluginContract("out_gate", plugin_dirs=[folder])
    assert contract.tiny.settings == {"width": 12}  # the tutorial's TINY
    contract.check_config(tmp_path / "config")
    contract.check_compiles(tmp_path / "compiles")
    with_it, without = contract.check_effect(tmp_path / "effect")
    assert with_it["plugins"][0]["name"] == "out_gate"
    assert with_it["model_params"] - without["model_params"] == 4 * 4 * 12  # layers x heads x width


@SLOW
def test_the_tutorial_package_installs_and_passes_its_tests(tmp_path, sample_cache):
    """The tutorial's package as a user ends it: pip-installed, listed with the tutorial's order, its
    contract and golden test passing when pytest runs from another folder."""
    pkg = write_tutorial_package(tmp_path / "work")
    site = tmp_path / "site"
    pip = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(pkg)]
    assert (done := run_py(pip, tmp_path)).returncode == 0, done.stderr
    listed = run_py(["-m", "pgolf", "plugins"], tmp_path, site)
    assert "out_gate 0.1.0  (order 60, from pgolf-out_gate)  Per-head attention output gate" in listed.stdout
    tests = run_py(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")], tmp_path, site)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout[-4000:] + tests.stderr[-2000:]
