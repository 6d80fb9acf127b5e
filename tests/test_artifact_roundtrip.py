"""An artifact written by a run is read back by `pgolf eval` through the same code path as the run's round trip,
for int8, int6 and int6 + LQER, with each codec (zlib, zstd, brotli, lzma) and with a codec added by a local
plugin file.

One tiny run per format (module fixture) with `exporter.read_artifact` wrapped by a spy: the run's round trip
and `pgolf_core.run.evaluate` of its `final_model.ptz` must both call it and get the same weights, and the
eval must score exactly the run's round trip (`eval.sliding_stride=0`: the round trip is the standard eval;
`grad_accum_steps=4`: the eval splits its batches over accumulation steps as the run does). The codecs are
checked without training again: the run's final weights are exported with each codec and read back by
`load_checkpoint`, which must give the run's own dequantized weights bit for bit (the codec only moves bytes).
"""

from __future__ import annotations

import json
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from pgolf_core import exporter
from pgolf_core.cli import main
from pgolf_core.exporter import deserialize
from pgolf_core.registry import load_recipe, plugin_parts
from pgolf_core.run import build_model, evaluate, export_artifact, load_checkpoint, load_weights, train
from pgolf_core.types import PgolfError, dump_toml
from tests.tiny import tiny

TINY = tiny(
    model__model_dim=64,
    train__train_batch_tokens=256,
    train__grad_accum_steps=4,
    train__iterations=3,
    train__warmdown_iters=2,
    eval__max_tokens=1024,
    eval__batch_tokens=512,
    eval__sliding_stride=0,
    # Every 64x64 and 64x128 matrix (and the 1024x64 embedding) is quantized, not kept float.
    export__keep_float_max_numel=1024,
)
# LQER's candidates: every quantized matrix (the default 65,536 elements would leave only the embedding).
LQER = {"min_numel": 1000}
FORMATS: dict[str, dict[str, dict]] = {
    "int8": {},
    "int6": {"int6_export": {}},
    "int6_lqer": {"int6_export": {}, "lqer": LQER},
}
TAGS = {"int8": "int8_clean_per_row_v1", "int6": "", "int6_lqer": ""}  # int6 mixed objects are untagged (the records')
# codec -> (its plugin, level, the blob's leading bytes); brotli's raw stream has none (the recipe names it).
CODECS: dict[str, tuple[str | None, int, bytes]] = {
    "zlib": (None, 9, b"\x78\xda"),  # the zlib header of level 9
    "zstd": (None, 22, b"\x28\xb5\x2f\xfd"),
    "brotli": ("brotli", 11, b""),
    "lzma": ("lzma", 9, b"\xfd7zXZ\x00"),
}
QUIET = {"log": lambda msg: None}


def recipe_for(directory: Path, plugins: dict[str, dict], extra: list[str] = (), plugin_dirs: tuple = ()) -> Any:
    path = directory / "recipe.toml"
    path.write_text(dump_toml({"plugins": plugins}))
    return load_recipe(path, TINY + list(extra), plugin_dirs=plugin_dirs)


