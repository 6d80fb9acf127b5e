"""Regenerate tests/fixtures/export_later_golden.pt from the later records' own export code, and stamp it.

The fixture holds what the records' LQER (PR #1797, the same code in #1851), byte-shuffle + brotli
(PR #1089, and PR #1204's header) and lzma (PR #549, #1019) produce on small inputs; pgolf's lqer,
brotli and lzma plugins must match it (tests/plugins/test_later_export.py). The record scripts are
read from paths the user gives (checkouts of openai/parameter-golf at the PR heads below; no record
code is copied into this repository) and are never run: only the functions named here are taken
from each script's syntax tree and defined in a namespace of their own (the scripts' top-level
imports of flash-attn and triton are not executed, so nothing needs stubbing), and for the codecs
the script's own export statements, from `... = buf.getvalue()` to the final `brotli.compress` /
`lzma.compress` of `main()`, are executed on the fixture's raw bytes (and PR #1797's and #1851's
`_compress`/`_decompress` are checked to give PR #1089's bytes). PR #1089's script is an lzma +
base85 shim; its code is decompressed (never executed) first.

    R=PG/records/track_10min_16mb  # each file as of its PR head below (git show SHA:PATH > FILE)
    python tools/make_export_goldens.py \\
      --record-script lqer=$R/2026-04-24_PR1787Base_Smear_LQERAsym_PhasedTTT_1.06157/train_gpt.py \\
      --record-script lqer1851=$R/2026-04-27_SmearGateBOSFix_PR1787Base_LQERAsym_PhasedTTT/train_gpt.py \\
      --record-script brotli=$R/2026-03-28_TurboMuon_EngramLite_ParamBanking/train_gpt.py \\
      --record-script brotli1204=$R/2026-03-31_ParallelResiduals_MiniDepthRecurrence/train_gpt.py \\
      --record-script lzma=$R/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon/train_gpt.py \\
      --record-script lzma1019=$R/2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072/train_gpt.py \\
      [--commit lqer=17f50d99...] [--check]

PR heads (`git fetch origin pull/N/head`): #1797 17f50d99654c5d0b52699b1a880cae2b3f3fff39, #1851
d503f3106688e5ae3f556e34ca92255d4c4f2fe2, #1089 8ad2f1a23a1591648574e377eab8dc5321cfb6d2, #1204
e01b7e19895e09efb97c415ad6e32e60d6b4842b, #549 b08d72a96e98cac8add0543982fccd35bc8f4f4d, #1019
d7fbe3d16f81a16e26604353bafc61d151cf5264. `--check` writes nothing: it regenerates and compares every
value (stamps aside) with the committed fixture, bit for bit, and exits 1 on any difference.
Needs the `brotli` package (its version is stamped: brotli's bytes may change between releases).
"""

from __future__ import annotations

import argparse
import ast
import base64
import collections
import hashlib
import io
import lzma
import math
import os
import re
import sys
import types
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins import test_later_export as later_tests  # noqa: E402
from tools.make_goldens import differences, name_pairs, stamp  # noqa: E402  (one bit-exact comparison for both generators)

FIXTURE = ROOT / "tests" / "fixtures" / "export_later_golden.pt"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "lqer": ("#1797", "2026-04-24_PR1787Base_Smear_LQERAsym_PhasedTTT_1.06157"),
    "lqer1851": ("#1851", "2026-04-27_SmearGateBOSFix_PR1787Base_LQERAsym_PhasedTTT"),
    "brotli": ("#1089", "2026-03-28_TurboMuon_EngramLite_ParamBanking"),
    "brotli1204": ("#1204", "2026-03-31_ParallelResiduals_MiniDepthRecurrence"),
    "lzma": ("#549", "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"),
    "lzma1019": ("#1019", "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072"),
}
LQER_FUNCTIONS = (
    "Hyperparameters",
    "gptq_quantize_weight",
    "_quantize_gate_int8_row",
    "_lqer_pack",
    "_lqer_pack_asym",
    "gptq_mixed_quantize",
    "dequantize_mixed",
)
SHUFFLE_FUNCTIONS = ("_byte_shuffle", "_byte_unshuffle")

