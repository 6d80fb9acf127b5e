"""Bad recipes, plugin settings, files and CLI values: exit 2 before anything is built or written.

Each case goes through the real CLI (`pgolf_core.cli.main`, in-process so that NUL characters and
`--set` values need no shell) and checks what the README promises a user: exit code 2, one message
naming the file and the culprit key, no traceback, and a finished run already in the target `--out`
directory left byte for byte as it was. Every case fails while the recipe loads, so the module runs
in seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import pytest

from pgolf_core.cli import build_parser, main
from pgolf_core.registry import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
BASELINE = str(ROOT / "recipes" / "baseline.toml")
PR414 = str(ROOT / "recipes" / "pr414.toml")


def _run_takes_overwrite() -> bool:
    """`--overwrite` (issue 8, section 2) replaces a finished run; pass it where the CLI has it, so
    that each case is refused for its own bad value and not because the directory holds a run."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["run", BASELINE, "--overwrite"])
        except SystemExit:
            return False
    return True


OVERWRITE = ["--overwrite"] if _run_takes_overwrite() else []


@pytest.fixture(autouse=True)
def never_train(monkeypatch):
    """Every case must fail while the recipe loads or the run sets itself up (the checks that need the world
    size, `pgolf_core.recipe.grad_accum_steps`): reaching the training loop or the final scoring is a test
    failure, so a lost check shows up as such instead of as a minute-long smoke run."""

    def reached(*args, **kwargs):
        raise AssertionError("a bad input reached training/eval instead of failing at load or setup")

    monkeypatch.setattr(importlib.import_module("pgolf_core.run").Run, "fit", reached)
    monkeypatch.setattr(importlib.import_module("pgolf_core.run"), "score", reached)


def finished_run(directory: Path) -> dict[str, bytes]:
    """A fake finished run (summary, log, weights with known bytes); returns its files' bytes."""
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text('{"val_bpb": 1.2345, "finished": true}\n')
    (directory / "train.log").write_text("step:1/1 train_loss:6.9\nfinal val_bpb:1.2345\n")
    (directory / "metrics.jsonl").write_text('{"step": 1}\n')
    (directory / "final_model.pt").write_bytes(bytes(range(256)) * 16)
    return snapshot(directory)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr+stdout of `pgolf argv`; argparse's SystemExit counts as an exit too."""
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