class ReadSpy:
    """Wraps `exporter.read_artifact` (the function both the run and `load_checkpoint` call by module
    attribute) and records each call's path and returned weights."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Path, dict[str, torch.Tensor]]] = []
        real = exporter.read_artifact

        def spy(stack, path, dtypes, codec):
            weights = real(stack, path, dtypes, codec)
            self.calls.append((Path(path), weights))
            return weights

        mp.setattr(exporter, "read_artifact", spy)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not differ, f"tensors differ: {differ[:5]}"


@pytest.fixture(scope="module", params=sorted(FORMATS))
def run(request, sample_cache, tmp_path_factory) -> dict[str, Any]:
    """One tiny run of the format, then `evaluate` of its artifact, both under the spy."""
    fmt = request.param
    out = tmp_path_factory.mktemp(fmt)
    recipe = recipe_for(out, FORMATS[fmt])
    with pytest.MonkeyPatch.context() as mp:
        spy = ReadSpy(mp)
        summary = train(recipe, out / "run", interactive=False)
        run_calls = list(spy.calls)
        scored = evaluate(recipe, checkpoint=out / "run" / "final_model.ptz", **QUIET)
        eval_calls = spy.calls[len(run_calls) :]
    return {"fmt": fmt, "recipe": recipe, "out": out, "summary": summary, "scored": scored,
            "run_calls": run_calls, "eval_calls": eval_calls}  # fmt: skip


def test_pgolf_eval_reads_the_artifact_with_the_runs_reader_and_scores_its_round_trip(run):
    ptz = run["out"] / "run" / "final_model.ptz"
    ((run_path, run_weights),) = run["run_calls"]
    ((eval_path, eval_weights),) = run["eval_calls"]
    assert run_path == eval_path == ptz
    assert_same_weights(eval_weights, run_weights)
    s, scored = run["summary"], run["scored"]
    assert (scored["val_bpb"], scored["val_loss"]) == (s["roundtrip_val_bpb"], s["roundtrip_val_loss"])
    assert "sliding_val_bpb" not in scored and s["roundtrip_val_bpb"] != s["val_bpb"]  # quantization moved it
    assert s["artifact_format"] == {"int8": "int8_zlib", "int6": "int6_zlib"}.get(run["fmt"], "int6+lqer_zlib")


def test_the_artifact_is_the_format_it_claims(run):
    """The three runs write three formats: the tag, int6's 6-bit range, LQER's payload and its effect."""
    obj = deserialize(zlib.decompress((run["out"] / "run" / "final_model.ptz").read_bytes()))
    fmt = run["fmt"]
    assert obj.get(exporter.FORMAT_KEY, "") == TAGS[fmt]
    corrections = obj.get(exporter.CORRECTIONS_KEY, {})
    if fmt != "int6_lqer":
        assert corrections == {}
        return
    assert sorted(corrections) == ["lqer"] and len(corrections["lqer"]) == 3  # top_k matrices corrected
    # Without the payload the weights are the plain int6 ones: LQER changed exactly the corrected matrices.
    stack = plugin_parts(run["recipe"]).export
    dtypes = {k: v.dtype for k, v in run["run_calls"][0][1].items()}
    plain = stack.dequantize({k: v for k, v in obj.items() if k != exporter.CORRECTIONS_KEY}, dtypes)
    corrected = run["run_calls"][0][1]
    changed = sorted(k for k in plain if not torch.equal(plain[k], corrected[k]))
    assert changed == sorted(corrections["lqer"])


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_reads_back_the_runs_dequantized_weights(run, codec, tmp_path):
    plugin, level, magic = CODECS[codec]
    brotli = pytest.importorskip("brotli") if codec == "brotli" else None
    plugins = {**FORMATS[run["fmt"]], **({plugin: {}} if plugin else {})}
    recipe = recipe_for(tmp_path, plugins, [f"export.compressor={codec}", f"export.level={level}"])
    model = build_model(recipe)
    load_weights(model, torch.load(run["out"] / "run" / "final_model.pt", weights_only=True))
    got = export_artifact(recipe, model, tmp_path / "export", **QUIET)
    path = Path(got["path"])
    blob = path.read_bytes()
    assert blob.startswith(magic) and got["model_bytes"] == len(blob)
    assert got["format"] == f"{run['summary']['artifact_format'].split('_')[0]}_{codec}"
    if codec == "zlib":  # the run's own recipe and codec: the run's bytes
        assert blob == (run["out"] / "run" / "final_model.ptz").read_bytes()
    if codec == "brotli":  # a raw brotli stream of the byte-shuffled payload (PR #1089's header)
        assert brotli.decompress(blob).startswith(b"BSHF\x02")
    stack = plugin_parts(recipe).export
    run_weights = run["run_calls"][0][1]
    weights = load_checkpoint(path, stack, {k: v.dtype for k, v in run_weights.items()}, codec)
    assert_same_weights(weights, run_weights)


ROT13ZLIB = '''
"""A test codec: zlib of the reversed bytes, behind a 4-byte magic."""

import dataclasses
import zlib

from pgolf_core import Codec, Plugin, hookimpl


def decode(blob):
    assert blob[:4] == b"R13Z"
    return bytes(reversed(zlib.decompress(blob[4:])))


@dataclasses.dataclass
class Config:
    pass


class Rot13Zlib(Plugin):
    """Adds codec rot13zlib."""

    name = "rot13zlib"
    version = "0.0.1"
    order = 990
    Config = Config

    @hookimpl
    def pgolf_codecs(self):
        return [Codec("rot13zlib", lambda raw, level: b"R13Z" + zlib.compress(bytes(reversed(raw)), level),
                      decode, b"R13Z", (0, 9))]


PLUGIN = Rot13Zlib
'''


def test_a_codec_from_a_local_plugin_file_is_written_by_the_run_and_read_by_pgolf_eval(
    sample_cache, tmp_path, monkeypatch, capsys
):
    plugin_dir = tmp_path / "local"
    plugin_dir.mkdir()
    (plugin_dir / "rot13zlib.py").write_text(textwrap.dedent(ROT13ZLIB))
    recipe = tmp_path / "r.toml"
    recipe.write_text(dump_toml({"plugins": {"rot13zlib": {}}}))
    sets = [a for s in [*TINY, "export.compressor=rot13zlib", "export.level=6"] for a in ("--set", s)]
    spy = ReadSpy(monkeypatch)
    out = tmp_path / "run"
    assert main(["run", str(recipe), *sets, "--plugins-dir", str(plugin_dir), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    ptz = out / "final_model.ptz"
    assert s["artifact_format"] == "int8_rot13zlib" and ptz.read_bytes().startswith(b"R13Z")
    capsys.readouterr()
    argv = ["eval", str(recipe), *sets, "--plugins-dir", str(plugin_dir), "--checkpoint", str(ptz)]
    assert main(argv) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("final_eval_roundtrip_exact"))
    assert line.endswith(f" val_loss:{s['roundtrip_val_loss']:.8f} val_bpb:{s['roundtrip_val_bpb']:.8f}")
    (run_path, run_weights), (eval_path, eval_weights) = spy.calls
    assert run_path == eval_path == ptz
    assert_same_weights(eval_weights, run_weights)
    # Without the plugin file the recipe itself is refused: its codec is unknown, before anything is read.
    assert main(["eval", str(recipe), *sets, "--checkpoint", str(ptz)]) == 2
    assert "rot13zlib" in capsys.readouterr().err


@pytest.mark.parametrize("codec", ["brotli", "lzma"])
def test_an_artifact_of_a_codec_the_recipe_lacks_is_a_clear_error(sample_cache, codec, tmp_path, capsys):
    """A brotli artifact (no magic bytes) and an lzma one (magic bytes, but no enabled plugin knows them)
    scored with a recipe without their plugin: exit 2 with one line naming the file and the codecs tried
    (a brotli artifact also needs `[export] compressor = "brotli"`: with the plugin but zlib it is the same error)."""
    if codec == "brotli":
        pytest.importorskip("brotli")
    level = CODECS[codec][1]
    writer = recipe_for(tmp_path, {codec: {}}, [f"export.compressor={codec}", f"export.level={level}"])
    path = Path(export_artifact(writer, build_model(writer), tmp_path / "export", **QUIET)["path"])
    assert evaluate(writer, checkpoint=path, **QUIET)["tokens"] > 0  # its own recipe reads it
    tried = {"zlib, zstd": recipe_for(tmp_path, {}), f"{codec}, zlib, zstd": recipe_for(tmp_path, {codec: {}})}
    for codecs, reader in tried.items():
        if codecs != "zlib, zstd" and codec == "lzma":
            continue  # the lzma plugin enabled: its magic bytes name the codec, whatever the compressor
        with pytest.raises(PgolfError) as err:
            evaluate(reader, checkpoint=path, **QUIET)
        assert str(err.value).startswith(
            f"{path}: neither a state dict (torch.save) nor an artifact of the recipe's codecs ({codecs}) and formats:"
        )
    (tmp_path / "plain.toml").write_text("")
    capsys.readouterr()
    assert (
        main(
            ["eval", str(tmp_path / "plain.toml"), *[a for s in TINY for a in ("--set", s)], "--checkpoint", str(path)]
        )
        == 2
    )
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"pgolf: error: {path}: neither a state dict")
