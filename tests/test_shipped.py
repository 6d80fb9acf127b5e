"""Promises about what ships: the recipes' resolved plugin order (snapshots), every plugin of
PR #414 can be switched off on its own, the core names no plugin, plugins import no plugin,
and the core stays within its line budget."""

from __future__ import annotations

import ast
import functools
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from pgolf_core import registry
from pgolf_core.cli import main
from pgolf_core.exporter import BUILTIN_CODECS
from pgolf_core.registry import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
SNAPSHOTS = ROOT / "tests" / "fixtures" / "plugin_order"
PR414 = ROOT / "recipes" / "pr414.toml"
BUILTIN = {name: src for name, src in registry.discover().items() if src.origin == "pgolf"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_plugin_order_snapshot(recipe, capsys, monkeypatch):
    """`pgolf plugins --order` of every shipped recipe; PGOLF_UPDATE_SNAPSHOTS=1 rewrites them."""
    monkeypatch.chdir(ROOT)
    assert main(["plugins", "--order", f"recipes/{recipe.name}"]) == 0
    out = capsys.readouterr().out
    snapshot = SNAPSHOTS / f"{recipe.stem}.txt"
    if os.environ.get("PGOLF_UPDATE_SNAPSHOTS") and (not snapshot.is_file() or snapshot.read_text() != out):
        snapshot.write_text(out)  # a change detector, not a golden: update mode writes, then still fails
        pytest.fail(f"rewrote {snapshot}: review the diff, then rerun without PGOLF_UPDATE_SNAPSHOTS")
    assert snapshot.is_file(), f"no snapshot {snapshot}: run PGOLF_UPDATE_SNAPSHOTS=1 pytest {__file__}"
    assert out == snapshot.read_text(), f"plugin order of {recipe.name} changed (PGOLF_UPDATE_SNAPSHOTS=1 updates)"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_loads_full_and_smoke(recipe):
    full, smoke = load_recipe(recipe), load_recipe(recipe, smoke=True)
    assert full.enabled_plugins == smoke.enabled_plugins  # --smoke keeps every plugin
    assert smoke.model.model_dim < full.model.model_dim or full.model.model_dim <= 128


# model_params of each record's logs (#415 has none: #414's architecture); the baseline's is tested in test_model.py.
RECORD_PARAMS = {
    "pr415": 26_993_756, "pr414": 26_993_756, "pr297": 22_368_841, "pr194": 26_502_232, "pr63": 22_174_288,
    "baseline": 17_059_912,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECORD_PARAMS))
def test_full_size_recipes_have_the_records_parameter_count(name):
    import torch

    from pgolf_core import build_model

    with torch.device("meta"):  # shapes only: no 27M-parameter init on the CPU
        model = build_model(load_recipe(ROOT / "recipes" / f"{name}.toml"))
    assert sum(p.numel() for p in model.parameters()) == RECORD_PARAMS[name]