# (id, recipe, extra CLI arguments, strings the message must contain). The recipe file's path is
# always required in the message too, except where the recipe path itself is the culprit.
SMOKE = ["--smoke"]
CORE_CASES = [
    ("num_layers_zero", ["--set", "model.num_layers=0"], ["[model] num_layers=0", "> 0"]),
    ("model_dim_negative", ["--set", "model.model_dim=-8"], ["[model] model_dim=-8"]),
    ("num_heads_zero", ["--set", "model.num_heads=0"], ["[model] num_heads=0"]),
    ("num_kv_heads_zero", ["--set", "model.num_kv_heads=0"], ["[model] num_kv_heads=0"]),
    ("mlp_mult_zero", ["--set", "model.mlp_mult=0"], ["[model] mlp_mult=0.0"]),
    ("mlp_hidden_negative", ["--set", "model.mlp_hidden=-1"], ["[model] mlp_hidden=-1"]),
    ("vocab_size_zero", ["--set", "model.vocab_size=0"], ["[model] vocab_size=0"]),
    ("heads_not_dividing_dim", ["--set", "model.model_dim=130"], ["model_dim=130", "num_heads=4"]),
    ("kv_heads_not_dividing_heads", ["--set", "model.num_kv_heads=3"], ["num_heads=4", "num_kv_heads=3"]),
    ("odd_head_dim", ["--set", "model.model_dim=12"], ["model_dim=12", "even"]),
    ("logit_softcap_inf", ["--set", "model.logit_softcap=inf"], ["[model] logit_softcap=inf", "finite"]),
    ("logit_softcap_zero", ["--set", "model.logit_softcap=0"], ["[model] logit_softcap=0.0"]),
    ("rope_base_nan", ["--set", "model.rope_base=nan"], ["[model] rope_base=nan"]),
    ("init_std_negative", ["--set", "model.tied_embed_init_std=-0.1"], ["[model] tied_embed_init_std=-0.1"]),
    ("seq_len_zero", ["--set", "train.train_seq_len=0"], ["[train] train_seq_len=0"]),
    ("batch_tokens_negative", ["--set", "train.train_batch_tokens=-1"], ["[train] train_batch_tokens=-1"]),
    ("batch_not_whole_sequences", ["--set", "train.train_batch_tokens=1000"], ["train_batch_tokens=1000", "128"]),
    ("accum_not_dividing_batch", ["--set", "train.grad_accum_steps=3"], ["grad_accum_steps", "= 384"]),
    ("accum_negative", ["--set", "train.grad_accum_steps=-1"], ["[train] grad_accum_steps=-1"]),
    ("matrix_lr_nan", ["--set", "train.matrix_lr=nan"], ["[train] matrix_lr=nan", "finite"]),
    ("embed_lr_negative", ["--set", "train.tied_embed_lr=-0.1"], ["[train] tied_embed_lr=-0.1", ">= 0"]),
    ("beta1_one", ["--set", "train.beta1=1.0"], ["[train] beta1=1.0", "[0, 1)"]),
    ("beta2_above_one", ["--set", "train.beta2=1.5"], ["[train] beta2=1.5"]),
    ("adam_eps_zero", ["--set", "train.adam_eps=0"], ["[train] adam_eps=0.0", "> 0"]),
    ("never_stops", ["--set", "train.iterations=-1", "--set", "train.max_wallclock_seconds=0"], ["iterations=-1"]),
    ("wallclock_inf", ["--set", "train.max_wallclock_seconds=inf"], ["[train] max_wallclock_seconds=inf"]),
    ("warmup_negative", ["--set", "train.warmup_steps=-1"], ["[train] warmup_steps=-1"]),
    ("muon_momentum_one", ["--set", "train.muon_momentum=1.0"], ["[train] muon_momentum=1.0"]),
    ("seed_negative", ["--seed", "-1"], ["[run] seed=-1", "4294967295"]),
    ("seed_too_large", ["--seed", str(2**32)], ["[run] seed=4294967296"]),
    ("run_name_nul", ["--set", "run.name=a\x00b"], ["[run] name=", "NUL"]),
    ("eval_seq_len_negative", ["--set", "eval.seq_len=-1"], ["[eval] seq_len=-1"]),
    ("sliding_stride_above_seq_len", ["--set", "eval.sliding_stride=1000"], ["[eval] sliding_stride=1000", "128"]),
    ("sliding_batch_seqs_zero", ["--set", "eval.sliding_batch_seqs=0"], ["[eval] sliding_batch_seqs=0"]),
    ("eval_batch_tokens_zero", ["--set", "eval.batch_tokens=0"], ["[eval] batch_tokens=0"]),
    ("zlib_level_out_of_range", ["--set", "export.level=10"], ["[export] level=10", "0..9"]),
    ("zstd_level_zero", ["--set", 'export.compressor="zstd"', "--set", "export.level=0"], ["level=0", "1..22"]),
    (
        "codec_not_enabled",
        ["--set", 'export.compressor="brotli"'],
        ['compressor="brotli": no such codec', "zlib, zstd"],
    ),
    ("clip_quantile_zero", ["--set", "export.clip_quantile=0"], ["[export] clip_quantile=0.0", "(0, 1]"]),
    ("clip_quantile_above_one", ["--set", "export.clip_quantile=1.5"], ["[export] clip_quantile=1.5"]),
    ("artifact_limit_zero", ["--set", "export.artifact_limit_bytes=0"], ["[export] artifact_limit_bytes=0"]),
    ("train_pattern_empty", ["--set", 'data.train_pattern=""'], ["[data] train_pattern=''"]),
    ("train_pattern_absolute", ["--set", 'data.train_pattern="/tmp/x_*.bin"'], ["[data] train_pattern='/tmp/x_*.bin'"]),
    (
        "val_bytes_pattern_absolute",
        ["--set", 'data.val_bytes_pattern="/tmp/b_*.bin"'],
        ["[data] val_bytes_pattern='/tmp/b_*.bin'", "relative to data.path"],
    ),
    ("val_pattern_empty", ["--set", 'data.val_pattern=""'], ["[data] val_pattern=''"]),
    ("data_path_nul", ["--set", "data.path=/tmp/a\x00b"], ["[data] path=", "NUL"]),
]
PLUGIN_CASES = [
    ("xsa_last_n_above_layers", ["--set", "plugins.xsa.last_n=12"], ["[plugins.xsa]", "last_n=12", "0..11"]),
    ("xsa_last_n_negative", ["--set", "plugins.xsa.last_n=-1"], ["[plugins.xsa]", "last_n=-1"]),
    ("partial_rope_dims_odd", ["--set", "plugins.partial_rope.dims=15"], ["[plugins.partial_rope]", "dims=15"]),
    ("partial_rope_dims_above_head", ["--set", "plugins.partial_rope.dims=64"], ["dims=64", "head_dim 32"]),
    ("ema_decay_zero", ["--set", "plugins.ema.decay=0"], ["[plugins.ema]", "decay=0.0", "(0, 1)"]),
    ("ema_decay_one", ["--set", "plugins.ema.decay=1.0"], ["[plugins.ema]", "decay=1.0"]),
    ("ema_decay_nan", ["--set", "plugins.ema.decay=nan"], ["[plugins.ema]", "decay=nan", "finite"]),
    ("bigram_buckets_zero", ["--set", "plugins.bigram_hash.buckets=0"], ["[plugins.bigram_hash]", "buckets=0"]),
    ("bigram_dim_zero", ["--set", "plugins.bigram_hash.dim=0"], ["[plugins.bigram_hash]", "dim=0"]),
    ("value_embed_layer_out_of_range", ["--set", "plugins.value_embed.layers=[9, 11]"], ["layers=[9, 11]", "0..10"]),
    ("value_embed_layer_negative", ["--set", "plugins.value_embed.layers=[-1]"], ["[plugins.value_embed]", "[-1]"]),
    ("value_embed_dim_zero", ["--set", "plugins.value_embed.dim=0"], ["[plugins.value_embed]", "dim=0"]),
    (
        "swa_every_zero",
        ["--enable", "swa", "--disable", "ema", "--set", "plugins.swa.every=0"],
        ["[plugins.swa]", "every=0"],
    ),
    ("late_qat_threshold_zero", ["--set", "plugins.late_qat.threshold=0"], ["[plugins.late_qat]", "threshold=0.0"]),
    (
        "gptq_percentile_above_one",
        ["--set", "plugins.gptq_lite.percentiles=[1.5]"],
        ["[plugins.gptq_lite]", "percentiles"],
    ),
    ("int6_scheme_unknown", ["--set", 'plugins.int6_export.scheme="int7"'], ["[plugins.int6_export]", "scheme"]),
    ("ortho_min_dim_negative", ["--set", "plugins.ortho_init.min_dim=-1"], ["[plugins.ortho_init]", "min_dim=-1"]),
    (
        "smeargate_beta2_one",
        ["--set", "plugins.smeargate.own_adam_beta2=1.0"],
        ["[plugins.smeargate]", "own_adam_beta2"],
    ),
]


