"""Regenerate every golden fixture in tests/fixtures/*.pt from the records' own code, and stamp it.

pgolf matches these fixtures bit-exactly, so they must come from the records and never from pgolf:
this script imports each record's `train_gpt.py` from a path the user gives (a clone of
openai/parameter-golf; the record code is never copied into this repository), runs the record's
functions on the inputs the tests build (integer draws, or inputs stored in the fixture), and writes
the outputs with a `provenance` stamp: the records used (PR, folder, sha256 of the script, commit if
given), the torch version and the CPU capability (`torch.backends.cpu.get_cpu_capability()`).

    python tools/make_goldens.py \\
        --record-script baseline=PG/records/track_10min_16mb/2026-03-17_NaiveBaseline/train_gpt.py \\
        --record-script pr63=PG/records/track_10min_16mb/2026-03-19_Seq2048_FP16Emb_TunedLR/train_gpt.py \\
        --record-script pr194=PATH/TO/PR194/records/track_10min_16mb/2026-03-20_11L_SmearV2_SWA/train_gpt.py \\
        --record-script pr414=PG/records/track_10min_16mb/2026-03-22_11L_EMA_GPTQ-lite_.../train_gpt.py \\
        [--commit pr194=343081c5...] [--check] [--only pr414_golden]

`--check` writes nothing: it regenerates and compares every value (stamps aside) with the committed
fixture, bit for bit, and exits 1 on any difference. PR #194's folder is on its PR head (343081c5),
not on main.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from tests import test_artifact as artifact_tests  # noqa: E402
from tests.plugins import golden as golden_helpers  # noqa: E402
from tests.plugins import test_export_plugins as export_tests  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/, attribute the script must have)
    "baseline": ("openai/parameter-golf naive baseline", "2026-03-17_NaiveBaseline", "quantize_state_dict_int8"),
    "pr63": ("#63", "2026-03-19_Seq2048_FP16Emb_TunedLR", "GPT"),
    "pr194": ("#194", "2026-03-20_11L_SmearV2_SWA", "quantize_state_dict_int6"),
    "pr414": ("#414", "2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233", "mixed_quantize_int6"),
}
NEEDS = {  # fixture -> records it is made from
    "int8_golden": ["baseline"],
    "export_golden": ["pr414", "pr194", "pr63"],
    "pr63_golden": ["pr63"],
    "pr194_golden": ["pr194"],
    "pr414_golden": ["pr414"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp(generator: str, fixture: str, records: dict, names: list[str], scripts: dict, commits: dict) -> dict:
    """The stamp every fixture carries (checked by tests/test_goldens_provenance.py): the generator,
    each record script it read (PR, folder, sha256, commit), the torch version and CPU capability.
    `records` maps a name to its (PR, folder); both golden generators use this."""
    return {
        "fixture": fixture,
        "generator": generator,
        "records": {
            name: {
                "pr": records[name][0],
                "folder": f"records/track_10min_16mb/{records[name][1]}",
                "script_sha256": sha256(scripts[name]),
                "commit": commits.get(name, ""),
            }
            for name in names
        },
        "torch": str(torch.__version__),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def provenance(fixture: str, scripts: dict[str, Path], commits: dict[str, str]) -> dict:
    return stamp("tools/make_goldens.py", fixture, RECORDS, list(NEEDS[fixture]), scripts, commits)


# ------------------------------------------------------------------ int8 (baseline exporter)


def make_int8(mods: dict[str, ModuleType]) -> dict:
    """The baseline's `quantize_state_dict_int8` per case. The inputs are stored: they come from
    torch.randn, whose bits depend on the CPU's vector path, so once stored they are reused from the
    committed fixture (the same inputs on every machine); `make_inputs` only fills a missing case."""
    rec = mods["baseline"]
    path = FIXTURES / "int8_golden.pt"
    stored = torch.load(path, weights_only=True) if path.is_file() else {}
    out: dict = {}
    for case, keep in artifact_tests.CASES.items():
        inputs = stored.get(case, {}).get("inputs") or artifact_tests.make_inputs(case)
        rec.INT8_KEEP_FLOAT_MAX_NUMEL = keep
        obj, stats = rec.quantize_state_dict_int8(inputs)
        deq = rec.dequantize_state_dict_int8(obj)
        out[case] = {
            "fingerprint": artifact_tests.fingerprint(inputs),
            "obj": obj,
            "stats": stats,
            "dequantized": {k: artifact_tests.fingerprint({k: v}) for k, v in deq.items()},
            "inputs": inputs,
        }
    return out


# ------------------------------------------------------------------ export (records' int6/int8)


def make_export(mods: dict[str, ModuleType]) -> dict:
    digests = export_tests.digests
    r414, r194, r63 = mods["pr414"], mods["pr194"], mods["pr63"]
    out: dict = {"torch": str(torch.__version__), "inputs": {}}
    cases = []
    for w in export_tests.gptq_case_inputs():
        q, s = r414.quantize_int6_per_row(w)
        cases.append({"q": q, "s": s})
    out["gptq_cases"] = cases
    sd = export_tests.make_weights(export_tests.SPECS_414, 414)
    out["inputs"]["mixed"] = digests(sd)
    result, meta = r414.mixed_quantize_int6(sd, {"mlp", "attn"})
    deq = r414.dequantize_mixed_int6(result, meta, sd)
    out["mixed"] = {"meta": meta, "order": list(result), "w": digests(result), "dequantized": digests(deq)}
    for case, rec, quant, dequant, kwargs in (
        ("all194", r194, "quantize_state_dict_int6", "dequantize_state_dict_int6", {"fp16_names": {"tok_emb.weight"}}),
        ("all63", r63, "quantize_state_dict_int8", "dequantize_state_dict_int8", {}),
    ):
        sd = export_tests.make_weights(export_tests.SPECS_ALL, int(case[3:]))
        out["inputs"][case] = digests(sd)
        res = getattr(rec, quant)(sd, **kwargs)
        obj = res[0] if isinstance(res, tuple) else res
        out[case] = {
            "format": obj["__quant_format__"],
            "order": {k: list(obj[k]) for k in ("quantized", "scales", "passthrough")},
            **{k: digests(obj[k]) for k in ("quantized", "scales", "passthrough")},
            **{k: obj.get(k) for k in ("dtypes", "qmeta", "passthrough_orig_dtypes")},
            "dequantized": digests(getattr(rec, dequant)(obj)),
        }
    return out


# ------------------------------------------------------------------ record models (forward)


def _small_kwargs(rec: ModuleType) -> dict:
    h = rec.Hyperparameters
    return dict(
        vocab_size=128,
        model_dim=128,
        num_heads=4,
        num_kv_heads=2,
        tie_embeddings=h.tie_embeddings,
        tied_embed_init_std=h.tied_embed_init_std,
        logit_softcap=h.logit_softcap,
        rope_base=h.rope_base,
        qk_gain_init=h.qk_gain_init,
    )


def build_pr63(rec: ModuleType) -> torch.nn.Module:
    return rec.GPT(num_layers=10, mlp_hidden=336, **_small_kwargs(rec))


def build_pr194(rec: ModuleType) -> torch.nn.Module:
    return rec.GPT(num_layers=11, mlp_mult=3, smear_gate=True, bigram_hash=False, **_small_kwargs(rec))


def build_pr414(rec: ModuleType) -> torch.nn.Module:
    return rec.GPT(
        num_layers=11,
        mlp_mult=3,
        bigram_vocab_size=64,
        bigram_dim=32,
        xsa_last_n=4,
        rope_dims=16,
        ln_scale=True,
        ve_enabled=True,
        ve_dim=32,
        ve_layers="9,10",
        **_small_kwargs(rec),
    )


def _qat_on(name: str, rec: ModuleType, model: torch.nn.Module, on: bool) -> None:
    """Each record's own QAT switch (a global flag, a per-module flag, a class flag)."""
    if name == "pr63":
        rec._QAT_ENABLED = on
    elif name == "pr194":
        rec._QAT_QUANT_BITS = rec.Hyperparameters.quant_bits
        for m in model.modules():
            if isinstance(m, rec.CastedLinear):
                m._qat = on
    else:
        rec.CastedLinear._qat_enabled = on


