"""The command line a researcher meets in the first hour (issue #26): `pgolf eval RUN_DIR` scoring a run with
the run's own resolved recipe, a checkpoint of another width named by its shapes, flag errors that name the
flag, `--set` keys without a section, `pgolf --version` and `pgolf run --dry-run`.

Two kinds of run folder: one written by hand from a real model (its state dict, as a run saves
`final_model.pt`, and its recipe's TOML) for the fast tests, and one real run (slow) whose `summary.json` the
eval must reproduce. Both are baseline `--smoke` with bigram_hash, as pr414's smoke artifact that the issue
could not score, on 2 layers: 128 wide where the recipe file says 512, and bigram_hash projects its 128-wide
table to the model width only when the two differ.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from pgolf_core import build_model
from pgolf_core.cli import main
from pgolf_core.records import default_out
from pgolf_core.registry import load_recipe
from pgolf_core.run import evaluate
from pgolf_core.types import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BASELINE = str(ROOT / "recipes" / "baseline.toml")
SMALL = ["model.num_layers=2", "train.iterations=2", "train.warmup_steps=0", "train.val_loss_every=0"]
SMALL += ["eval.max_tokens=1024"]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def score_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("final_eval_roundtrip_exact "))


def exact(s: dict, prefix: str) -> str:
    return f"final_eval_roundtrip_exact val_loss:{s[prefix + 'val_loss']:.8f} val_bpb:{s[prefix + 'val_bpb']:.8f}"


@pytest.fixture(scope="module")
def smoke_run(sample_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("first-hour") / "run"
    argv = ["run", BASELINE, "--smoke", "--enable", "bigram_hash", *sets(SMALL), "--out", str(run)]
    assert main(argv) == 0
    return run, json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def hand_made_run(sample_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A folder as a finished run leaves it, for eval's purposes: the resolved recipe and the raw weights
    (perturbed, so that a score of fresh weights would differ). Returns it and `evaluate`'s scores."""
    recipe = load_recipe(BASELINE, SMALL, enable=["bigram_hash"], smoke=True)
    model = build_model(recipe)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    run = tmp_path_factory.mktemp("hand-made") / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "final_model.pt")
    (run / "recipe.resolved.toml").write_text(recipe.to_toml())
    scores = evaluate(recipe, model=model, log=lambda msg: None)
    return run, {"val_loss": scores["val_loss"], "val_bpb": scores["val_bpb"]}


def test_eval_of_a_checkpoint_in_a_run_folder_needs_no_recipe(hand_made_run, capsys):
    run, scores = hand_made_run
    capsys.readouterr()
    assert main(["eval", str(run / "final_model.pt")]) == 0
    assert score_line(capsys.readouterr().out) == exact(scores, "")
    assert main(["eval", "--checkpoint", str(run / "final_model.pt")]) == 0
    assert score_line(capsys.readouterr().out) == exact(scores, "")