def assert_refused(code: int, text: str, expected: list[str], before: dict[str, bytes], out: Path) -> None:
    assert code == 2, text
    assert "Traceback" not in text
    assert text.startswith("pgolf: error: ") and text.count("\n") == 1, text  # one line
    for part in expected:
        assert part in text, (part, text)
    assert snapshot(out) == before


@pytest.mark.parametrize("extra, expected", [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_bad_core_value_is_refused_before_the_run_dir_is_touched(extra, expected, tmp_path):
    out = tmp_path / "done"
    before = finished_run(out)
    code, text = cli(["run", BASELINE, *SMOKE, *extra, "--out", str(out), *OVERWRITE])
    assert_refused(code, text, [BASELINE, *expected], before, out)


@pytest.mark.parametrize("extra, expected", [c[1:] for c in PLUGIN_CASES], ids=[c[0] for c in PLUGIN_CASES])
def test_bad_plugin_setting_is_refused_against_the_model(extra, expected, tmp_path):
    """pr414 --smoke: 11 layers, model_dim 128 with 4 heads (head_dim 32)."""
    out = tmp_path / "done"
    before = finished_run(out)
    code, text = cli(["run", PR414, *SMOKE, *extra, "--out", str(out), *OVERWRITE])
    assert_refused(code, text, [PR414, *expected], before, out)


def _not_utf8(tmp: Path) -> str:
    path = tmp / "latin1.toml"
    path.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    return str(path)


def _directory(tmp: Path) -> str:
    (tmp / "recipe_dir").mkdir()
    return str(tmp / "recipe_dir")


def _nul_in_file(tmp: Path) -> str:
    path = tmp / "nul.toml"
    path.write_text('[run]\nname = "a\\u0000b"\n')
    return str(path)


def _nan_in_file(tmp: Path) -> str:
    path = tmp / "nan.toml"
    path.write_text("[train]\nmatrix_lr = nan\n")
    return str(path)


FILE_CASES = [
    ("recipe_not_utf8", _not_utf8, ["latin1.toml", "UTF-8"]),
    ("recipe_is_a_directory", _directory, ["recipe_dir", "directory"]),
    ("recipe_path_with_nul", lambda tmp: str(tmp / "a\x00b.toml"), ["NUL"]),
    ("nul_in_a_name", _nul_in_file, ["nul.toml", "[run] name=", "NUL"]),
    ("nan_written_in_the_file", _nan_in_file, ["nan.toml", "[train] matrix_lr=nan"]),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
@pytest.mark.parametrize("command", ["run", "eval", "plugins"])
def test_bad_recipe_file_is_refused_by_every_command(make, expected, command, tmp_path):
    out = tmp_path / "done"
    before = finished_run(out)
    recipe = make(tmp_path)
    argv = {
        "run": ["run", recipe, "--out", str(out), *OVERWRITE],
        "eval": ["eval", recipe, "--checkpoint", str(out / "final_model.pt")],
        "plugins": ["plugins", "--order", recipe],
    }[command]
    code, text = cli(argv)
    assert_refused(code, text, expected, before, out)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["eval", PR414, "--smoke", "--set", "eval.sliding_stride=256"], ["[eval] sliding_stride=256"]),
        (["eval", PR414, "--smoke", "--set", "plugins.xsa.last_n=99"], ["[plugins.xsa]", "last_n=99"]),
        (["plugins", "--order", PR414], []),  # control: the shipped recipe is fine (exit 0 below)
    ],
    ids=["eval_bad_stride", "eval_bad_plugin", "plugins_order_ok"],
)
def test_eval_and_plugins_order_validate_the_same_way(argv, expected, tmp_path):
    out = tmp_path / "done"
    before = finished_run(out)
    if argv[0] == "eval":
        argv = [*argv, "--checkpoint", str(out / "final_model.pt")]
    code, text = cli(argv)
    if not expected:
        assert code == 0 and "xsa" in text
        return
    assert_refused(code, text, [PR414, *expected], before, out)