# ------------------------------------------------------------------ reading record scripts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_source(path: Path) -> str:
    """The script's code; a `exec(lzma.decompress(base64.b85decode(...), ...))` shim is decompressed
    by evaluating its argument with only the lzma and base64 modules in scope (nothing is executed)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    last = tree.body[-1]
    is_shim = (
        isinstance(last, ast.Expr)
        and isinstance(last.value, ast.Call)
        and isinstance(last.value.func, ast.Name)
        and last.value.func.id == "exec"
    )
    if not is_shim:
        return text
    assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
    scope: dict[str, Any] = {}
    for node in tree.body[:-1]:
        if not isinstance(node, ast.Import) or any(a.name not in ("lzma", "base64") for a in node.names):
            raise SystemExit(f"{path}: unexpected statement before the shim's exec: {ast.unparse(node)[:80]}")
        scope.update({a.asname or a.name: {"lzma": lzma, "base64": base64}[a.name] for a in node.names})
    code = eval(compile(ast.Expression(last.value.args[0]), str(path), "eval"), {"__builtins__": {}}, scope)
    return code.decode("utf-8") if isinstance(code, bytes) else code


def _simple(node: ast.stmt) -> bool:
    """Module-level constants (`_W = 'little'`, `_BSHF_MAGIC = b'BSHF'`, `_X = _B`) and the
    `try: import brotli ...` probe, which the export statements read."""
    if isinstance(node, ast.Assign):
        return all(isinstance(n, (ast.Constant, ast.Name)) for n in ast.walk(node.value) if not isinstance(n, ast.Load))
    if isinstance(node, ast.Try):
        return all(isinstance(n, (ast.Import, ast.Assign)) for n in node.body) and all(
            all(isinstance(s, ast.Assign) for s in h.body) for h in node.handlers
        )
    return False


def top_level(source: str) -> list[ast.stmt]:
    """The script's top-level statements. A script that this Python cannot parse as a whole (PR
    #1089's decoded code uses Python 3.12 f-strings inside `main()`) is cut at its unindented lines
    and parsed piece by piece; the pieces that do not parse are left out (they are not needed)."""
    try:
        return ast.parse(source).body
    except SyntaxError:
        pass
    lines = source.splitlines(keepends=True)
    starts = [
        i
        for i, line in enumerate(lines)
        if line[:1] not in ("", " ", "\t", "\n", "#", ")", "]", "}")
        and not line.startswith(("except", "else", "elif", "finally"))
        and not (i and lines[i - 1].startswith("@"))
    ]
    nodes: list[ast.stmt] = []
    for a, b in zip(starts, starts[1:] + [len(lines)], strict=True):
        try:
            nodes += ast.parse("".join(lines[a:b])).body
        except SyntaxError:
            continue
    return nodes


def record_namespace(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The script's constants and the named top-level functions/classes, defined (not run) in a
    namespace with the modules they use. `os.environ` is empty there: `Hyperparameters` takes the
    script's defaults whatever the caller's environment holds."""
    source = record_source(path)
    body = top_level(source)
    defs = {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [n for n in names if n not in defs]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} (not the record script this golden needs)")
    chosen = [n for n in body if _simple(n)] + [defs[n] for n in names]
    fake_os = types.SimpleNamespace(environ={}, path=os.path)
    ns: dict[str, Any] = {
        "__name__": "record",
        "torch": torch,
        "np": np,
        "io": io,
        "re": re,
        "math": math,
        "uuid": uuid,
        "collections": collections,
        "lzma": lzma,
        "zlib": zlib,
        "os": fake_os,
        "log": lambda *args, **kwargs: None,
    }
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), ns)
    ns["__source__"] = source
    return ns


def _is_getvalue(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "getvalue"
    )