def make_record_model(name: str, build: Callable, seed: int, randomize: Callable) -> Callable:
    def make(mods: dict[str, ModuleType]) -> dict:
        rec = mods[name]
        torch.manual_seed(0)
        model = build(rec)
        model.load_state_dict(randomize(model.state_dict(), seed), strict=True)
        out: dict = {"keys": sorted(model.state_dict())}
        g = torch.Generator().manual_seed(1)
        shapes = {128: (2, 128), 2048: (1, 2048)}
        tokens = {}
        for T, shape in shapes.items():
            tokens[T] = (torch.randint(0, 128, shape, generator=g), torch.randint(0, 128, shape, generator=g))
        model.eval()
        for T, (x, y) in tokens.items():
            with torch.no_grad():  # key order as in the first fixtures
                if not hasattr(model, "forward_logits"):  # PR #63 exposes only its loss
                    out[f"row_losses{T}"] = torch.stack([model(x[i : i + 1], y[i : i + 1]) for i in range(x.size(0))])
                out[f"x{T}"], out[f"y{T}"] = x.to(torch.int16), y.to(torch.int16)
                out[f"loss{T}"] = model(x, y)
                if hasattr(model, "forward_logits"):
                    logits = model.forward_logits(x)
                    out[f"logits{T}"] = logits if T == 128 else logits[:, ::32].contiguous()
                    out[f"logsumexp{T}"] = torch.logsumexp(logits, -1)
            if T == 128:
                _qat_on(name, rec, model, True)
                model.train()
                with torch.no_grad():
                    out["qat_train_loss128"] = model(x, y)
                _qat_on(name, rec, model, False)
                model.eval()
        return out

    return make