PR414_PLUGINS = load_recipe(PR414).enabled_plugins
# Two steps, no validation, no sliding eval: enough for every plugin to act. The warmdown covers both steps so
# late_qat (threshold 0.6) switches on at step 2, and ema's decay is short so its average is not the init.
ONE_PLUGIN_OFF = [
    "train.iterations=2",
    "train.warmup_steps=0",
    "train.warmdown_iters=2",
    "train.val_loss_every=0",
    "train.train_log_every=0",
    "train.max_wallclock_seconds=0",
    "eval.max_tokens=2048",
    "eval.sliding_stride=0",
    "plugins.ema.decay=0.5",
    "plugins.late_qat.threshold=0.6",
]
# What each plugin's run line says (absent when it is off), and what switching it off must change. Parameters:
# exact counts at smoke size (bigram: 2048x128 table + scale; value_embed: 1024x128 table, 128->64 projection,
# 3 scales; smeargate: one 128-wide gate). Loss: the final-weights val_loss moves by at least LOSS_EFFECT
# (smallest measured: xsa 2.8e-4, then partial_rope 4.4e-4; 14x margin). Export plugins leave training alone
# (val_loss bit-identical) and change the artifact's format; gptq_lite is checked on an export of its own.
# The build-phase plugins by the settings line the run logs for each enabled plugin (it says the plugin is on; that it
# acts is the loss, parameter and format checks below); the others by what they report.
PLUGIN_LINE = {
    "bigram_hash": "\nbigram_hash: buckets:",
    "smeargate": "\nsmeargate: variant:",
    "ln_scale": "\nln_scale: (no settings)",
    "partial_rope": "\npartial_rope: dims:",
    "xsa": "\nxsa: last_n:",
    "value_embed": "\nvalue_embed: dim:",
    "ortho_init": "\northo_init: min_dim:",
    "ema": "ema/applied:",
    "late_qat": "late_qat/activated_step:",
    "gptq_lite": "gptq_lite/percentiles:",
    "int6_export": "int6_export/tensors:",
}
PARAMS_OWNED = {"bigram_hash": 2048 * 128 + 1, "value_embed": 1024 * 128 + 128 * 64 + 3, "smeargate": 128}
FORMAT_WITHOUT = {"int6_export": "int8_zstd"}
EXPORT_ONLY = {"int6_export", "gptq_lite"}
LOSS_EFFECT = 2e-5


