"""The authoring kit: `pgolf new-plugin` writes a package that installs, is discovered and passes its own
generated tests unmodified; `--plugins-dir` loads a plugin file without packaging; the contract's
checks (`pgolf_core.testing`) catch a graph break, a recompilation and a plugin without effect."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pgolf_core import authoring
from pgolf_core.cli import main
from pgolf_core.testing import PluginContract, assert_matches_golden

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
    """The files and entry point of a generated package; the module's hook is the phase's."""
    files = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file())
    assert files == ["docs/" + name + ".md", "pyproject.toml", f"src/pgolf_{name}/__init__.py", f"tests/test_{name}.py"]
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())
    cls = "".join(part.capitalize() for part in name.split("_"))
    assert meta["project"]["entry-points"]["pgolf.plugins"] == {name: f"pgolf_{name}:{cls}"}
    module = (pkg / "src" / f"pgolf_{name}" / "__init__.py").read_text()
    assert f"def {authoring.PHASES[phase][0]}(self" in module and "@dataclass\nclass Config:" in module
    test = (pkg / "tests" / f"test_{name}.py").read_text()
    assert f'PluginContract(\n    "{name}"' in test or f'PluginContract("{name}"' in test
    assert "CONTRACT.check_all(tmp_path)" in test and "TODO" in test


SLOW = pytest.mark.slow  # train and eval: the same path as build and export, ~15 s each
PHASES = ["build", "export", pytest.param("train", marks=SLOW), pytest.param("eval", marks=SLOW)]


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
    from pgolf_core import hookimpl


    @dataclass
    class Config:
        factor: float = 0.5


    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.register_buffer("factor", torch.tensor(factor), persistent=False)

        def forward(self, y, v, x):
            return y * self.factor


    class LocalScale:
        \"\"\"Scales the attention output (a plugin file, not a package).\"\"\"

        name = "local_scale"
        version = "0.2.0"
        Config = Config

        def __init__(self, config):
            self.config = config

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
    contract = PluginContract("local_scale", settings={"factor": 0.5}, plugin_dirs=[folder])
    contract.check_config(tmp_path / "config")
    with_it, without = contract.check_effect(tmp_path / "effect")
    assert with_it["plugins"][0]["name"] == "local_scale" and with_it["val_loss"] != without["val_loss"]


# A host sync in forward: dynamo breaks the graph at `.item()`.
BREAKS = SCALE.replace("return y * self.factor", "return y * self.factor.item()")
# A Python attribute read in forward, flipped by a train hook at step 3: dynamo's guard on it fails, so the
# compiled model recompiles inside the timed loop (the bug a tensor buffer updated in place avoids).
RECOMPILES = """
    import torch
    from pgolf_core import hookimpl


    class Doubler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.on = False

        def forward(self, y, v, x):
            return y * 2.0 if self.on else y


    class LocalScale:
        name = "local_scale"

        def __init__(self, config):
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
    folder = local_plugin(tmp_path / "mine", "local_scale", SCALE)
    contract = PluginContract("local_scale", settings={"factor": 1.0}, plugin_dirs=[folder])
    with pytest.raises(AssertionError, match="local_scale: no effect on the tiny run: loss moved 0.00e"):
        contract.check_effect(tmp_path)


def test_assert_matches_golden_names_the_largest_difference():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert_matches_golden(expected + 1e-7, expected, atol=1e-6, what="gate")
    with pytest.raises(AssertionError, match=r"gate: 1 of 4 values differ by more than atol=1e-06 rtol=0; "
                       r"largest 5\.000e-01 at \(1, 0\): 3\.5 vs golden 3\.0"):
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


def test_the_tutorial_plugin_passes_the_contract(tmp_path, sample_cache):
    """docs/writing-plugins.md's plugin, as printed there, loaded with --plugins-dir: it compiles clean and acts."""
    text = (ROOT / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    code = text.split("```python\n")[1].split("```")[0]
    folder = local_plugin(tmp_path / "mine", "out_gate", code)
    contract = PluginContract("out_gate", settings={"width": 8}, plugin_dirs=[folder])
    contract.check_config(tmp_path / "config")
    contract.check_compiles(tmp_path / "compiles")
    with_it, _ = contract.check_effect(tmp_path / "effect")
    assert with_it["plugins"][0]["name"] == "out_gate"