def test_a_checkpoint_of_another_width_names_the_shapes_and_the_way_out(hand_made_run, capsys):
    """The issue's case: a smoke checkpoint scored with the full-size recipe. It used to say only
    `missing ['bigram.proj.weight']`; now the widths come first, the keys after, then the command that works."""
    run, _ = hand_made_run
    pt = run / "final_model.pt"
    argv = ["eval", BASELINE, "--enable", "bigram_hash", *sets(["model.num_layers=2"]), "--checkpoint", str(pt)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pgolf: error: {pt}: ") and err.count("\n") == 1
    assert "tensors have other shapes than the recipe's model (" in err
    assert "tok_emb.weight: checkpoint (1024, 128) vs model (1024, 512)" in err
    assert "keys do not match: missing ['bigram.proj.weight'], unexpected [] (1 missing, 0 unexpected)" in err
    assert err.endswith(f"recipe.resolved.toml rebuilds its model: pgolf eval {run}\n")


def test_eval_refuses_smoke_on_a_run_and_names_what_a_folder_lacks(hand_made_run, tmp_path, capsys):
    run, _ = hand_made_run
    assert main(["eval", str(run), "--smoke"]) == 2
    assert capsys.readouterr().err == (
        f"pgolf: error: --smoke: {run / 'recipe.resolved.toml'} already holds the run's settings, smoke ones "
        "included; drop --smoke\n"
    )
    no_recipe = tmp_path / "no_recipe"
    no_recipe.mkdir()
    shutil.copy(run / "final_model.pt", no_recipe)
    assert main(["eval", str(no_recipe / "final_model.pt")]) == 2
    assert capsys.readouterr().err == (
        f"pgolf: error: {no_recipe}: not a run directory, no recipe.resolved.toml (every finished run writes one); "
        f"score with the recipe it was trained with: pgolf eval RECIPE --checkpoint {no_recipe / 'final_model.pt'}\n"
    )
    assert main(["eval", str(run)]) == 2  # a folder without final_model.ptz
    assert capsys.readouterr().err == f"pgolf: error: {run / 'final_model.ptz'}: checkpoint not found\n"


@pytest.mark.slow
def test_eval_of_a_run_folder_uses_its_resolved_recipe_and_reproduces_its_score(smoke_run, capsys):
    """No recipe and no --smoke: the folder's recipe.resolved.toml holds the smoke width, the --set values and
    the plugin; the score is the run's own round trip, to the last printed digit."""
    run, s = smoke_run
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert score_line(capsys.readouterr().out) == exact(s, "roundtrip_")
    assert main(["eval", str(run / "final_model.ptz")]) == 0
    assert score_line(capsys.readouterr().out) == exact(s, "roundtrip_")
    assert main(["eval", str(run), "--checkpoint", str(run / "final_model.pt")]) == 0  # the weights before export
    assert score_line(capsys.readouterr().out) == exact(s, "")
    # --set still applies on top of the run's recipe (here: half the validation tokens, another score)
    assert main(["eval", str(run), "--set", "eval.max_tokens=512"]) == 0
    assert score_line(capsys.readouterr().out) != exact(s, "roundtrip_")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval"], "pgolf eval: expected a run folder, a checkpoint inside one, or RECIPE --checkpoint FILE"),
        (["eval", BASELINE], "pgolf eval: expected a run folder, a checkpoint inside one, or RECIPE --checkpoint FILE"),
        (
            ["eval", __file__, "--checkpoint", "b.pt"],
            f"pgolf eval {__file__} --checkpoint b.pt: two checkpoints; give one",
        ),
    ],
)
def test_eval_without_something_to_score_says_what_it_takes(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"pgolf: error: {message}\n"


def test_eval_help_says_a_run_folder_brings_its_recipe(capsys):
    with pytest.raises(SystemExit) as done:
        main(["eval", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert "pgolf eval RUN_DIR reads RUN_DIR/recipe.resolved.toml" in text
    assert "RUN_DIR/final_model.ptz" in text and "pgolf eval RECIPE --checkpoint FILE" in text


def test_enable_of_an_unknown_plugin_names_the_flag():
    """As --disable does; the recipe file is not where the mistake is."""
    with pytest.raises(RecipeError) as err:
        load_recipe(BASELINE, enable=["xsaa"])
    assert str(err.value).startswith("--enable xsaa: [plugins.xsaa] unknown plugin 'xsaa' (did you mean \"xsa\"?);")
    with pytest.raises(RecipeError, match=r"^--disable xsaa: plugin 'xsaa' is not in .*baseline.toml$"):
        load_recipe(BASELINE, disable=["xsaa"])


def test_enable_error_from_the_command_line(capsys):
    assert main(["run", BASELINE, "--enable", "xsaa", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("pgolf: error: --enable xsaa: [plugins.xsaa] unknown plugin 'xsaa'")


SECTIONS = "['run', 'model', 'train', 'eval', 'export', 'data', 'plugins']"


@pytest.mark.parametrize(
    "item, hint",
    [
        ("iterations=5", ' (did you mean "train.iterations"?)'),
        ("trian.iterations=5", ' (did you mean "train.iterations"?)'),
        ("seq_len=64", ' (did you mean "eval.seq_len"?)'),
        ("model_dim=256", ' (did you mean "model.model_dim"?)'),
        ("train=5", ""),  # a section alone: no key to look for
        ("train..iterations=5", ' (did you mean "train.iterations"?)'),
        ("train.iterations", ""),  # the key is right, the value is missing
    ],
)
def test_a_set_key_without_a_section_gets_the_full_dotted_key(item, hint):
    with pytest.raises(RecipeError) as err:
        load_recipe(BASELINE, [item])
    assert str(err.value) == f"--set {item}: expected section.key=value, the section one of {SECTIONS}{hint}"


def test_set_errors_inside_a_plugin_table_still_blame_the_set():
    with pytest.raises(RecipeError) as err:
        load_recipe(BASELINE, ["plugins.xsaa.last_n=2"])
    assert "[plugins.xsaa] unknown plugin 'xsaa' (did you mean \"xsa\"?)" in str(err.value)
    assert str(err.value).endswith(" (from --set plugins.xsaa.last_n=2)")


def test_version_prints_the_installed_distributions_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"pgolf {metadata.version('pgolf')}\n"


def test_dry_run_prints_the_resolved_recipe_and_folder_and_writes_nothing(sample_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["run", BASELINE, "--smoke", "--enable", "bigram_hash", "--set", "train.iterations=7", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = load_recipe(BASELINE, ["train.iterations=7"], enable=["bigram_hash"], smoke=True)
    # the folder the run would use (its name encodes the toggles), then the recipe it would record
    assert out.splitlines()[0] == f"# Dry run: nothing trained or written. Run folder: {default_out(expected)}"
    assert str(default_out(expected)).startswith("runs/baseline-smoke-with-bigram_hash-set-")
    assert "# hook order: bigram_hash " in out
    assert tomllib.loads(out) == expected.to_dict()
    assert tomllib.loads(out)["train"]["iterations"] == 7 and tomllib.loads(out)["model"]["model_dim"] == 128
    assert list(tmp_path.iterdir()) == []
    # --out wins, and is not created either
    assert main(["run", BASELINE, "--dry-run", "--out", str(tmp_path / "mine")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"Run folder: {tmp_path / 'mine'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_plugins_dir_that_does_not_exist_is_refused_before_anything_is_written(command, tmp_path, capsys):
    """`--plugins-dir` naming no folder (a typo) is exit 2 naming it, before a run folder exists: its plugins would
    otherwise silently not load (and a recipe without plugin tables would train without them)."""
    out, missing = tmp_path / "out", tmp_path / "no-such-plugins"
    argv = [command, "recipes/baseline.toml", "--smoke", "--plugins-dir", str(missing)]
    argv += ["--out", str(out)] if command == "run" else ["--checkpoint", str(tmp_path / "x.pt")]
    assert main(argv) == 2
    assert f"--plugins-dir {missing}: not a directory" in capsys.readouterr().err
    assert not out.exists()


def test_eval_of_a_path_that_does_not_exist_names_it(tmp_path, capsys):
    """A typo in the run folder is named as such, not blamed on its parent folder (found in review)."""
    missing = tmp_path / "runs" / "nonexistent-seed1337"
    assert main(["eval", str(missing)]) == 2
    assert f"pgolf eval {missing}: no such run folder or checkpoint" in capsys.readouterr().err