def record_compress(path: Path, module: str, ns: dict[str, Any]) -> Any:
    """raw -> blob by the script's own export statements: the last line of `main()` that calls
    `<module>.compress(`, back to the line that sets `X = buf.getvalue()` (and the `elif`/`else` lines
    that complete it), parsed on their own; the statements after `X = ...getvalue()` run with X bound
    to the raw bytes, and the blob is what the compress call is assigned to."""
    lines = ns["__source__"].splitlines()
    call = f"{module}.compress("
    at = max((i for i, line in enumerate(lines) if call in line), default=None)
    if at is None:
        raise SystemExit(f"{path}: no {call} call")
    owner = next(line for line in reversed(lines[: at + 1]) if line.startswith("def "))
    if not owner.startswith("def main("):
        raise SystemExit(f"{path}: the last {call} call is in {owner.split('(')[0]}, not in main()")
    indent = re.match(r"[ \t]*", lines[at]).group(0)
    first = next((i for i in range(at, -1, -1) if ".getvalue()" in lines[i]), None)
    if first is None or not lines[first].startswith(indent) or lines[first][len(indent) : len(indent) + 1].isspace():
        raise SystemExit(f"{path}: no `X = buf.getvalue()` at the level of the final {call} call")
    last = at
    while last + 1 < len(lines) and re.match(rf"{re.escape(indent)}(elif|else)\b", lines[last + 1]):
        last += 1
    window = "\n".join(line[len(indent) :] for line in lines[first : last + 1])
    body = ast.parse(window).body
    raw_at = max(i for i, node in enumerate(body) if _is_getvalue(node))
    raw_name = body[raw_at].targets[0].id
    assigns = [
        n
        for n in ast.walk(ast.Module(body=body[raw_at + 1 :], type_ignores=[]))
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Attribute)
        and n.value.func.attr == "compress"
        and isinstance(n.value.func.value, ast.Name)
        and n.value.func.value.id == module
    ]
    if len(assigns) != 1 or not isinstance(assigns[0].targets[0], ast.Name):
        raise SystemExit(f"{path}: expected one `NAME = {call}...)` after `{raw_name} = ...getvalue()`")
    target = assigns[0].targets[0].id
    code = compile(ast.Module(body=body[raw_at + 1 :], type_ignores=[]), str(path), "exec")

    def compress(raw: bytes) -> bytes:
        local = dict(ns)
        local[raw_name] = raw
        exec(code, local)
        return local[target]

    compress.statements = ast.unparse(ast.Module(body=body[raw_at:], type_ignores=[]))  # type: ignore[attr-defined]
    return compress


# ------------------------------------------------------------------ LQER (PR #1797 / #1851)

LQER_CASES = {  # case -> record hyperparameters set on top of the script's defaults
    "default": {},
    "all_top5": {"lqer_top_k": 5},
    "sym_rank2_bits5": {"lqer_asym_enabled": False, "lqer_rank": 2, "lqer_factor_bits": 5, "lqer_top_k": 5},
    "rank8_group32": {"lqer_rank": 8, "lqer_asym_group": 32, "lqer_top_k": 2},
}
LQER_KEYS = ("lqer_enabled", "lqer_rank", "lqer_top_k", "lqer_factor_bits", "lqer_asym_enabled", "lqer_asym_group")


def lqer_hessians(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1851)
    out = {}
    for name, w in weights.items():
        if w.ndim == 2:
            x = (torch.randint(-64, 65, (512, w.shape[1]), generator=g) * 2.0**-6).float()
            out[name] = x.T @ x / 512
    return out