def legacy_randomize(state_dict: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The torch.randn weights the first fixtures used (bits depend on the CPU's vector path); kept
    only so that `--check --legacy-weights` can show this script reproduces those fixtures."""
    import math

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        r = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if t.ndim >= 2 and "resid_mix" not in name and "skip_weights" not in name:
            r = r / math.sqrt(t.shape[-1])
        else:
            r = 0.3 * r + (1.0 if name.endswith(("attn_scale", "mlp_scale", "q_gain", "skip_weights")) else 0.0)
        out[name] = r.to(t.dtype)
    return out


def makers(randomize: Callable) -> dict[str, Callable]:
    return {
        "int8_golden": make_int8,
        "export_golden": make_export,
        "pr63_golden": make_record_model("pr63", build_pr63, 63, randomize),
        "pr194_golden": make_record_model("pr194", build_pr194, 194, randomize),
        "pr414_golden": make_record_model("pr414", build_pr414, 414, randomize),
    }


# ------------------------------------------------------------------ comparison and CLI


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Bit-exact comparison (tensors: dtype, shape, bytes); returns the paths that differ."""
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return [where]
        same = torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))
        return [] if same else [where]
    if isinstance(b, dict):
        if not isinstance(a, dict) or list(a) != list(b):
            return [f"{where} keys {list(a)[:5] if isinstance(a, dict) else type(a)} != {list(b)[:5]}"]
        return [d for k in b for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def name_pairs(values: list[str], flag: str, names: Iterable[str]) -> dict[str, str]:
    """`NAME=VALUE` command-line pairs, NAME one of `names` (the record scripts a generator knows)."""
    out, names = {}, list(names)
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"{flag} {v!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
        out[name] = rest
    return out


def golden_parser(description: str, out: Path) -> argparse.ArgumentParser:
    """The command line every fixture generator shares: record scripts, their commits, --check, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--record-script", action="append", default=[], metavar="NAME=PATH", help="a record's train_gpt.py")
    ap.add_argument("--commit", action="append", default=[], metavar="NAME=SHA", help="source commit, for the stamp")
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture(s); write nothing")
    ap.add_argument("--out", type=Path, default=out)
    return ap


def check_or_write(data: dict, path: Path, check: bool, generator: str, records: dict, names: list[str],
                   scripts: dict, commits: dict) -> bool:  # fmt: skip
    """`--check`: compare `data` with the fixture at `path` (stamps aside; a forward may differ in the last
    bits on another CPU capability, said so) and return whether it differs. Else stamp, write, say the size."""
    fixture = path.stem
    if check:
        old = torch.load(path, weights_only=False)
        made_on, here = old.pop("provenance", {}).get("cpu_capability"), torch.backends.cpu.get_cpu_capability()
        if made_on and made_on != here:
            print(f"{fixture}: made on {made_on}, checked on {here}: record forwards may differ in the last bits")
        diff = differences(data, old, fixture)
        print(f"{fixture}: {'bit-identical' if not diff else 'DIFFERS at ' + '; '.join(diff[:5])}")
        return bool(diff)
    data["provenance"] = stamp(generator, fixture, records, names, scripts, commits)
    torch.save(data, path)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size:,} bytes)")
    return False


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    return name_pairs(values, flag, RECORDS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", action="append", default=[], metavar="NAME=PATH", help="a record's train_gpt.py")
    ap.add_argument("--commit", action="append", default=[], metavar="NAME=SHA", help="source commit, for the stamp")
    ap.add_argument("--only", action="append", choices=list(NEEDS), help="regenerate these fixtures only")
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures; write nothing")
    ap.add_argument("--legacy-weights", action="store_true", help="the first fixtures' torch.randn record weights")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args(argv)
    scripts = {k: Path(v) for k, v in _pairs(args.record_script, "--record-script").items()}
    commits = _pairs(args.commit, "--commit")
    wanted = args.only or list(NEEDS)
    missing = sorted({r for f in wanted for r in NEEDS[f]} - set(scripts))
    if missing:
        raise SystemExit(f"missing --record-script for {', '.join(missing)} (needed by {', '.join(wanted)})")
    mods = {name: load_record(path, RECORDS[name][2]) for name, path in scripts.items()}
    make = makers(legacy_randomize if args.legacy_weights else golden_helpers.randomize)
    failed = False
    for fixture in wanted:
        data = make[fixture](mods)
        path = args.out / f"{fixture}.pt"
        if args.check:
            old = torch.load(path, weights_only=False)
            made_on = old.pop("provenance", {}).get("cpu_capability")
            here = torch.backends.cpu.get_cpu_capability()
            if made_on and made_on != here:  # record forwards round differently per dispatch; exporters do not
                print(f"{fixture}: made on {made_on}, checked on {here}: record forwards may differ in the last bits")
            if fixture == "int8_golden" and not all("inputs" in old[c] for c in old):
                data = {c: {k: v for k, v in d.items() if k != "inputs"} for c, d in data.items()}
            diff = differences(data, old, fixture)
            failed |= bool(diff)
            print(f"{fixture}: {'bit-identical' if not diff else 'DIFFERS at ' + '; '.join(diff[:5])}")
        else:
            data["provenance"] = provenance(fixture, scripts, commits)
            torch.save(data, path)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