def _run_pr414(out: Path, disable: list[str]) -> tuple[dict, str]:
    sets = [arg for item in ONE_PLUGIN_OFF for arg in ("--set", item)]
    flags = [arg for name in disable for arg in ("--disable", name)]
    assert main(["run", str(PR414), "--smoke", *flags, *sets, "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text()), (out / "train.log").read_text()


@pytest.fixture(scope="module")
def pr414_all_plugins(sample_cache, tmp_path_factory):
    return _run_pr414(tmp_path_factory.mktemp("pr414-all") / "run", [])


@pytest.mark.parametrize("plugin", PR414_PLUGINS)
def test_pr414_without_one_plugin_builds_trains_and_exports(plugin, pr414_all_plugins, tmp_path):
    full, full_log = pr414_all_plugins
    out = tmp_path / f"no-{plugin}"
    s, log = _run_pr414(out, [plugin])
    names = [p["name"] for p in s["plugins"]]
    assert plugin not in names and sorted(names) == sorted(set(PR414_PLUGINS) - {plugin})
    assert not load_recipe(out / "recipe.resolved.toml").plugins[plugin].enabled
    assert s["steps"] == 2 and (out / "final_model.ptz").stat().st_size == s["artifact_bytes"] - s["code_bytes"]
    assert PLUGIN_LINE[plugin] in f"\n{full_log}" and PLUGIN_LINE[plugin] not in f"\n{log}"
    assert full["model_params"] - s["model_params"] == PARAMS_OWNED.get(plugin, 0)
    assert full["artifact_format"] == "int6_zstd"
    assert s["artifact_format"] == FORMAT_WITHOUT.get(plugin, "int6_zstd")
    if plugin in EXPORT_ONLY:
        assert s["val_loss"] == full["val_loss"]  # training did not change
    else:
        assert abs(s["val_loss"] - full["val_loss"]) >= LOSS_EFFECT, f"{plugin}: {s['val_loss'] - full['val_loss']}"
    if plugin in FORMAT_WITHOUT:
        assert s["model_bytes"] > full["model_bytes"]  # int8 is bigger than int6


def test_gptq_lite_changes_the_exported_integers(tmp_path):
    """gptq_lite only changes rows whose clip exceeds the 1/31 scale floor, which two smoke steps never reach:
    export the same weights (rows up to 2 with one outlier of 8, from integer draws) with and without it."""
    import zlib

    import torch

    from pgolf_core import build_model
    from pgolf_core.exporter import deserialize
    from pgolf_core.run import export_artifact

    recipe = load_recipe(PR414, smoke=True)
    model = build_model(recipe)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randint(-64, 65, p.shape, generator=g) / 32)
                p[:, 0] = 8.0
    blobs = {}
    zlib9 = ['export.compressor="zlib"', "export.level=9"]  # zlib-9: faster than zstd-22
    for name, disable in (("with", []), ("without", ["gptq_lite"])):
        r = load_recipe(PR414, zlib9, disable=disable, smoke=True)
        path = export_artifact(r, model, tmp_path / name, log=lambda msg: None)["path"]
        blobs[name] = deserialize(zlib.decompress(Path(path).read_bytes()))["w"]
    assert blobs["with"].keys() == blobs["without"].keys()
    ints = [k for k, v in blobs["with"].items() if k.endswith(".q") and v.dtype == torch.int8]
    changed = [k for k in ints if not torch.equal(blobs["with"][k], blobs["without"][k])]
    assert len(ints) == 70 and len(changed) == 67  # every int6 matrix; the 3 int8 ones are embedding tables


def _identifiers(tree: ast.AST) -> set[str]:
    """Every name the code itself uses: variables, attributes, definitions, arguments, keywords, imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.update(node.name.split("."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(node.module.split("."))
    return names


def test_core_names_no_plugin():
    """No identifier of the core is a built-in plugin's name, module or class, and no string constant is a
    plugin's name (the codec names the artifact reader must know, e.g. "zstd", are file formats)."""
    forbidden = set(BUILTIN) | {"pgolf_plugins"}
    forbidden |= {registry.load_class(src).__name__ for src in BUILTIN.values()}
    for path in sorted((ROOT / "pgolf_core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        used = _identifiers(tree) & forbidden
        assert not used, f"{path.relative_to(ROOT)} names plugin(s) {sorted(used)}"
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        codecs = {c.name for c in BUILTIN_CODECS}
        assert not (strings & forbidden) - codecs, f"{path.relative_to(ROOT)}: {sorted(strings & forbidden)}"


def test_no_plugin_imports_another():
    allowed_roots = {"torch", "numpy", "pgolf_core", "__future__", "zstandard", "brotli"}  # codec packages

    examples = sorted((ROOT / "examples").glob("*/*/*.py"))  # third-party packages: their own modules only
    for path in sorted((ROOT / "plugins").glob("*.py")) + [p for p in examples if "tests" not in p.parts]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import (plugins may not import each other)"
                modules = [node.module or ""]
            for module in modules:
                root = module.split(".")[0]
                ok = root in allowed_roots or root in sys.stdlib_module_names
                assert ok, f"{path.name} imports {module!r}: plugins import only torch/numpy/stdlib/pgolf_core"
                # The public API is what `pgolf_core` itself exports (`pgolf_core.__all__`), not its modules.
                assert module != "pgolf_core" or isinstance(node, ast.ImportFrom), f"{path.name}: import pgolf_core"
                assert not module.startswith("pgolf_core."), f"{path.name} imports {module!r}: `from pgolf_core import`"
                if module == "pgolf_core" and isinstance(node, ast.ImportFrom):
                    import pgolf_core

                    private = [a.name for a in node.names if a.name not in pgolf_core.__all__]
                    assert not private, f"{path.name} imports {private} from pgolf_core, which does not export them"


def code_lines(path: Path) -> int:
    """Lines holding code in the `ruff format`ted file: no blank lines, comments or docstrings (the record scripts
    have few of those). Formatted first, so statements packed onto fewer lines never count as a cut."""
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=path.read_text(), capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    source = formatted.stdout
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docstrings)


# The training path: what a run executes (model, loop, optimizers, eval, export, registry, recipe, run
# directory, summary), i.e. all of pgolf_core but the data tools, the CLI front end, the authoring kit and
# `pgolf ablate`. Its
# goal is to be smaller than PR #414's train_gpt.py, which holds every technique of that record: 1,402 lines
# (1,393 code lines). It is not there yet: docs/core-size.md says where the lines go and why.
DATA_TOOLS = {"cli.py", "data/build.py", "data/fineweb.py"}
TRAINING_PATH_GOAL = 1_402
TRAINING_PATH_BUDGET = 2_675
DATA_TOOLS_BUDGET = 523
# History: one all-core budget of 3,196 code lines (training path + data tools) until issue #9, which asked for
# the two figures above. #9 cut 186 lines and added the export stack (format objects, codec registry,
# corrections), parameter roles and the setup/fit/finish split: 2,716 + 535 = 3,251, 55 over the old 3,196.
# That overrun is not paid back yet; both budgets only go down from here. Issues #10/#11 added the MLP slot,
# parallel blocks, the layer schedule and the score-first chunked evaluator (~+90) and paid for them with
# cuts (dead code, one shared final-score function for the run and `pgolf eval`, evaluators taking a
# Placement; about half of the lines came from packing long one-argument-per-line signatures). Then 2,692 ->
# 2,639: checks the recipe already makes, helpers with one caller, unused fields and parameters.
# Issue #26: the count is now taken on the `ruff format`ted source, as the rule says ("measured on formatted code,
# never on packed lines"); until then it read the files as written, and 60 lines of the training path were packed
# signatures and calls that `ruff format` unpacks. The same code (c832425) counts 2,699 formatted: that is the
# budget now, the same budget measured as the rule says, not a raise; #26's additions (preflight, zeroed-tensor report,
# overwrite set-aside, progress display) were paid for by cuts, 2,698 at its end. It only goes down from here.
# Issue #20 (core v2) added the public types and the plugin contract (Plugin, Order, Range, Tiny, Model), the
# catalog derived from its specs and the load-time plugin checks, and paid for them by merging modules (26 -> 15:
# artifact+int8 -> exporter, attention -> model, defaults -> registry, build+preflight+setup+api -> run, rundir+runlog
# +manifest -> records, roles -> types, data shards+loader+bpb -> data/tokens), removing the range and choice tables,
# the configure phase and duplicated fields (ModelSpec derives from ModelConfig): 2,689 at its end (after its review's
# fixes: typed plugin classes, forms checked at load, the settings checker reading Optional fields' ranges).
# Its second part merged the row quantizers and the code-bytes count into the exporter (an export reads 2 files),
# typed the summary's input (`records.Finished`) and took the fallbacks out of the model, paid for by cuts (one
# export writer for the run and `pgolf_core.export`, the flash-attention lookup, NamedTuples for value records,
# CORE_SECTIONS read off `Recipe`; the hook catalog's phase grouping moved to the docs generator, its one user): 2,681.
# Issue #21's byte source (BPB's bytes from per-token sidecars, every evaluator passing target positions, sidecars told
# apart from token shards, ~30 lines) was paid for by cuts made for it (the int8 format's functions into its class,
# WriteFault's message stored once, RunLog's paths, run.py's one-caller methods folded into their callers): 2,676, and
# the record-equivalent part back to 1,448.
# Issue #21's second part (the run's data guard and `document_starts`) was paid for by moving the CaseOps refusal into
# the guard and inlining `tokenizer_sha256`: 2,675. Its data tools (the leak-proof split, `--tokenizer`, `--val-docs`,
# the `pgolf data check` command's registration, a given tokenizer's BOS checked) were paid for by cuts (cli.py 128 ->
# 116, the split's record and the file check shared with the audit): data tools 529 -> 531, under the 532 landed before.
# The downloader's variants/checksums/manifest and the CaseOps build were built and tested too (394e611, 1c398b3) but
# did not fit the data-tools budget: left out. The data audit's budget is its first version's size, 198 (with the
# file hash `sha256_file`, moved from build.py so the audit and the builder share it; the data tools then 526).
# Issue #21's third part landed the downloader's variants, checksums and manifest and the CaseOps build (+37 lines)
# and paid for them with cuts: the embedded sample's module merged into build.py and `pgolf data`'s into cli.py (their
# imports), the handlers' `return 0` (main reads None as 0), the variant-name check (the repo's manifest is the
# list), one link-or-copy without a temporary name for the link, the hub manifest's count check inline, a missing text
# file's own FileNotFoundError (the CLI names it, exit 2), shorter messages; its review's fixes (a rerun keeps to the
# earlier record's commit, protobuf checked before a tokenizer is trained) were paid for by cuts too (the train-shard
# range in one check, a redundant log line): data tools 524; 523 once the sample's cache check read its manifest
# through `check.read_manifest` (the shared reader) in the re-read.


# `pgolf ablate` drives `pgolf run` in subprocesses and reads their summaries: a tool on top of a run, not
# part of it, so it has its own budget, set at its first version.
ABLATE_BUDGET = 547
# The authoring kit (`pgolf_core.testing`, the plugin contract third parties import, and `pgolf new-plugin`)
# checks and scaffolds plugins; no run executes it. Its own budget, set at its first version (issue #10).
KIT = {"testing.py", "authoring.py"}
KIT_BUDGET = 273
# Text transforms of the data preparation (CaseOps, issue #21) turn documents into what a tokenizer reads and count
# the original bytes a sidecar holds; no run executes them. Their own budget, set at their first version.
TRANSFORMS = {"data/caseops.py"}
TRANSFORMS_BUDGET = 75
# The data audit (issue #21): `pgolf data check`, the document fingerprints of a split, and the guard a run applies to
# a data directory's manifest before it trains. An audit of data, not a part of training or of making data: its own
# budget, set at its first version.
AUDIT = {"data/check.py"}
AUDIT_BUDGET = 198


@functools.cache
def core_parts() -> dict[str, int]:
    """Formatted code lines of each counted part of the core; `training` is all the rest (one definition for the
    budgets below and the size ratios)."""
    core = ROOT / "pgolf_core"
    counts = {path.relative_to(core).as_posix(): code_lines(path) for path in core.rglob("*.py")}
    parts = {
        "ablate": sum(n for name, n in counts.items() if name.startswith("ablate/")),
        "tools": sum(n for name, n in counts.items() if name in DATA_TOOLS),
        "kit": sum(n for name, n in counts.items() if name in KIT),
        "transforms": sum(n for name, n in counts.items() if name in TRANSFORMS),
        "audit": sum(n for name, n in counts.items() if name in AUDIT),
    }
    return {**parts, "training": sum(counts.values()) - sum(parts.values()), **counts}


def test_core_line_budget():
    parts = core_parts()
    training, tools, ablate, kit, transforms, audit = (
        parts[k] for k in ("training", "tools", "ablate", "kit", "transforms", "audit")
    )
    print(
        f"core code lines: training path {training} (budget {TRAINING_PATH_BUDGET}, goal {TRAINING_PATH_GOAL}), "
        f"data tools and CLI {tools} ({DATA_TOOLS_BUDGET}), ablate {ablate} ({ABLATE_BUDGET}), kit {kit} "
        f"({KIT_BUDGET}), text transforms {transforms} ({TRANSFORMS_BUDGET}), data audit {audit} ({AUDIT_BUDGET})"
    )
    assert audit <= AUDIT_BUDGET, f"the data audit has {audit} code lines > {AUDIT_BUDGET}"
    assert transforms <= TRANSFORMS_BUDGET, f"the text transforms have {transforms} code lines > {TRANSFORMS_BUDGET}"
    assert kit <= KIT_BUDGET, f"the authoring kit has {kit} code lines > {KIT_BUDGET}"
    assert training <= TRAINING_PATH_BUDGET, f"training path has {training} code lines > {TRAINING_PATH_BUDGET}"
    assert tools <= DATA_TOOLS_BUDGET, f"data tools and CLI have {tools} code lines > {DATA_TOOLS_BUDGET}"
    assert ablate <= ABLATE_BUDGET, f"pgolf_core/ablate has {ablate} code lines > {ABLATE_BUDGET}"


# The #414 record's train_gpt.py: 1,393 code lines, 282 of them its techniques and 1,111 the rest (the loop, model,
# optimizers, eval, export and data). pgolf's counterparts are the core's record-equivalent modules below, and the
# plugins pr414.toml enables; the rest of the core (public types, recipes, the plugin system, run records) has no
# counterpart in the record. Budgets at their measured values (issue #20); they only go down.
RECORD_LINES, RECORD_TECHNIQUE_LINES = 1_393, 282
RECORD_EQUIVALENT = {"model.py", "optim.py", "run.py", "evaluation.py", "exporter.py", "data/tokens.py"}
RECORD_EQUIVALENT_BUDGET = 1_448
PR414_PLUGIN_FILES = ("bigram_hash", "smeargate", "xsa", "partial_rope", "ln_scale", "value_embed", "ortho_init", "ema",
                      "qat", "int6_export", "gptq_lite")  # fmt: skip
PR414_PLUGINS_BUDGET = 894  # 975 before issue #20 (the same files at 2eeccb5, formatted)


def test_size_against_the_pr414_record():
    parts = core_parts()
    equivalent, training = sum(parts[name] for name in RECORD_EQUIVALENT), parts["training"]
    plugins = sum(code_lines(ROOT / "plugins" / f"{name}.py") for name in PR414_PLUGIN_FILES)
    assert {p for p in recipe_plugin_modules(PR414)} == set(PR414_PLUGIN_FILES), "pr414.toml enables other plugins"
    print(
        f"record-equivalent core {equivalent} lines = {equivalent / (RECORD_LINES - RECORD_TECHNIQUE_LINES):.2f} x the "
        f"record's {RECORD_LINES - RECORD_TECHNIQUE_LINES}; core {training} + pr414's plugins {plugins} = "
        f"{(training + plugins) / RECORD_LINES:.2f} x the record's {RECORD_LINES}"
    )
    assert equivalent <= RECORD_EQUIVALENT_BUDGET, f"record-equivalent core: {equivalent} > {RECORD_EQUIVALENT_BUDGET}"
    assert plugins <= PR414_PLUGINS_BUDGET, f"pr414's plugins: {plugins} > {PR414_PLUGINS_BUDGET}"


# The 23 plugins that existed before issue #20, formatted: 1,822 code lines at 2eeccb5. #20 asked for -150 by taking
# out their validation and ceremony (the settings now validate themselves). At its measured value since; it only goes
# down. A new technique's plugin is not in this list: it is budgeted by what it adds, not by this figure.
PLUGINS_OF_ISSUE_20 = ("bigram_hash", "brotli", "depth_recurrence", "ema", "gptq_lite", "int6_export", "leaky_relu2",
                       "ln_scale", "lqer", "lzma", "ortho_init", "parallel_residuals", "partial_rope", "prune", "qat",
                       "sdclip", "smeargate", "swa", "ttt_score_first", "ttt_sgd", "ttt_two_phase", "value_embed",
                       "xsa")  # fmt: skip
PLUGINS_BEFORE_ISSUE_20, PLUGINS_BUDGET = 1_822, 1_661


def test_plugin_lines():
    total = sum(code_lines(ROOT / "plugins" / f"{name}.py") for name in PLUGINS_OF_ISSUE_20)
    print(f"plugins: {total} code lines ({total - PLUGINS_BEFORE_ISSUE_20:+} since issue #20)")
    assert total <= PLUGINS_BUDGET, f"the plugins of issue #20: {total} code lines > {PLUGINS_BUDGET}"


def recipe_plugin_modules(recipe: Path) -> set[str]:
    """The module names of the plugins a recipe enables (late_qat lives in qat.py)."""
    classes = registry.plugin_classes(load_recipe(recipe).enabled_plugins, str(recipe))
    return {cls.__module__.rsplit(".", 1)[-1] for cls in classes.values()}


@pytest.mark.slow  # ~35 s; the default run keeps pr414 at smoke size in test_first_hour_run and the leave-one-out runs
def test_pr414_smoke_shows_every_plugin_acting(sample_cache, tmp_path, capsys):
    """The README's newcomer command, with a fixed step count instead of the 45 s wallclock cap so the
    result does not depend on the machine: it learns, the plugins that report show themselves acting, and the
    build-phase plugins are logged with their settings (the run logs that for every enabled plugin: that each of
    them changes the model is shown by `test_pr414_without_one_plugin_builds_trains_and_exports`, by its loss and
    parameter count)."""
    out = tmp_path / "pr414"
    fixed = ["--set", "train.max_wallclock_seconds=0", "--set", "train.iterations=100"]
    assert main(["run", str(PR414), "--smoke", *fixed, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    log = (out / "train.log").read_text()
    print(f"pr414 smoke val_bpb {s['val_bpb']:.4f} vs unigram {s['unigram_val_bpb']:.4f}")
    # It learns: 100 steps take val_bpb about 0.38 below the unigram model (the best a model that ignores
    # context can do); the bound sits at 0.15, a 2.5x margin for other CPUs.
    assert s["steps"] == 100 and s["val_bpb"] < s["unigram_val_bpb"] - 0.15
    assert [p["name"] for p in s["plugins"]] == PR414_PLUGINS_IN_ORDER
    acting = ("late_qat/activated_step:", "ema/applied:100", "gptq_lite/percentiles:", "int6_export/tensors:")
    built = (
        "\nbigram_hash: buckets:2048",
        "\nsmeargate: variant:",
        "\nln_scale: (no settings)",
        "\npartial_rope: dims:16 ",
    )
    built += ("\nxsa: last_n:4", "\nvalue_embed: dim:", "\northo_init: min_dim:64")
    for line in acting + built:
        assert line in f"\n{log}", f"{line!r} missing from the pr414 smoke log"
    assert "int6_zstd_roundtrip_exact" in log and "sliding_window_exact" in log
    assert abs(s["roundtrip_val_bpb"] - s["val_bpb"]) < 0.05
    # `pgolf eval` reads the int6 + zstd artifact back (the run's reader: int6_export's format) and scores exactly
    # what the run's round trip scored (the round-trip stage is the standard eval when sliding is on)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(PR414),
                "--smoke",
                "--set",
                "eval.sliding_stride=0",
                "--checkpoint",
                str(out / "final_model.ptz"),
            ]
        )
        == 0
    )
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("final_eval_roundtrip_exact"))
    assert float(line.split("val_bpb:")[1]) == pytest.approx(s["roundtrip_val_bpb"], abs=1e-6)