class _RecordingLinalg:
    """`torch.linalg` for the record's code, keeping each `svd` input and output: the fixture
    stores the record's own singular vectors, so the tests check the packing and the correction
    bit for bit even where another LAPACK build (or thread count) rounds the SVD differently."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.linalg, name)

    def svd(self, *args: Any, **kwargs: Any) -> Any:
        out = torch.linalg.svd(*args, **kwargs)
        self.calls.append((args[0], out))
        return out


class _RecordingTorch:
    def __init__(self, calls: list) -> None:
        self.linalg = _RecordingLinalg(calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def make_lqer(ns: dict[str, Any]) -> dict:
    weights = later_tests.lqer_weights()
    hessians = lqer_hessians(weights)
    out: dict = {"inputs": {k: later_tests.digest(v) for k, v in weights.items()}, "cases": {}}
    base = None
    for case, overrides in LQER_CASES.items():
        h = ns["Hyperparameters"]()
        for k, v in overrides.items():
            setattr(h, k, v)
        calls: list = []
        ns["torch"] = _RecordingTorch(calls)
        try:
            result, meta = ns["gptq_mixed_quantize"](weights, hessians, h)
        finally:
            ns["torch"] = torch
        quant = {k: v for k, v in result.items() if not k.split(".")[-1].startswith("lq")}
        if base is None:
            base = quant
            out["quantized"], out["quantized_meta"] = quant, {k: m.split("+")[0] for k, m in meta.items()}
        elif differences(quant, base):
            raise SystemExit(f"lqer case {case}: the record's GPTQ integers differ between cases")
        deq = ns["dequantize_mixed"](result, meta, weights)
        factors = {k: v for k, v in result.items() if k.split(".")[-1].startswith("lq")}
        order = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in factors))  # the record's selection order
        if len(calls) != len(order):
            raise SystemExit(f"lqer case {case}: {len(calls)} SVDs for {len(order)} corrected tensors")
        svd = {}
        for name, (e, (u, sv, vh)) in zip(order, calls, strict=True):
            r = min(h.lqer_rank, sv.numel())
            svd[name] = {"E": later_tests.digest(e), "U": u[:, :r].clone(), "S": sv[:r].clone(), "Vh": vh[:r].clone()}
        out["cases"][case] = {
            "hparams": {k: getattr(h, k) for k in LQER_KEYS},
            "meta": meta,
            "factors": factors,
            "svd": svd,
            "corrected_rows": {k: deq[k][:: later_tests.ROW_STEP].clone() for k in order},
        }
    return out


# ------------------------------------------------------------------ codecs (PR #1089, #1204, #549, #1019)


def codec_inputs() -> dict[str, bytes]:
    """Raw payloads: a small int6 export object as `torch.save` writes it, an odd-length cut of it,
    one byte (shorter than the stride) and nothing."""
    g = torch.Generator().manual_seed(1089)
    q = torch.randint(-31, 32, (48, 64), generator=g).to(torch.int8)
    scale = (torch.randint(1, 2048, (48,), generator=g) * 2.0**-16).to(torch.float16)
    buf = io.BytesIO()
    torch.save({"w": {"blocks.0.mlp.fc.weight.q": q, "blocks.0.mlp.fc.weight.scale": scale}, "m": {}}, buf)
    payload = buf.getvalue()
    odd = payload if len(payload) % 2 else payload[:-1]
    return {"payload": payload, "odd": odd[:1001], "one_byte": b"\x2a", "empty": b""}


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.tensor(list(data), dtype=torch.uint8)


def make_brotli(ns: dict[str, Any], compress: Any, inputs: dict[str, bytes], stride_name: str | None) -> dict:
    stride = ns[stride_name] if stride_name else 2  # #1089: _BYTE_SHUFFLE_STRIDE; #1204: the default
    out: dict = {"statements": compress.statements, "stride": stride, "cases": {}}
    for case, raw in inputs.items():
        shuffled = ns["_byte_shuffle"](raw, stride)
        if ns["_byte_unshuffle"](shuffled) != raw:
            raise SystemExit(f"brotli {case}: the record's unshuffle does not invert its shuffle")
        blob = compress(raw)
        out["cases"][case] = {"raw": as_tensor(raw), "shuffled": as_tensor(shuffled), "blob": as_tensor(blob)}
    return out


def make_lzma(compress: Any, inputs: dict[str, bytes]) -> dict:
    out: dict = {"statements": compress.statements, "cases": {}}
    for case, raw in inputs.items():
        out["cases"][case] = {"raw": as_tensor(raw), "blob": as_tensor(compress(raw))}
    return out


# ------------------------------------------------------------------ CLI


def provenance(scripts: dict[str, Path], commits: dict[str, str], brotli_version: str) -> dict:
    out = stamp("tools/make_export_goldens.py", FIXTURE.stem, RECORDS, list(RECORDS), scripts, commits)
    return {**out, "brotli": brotli_version, "liblzma": later_tests.liblzma_version()}


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    return name_pairs(values, flag, RECORDS)


def build(scripts: dict[str, Path]) -> tuple[dict, str]:
    try:
        import brotli
    except ImportError as exc:
        raise SystemExit("the brotli goldens need the brotli package: pip install brotli") from exc
    data: dict = {"lqer": make_lqer(record_namespace(scripts["lqer"], LQER_FUNCTIONS))}
    again = make_lqer(record_namespace(scripts["lqer1851"], LQER_FUNCTIONS))
    diff = differences(again, data["lqer"], "lqer1851")
    if diff:
        raise SystemExit(f"PR #1851's LQER differs from PR #1797's at {'; '.join(diff[:5])}")
    inputs = codec_inputs()
    for name, stride_name in (("brotli", "_BYTE_SHUFFLE_STRIDE"), ("brotli1204", None)):
        ns = record_namespace(scripts[name], SHUFFLE_FUNCTIONS)
        if name == "brotli" and ns.get("_COMPRESSOR") != "brotli":
            raise SystemExit(f"{scripts[name]}: the record would not choose brotli here")
        ns["brotli"] = brotli
        data[name] = make_brotli(ns, record_compress(scripts[name], "brotli", ns), inputs, stride_name)
    for name in ("lqer", "lqer1851"):  # the LQER records write PR #1089's format (their `_compress`)
        ns = record_namespace(scripts[name], (*SHUFFLE_FUNCTIONS, "_compress", "_decompress"))
        for case, entry in data["brotli"]["cases"].items():
            raw, blob = bytes(entry["raw"].tolist()), bytes(entry["blob"].tolist())
            if ns["_compress"](raw, "brotli") != blob or ns["_decompress"](blob, "brotli") != raw:
                raise SystemExit(f"{RECORDS[name][0]}'s _compress/_decompress differ from PR #1089's on {case}")
    for name in ("lzma", "lzma1019"):
        ns = record_namespace(scripts[name], ())
        data[name] = make_lzma(record_compress(scripts[name], "lzma", ns), inputs)
    return data, str(brotli.__version__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", action="append", default=[], metavar="NAME=PATH", help="a record's train_gpt.py")
    ap.add_argument("--commit", action="append", default=[], metavar="NAME=SHA", help="source commit, for the stamp")
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture; write nothing")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    args = ap.parse_args(argv)
    scripts = {k: Path(v) for k, v in _pairs(args.record_script, "--record-script").items()}
    missing = sorted(set(RECORDS) - set(scripts))
    if missing:
        raise SystemExit(f"missing --record-script for {', '.join(missing)}")
    for name, path in scripts.items():
        if not path.is_file():
            raise SystemExit(f"--record-script {name}={path}: no such file")
    data, brotli_version = build(scripts)
    if args.check:
        old = torch.load(args.out, weights_only=False)
        stamp = old.pop("provenance", {})
        if stamp.get("brotli") != brotli_version:
            print(f"made with brotli {stamp.get('brotli')}, checked with {brotli_version}: brotli bytes may differ")
        diff = differences(data, old, FIXTURE.stem)
        print(f"{FIXTURE.stem}: {'bit-identical' if not diff else 'DIFFERS at ' + '; '.join(diff[:5])}")
        return 1 if diff else 0
    data["provenance"] = provenance(scripts, _pairs(args.commit, "--commit"), brotli_version)
    torch.save(data, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