def test_plugins_order_names_a_bad_plugin_setting_in_the_file(tmp_path):
    recipe = tmp_path / "bad_rope.toml"
    recipe.write_text("[model]\nmodel_dim = 256\nnum_heads = 8\n\n[plugins.partial_rope]\ndims = 48\n")
    code, text = cli(["plugins", "--order", str(recipe)])
    assert code == 2 and "Traceback" not in text
    assert f"{recipe}: [plugins.partial_rope] dims=48: expected an even number >= 4" in text
    assert "<= head_dim 32" in text


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_shipped_recipes_pass_validation(recipe, smoke, tmp_path):
    """Every shipped recipe loads (plugin checks included), and its resolved form validates again."""
    r = load_recipe(recipe, smoke=smoke)
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(r.to_toml())
    assert load_recipe(resolved).to_dict() == r.to_dict()


@pytest.mark.parametrize(
    "sets, message",
    [  # torchrun's WORLD_SIZE=3 with accumulation 1: 1024 tokens are not 3 whole 128-token rows each
        (["train.train_batch_tokens=1024", "train.grad_accum_steps=1"], "world_size x grad_accum_steps = 128 x 3 x 1"),
        # `grad_accum_steps = 0` means 8 // world size (the records'): 3 processes have no such split
        (
            ["train.train_batch_tokens=3072", "train.grad_accum_steps=0"],
            "[train] grad_accum_steps=0 needs a world size dividing 8, got 3",
        ),
    ],
)
def test_the_launchers_world_size_is_checked_before_the_run_folder_is_touched(sets, message, monkeypatch, tmp_path):
    """The world size is the launcher's (torchrun's WORLD_SIZE), not the recipe's: the run's setup checks the
    batch split against it (exit 2, one line), before the run folder is claimed."""
    out = tmp_path / "done"
    before = finished_run(out)
    overrides = [x for s in ["train.train_seq_len=128", *sets] for x in ("--set", s)]
    assert load_recipe(BASELINE, ["train.train_seq_len=128", *sets], smoke=True)  # a valid recipe: one process
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, text = cli(["run", BASELINE, *SMOKE, *overrides, "--out", str(out), *OVERWRITE])
    assert_refused(code, text, [BASELINE, message], before, out)