PR414_PLUGINS_IN_ORDER = [
    line.split()[1] for line in (SNAPSHOTS / "pr414.txt").read_text().splitlines() if line.strip()
]


def test_pgolf_eval_scores_a_record_style_checkpoint(sample_cache, tmp_path, capsys):
    """`pgolf eval RECIPE --checkpoint final_model.pt`: a raw state dict under the records' key names (the
    golden tests prove pgolf's #414 keys are the record's) loads strictly and is what gets scored."""
    import torch

    from pgolf_core import build_model
    from pgolf_core.run import evaluate

    sets = ["eval.max_tokens=4096", "eval.sliding_stride=0"]
    recipe = load_recipe(PR414, sets, smoke=True)
    model = build_model(recipe)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path / "final_model.pt"
    torch.save(model.state_dict(), path)
    expected = evaluate(recipe, model=model, log=lambda msg: None)["val_bpb"]
    args = ["eval", str(PR414), "--smoke", *[a for s in sets for a in ("--set", s)], "--checkpoint", str(path)]
    assert main(args) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("final_eval_roundtrip_exact"))
    assert float(line.split("val_bpb:")[1]) == pytest.approx(expected, abs=1e-8)
    fresh = evaluate(load_recipe(PR414, sets, smoke=True), log=lambda msg: None)["val_bpb"]
    assert abs(fresh - expected) > 1e-3  # the checkpoint, not the init, was scored


def test_pgolf_eval_rejects_a_checkpoint_of_another_model(sample_cache, tmp_path, capsys):
    import torch

    from pgolf_core import build_model

    path = tmp_path / "baseline.pt"
    torch.save(build_model(load_recipe(ROOT / "recipes" / "baseline.toml", smoke=True)).state_dict(), path)
    assert main(["eval", str(PR414), "--smoke", "--checkpoint", str(path)]) == 2
    assert "keys do not match" in capsys.readouterr().err
