"""Regenerate tests/fixtures/model_schedule_golden.pt from the records' own GPT, and stamp it.

The fixture holds what two record models compute on small shapes with parallel residuals and depth
recurrence switched on and off, for pgolf's `parallel_residuals` and `depth_recurrence` plugins to
match. Two records, because they hold the two forms of each technique:

- PR #1204: two residual lanes with a learned 2x2 merge (`parallel_post_lambdas` (L,2,2),
  `parallel_resid_lambdas` (L,2), lanes averaged at the end), from a physical layer on; recurrence
  by a virtual->physical layer map (`v2p`) over per-virtual blocks and banked matrices, the
  repeated pass with its own untied MLP (`REPEAT_UNTIE_MLP=full`).
- PR #1493: GPT-J parallel blocks (attention and MLP read the same input, no new parameters) from a
  layer on; recurrence by encoder/decoder index lists over shared physical blocks (NUM_LOOPS extra
  passes of LOOP_START..LOOP_END), switched by `looping_active`. (PR #1412 has the same block and
  loop code; its phase-1 list is this code's with NUM_LOOPS=1.)

For each record and each of four configurations -- base (neither), parallel, recurrence, both --
the fixture has the record's logits and loss on fixed token ids, the record's virtual layer sequence,
the settings (environment variables the script reads, and for #1204 the GPT keyword arguments its
`main()` passes), one fp32 state dict per record (loaded into every configuration; #1204's base and
recurrence models have no lambdas and take the other keys), and facts about the techniques'
parameters as the record initializes them.

The record scripts are read from paths the user gives (checkouts of openai/parameter-golf at the PR
heads below; no record code is copied into this repository). They are never run as scripts: only
the classes named here are taken from each script's syntax tree and defined in a namespace of
their own (`os.environ` there holds only the settings below), so their top-level imports of
flash-attn, brotli and sentencepiece are not executed. #1493's script is an lzma + base85 shim;
its code is decompressed (never executed) first; an already decoded copy may be given instead.
Shims, none of them touching the records' math:
- `flash_attn_3_func(q, k, v, causal=True)` is answered by PyTorch SDPA with GQA on the same
  [batch, seq, heads, head_dim] layout (benchmarks/record_script.py's stand-in; CPU has no FA3);
- the model stays fp32 on CPU (the records train a bf16 model under CUDA autocast): the goldens
  are fp32 values of the records' forward.
The weights are not the records' random init: every parameter is set from integer draws
(torch.randint, the same bits on every CPU) -- matrices to k/8/sqrt(fan_in) with k in [-8, 8], the
records' constant-initialized control tensors (scales, resid_mix, q_gain, skip weights and gates,
lambdas, smear gate) to their init plus j/16 with j in [-4, 4] -- so zero-initialized projections
and the merge weights all act. The init facts are read from a fresh record model.

    R=PG/records/track_10min_16mb  # each file as of its PR head below (git show SHA:PATH > FILE)
    python tools/make_model_schedule_goldens.py \\
      --record-script pr1204=$R/2026-03-31_ParallelResiduals_MiniDepthRecurrence/train_gpt.py \\
      --record-script pr1493=$R/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT/train_gpt.py \\
      [--commit pr1204=e01b7e19...] [--check]

PR heads (`git fetch origin pull/N/head`): #1204 e01b7e19895e09efb97c415ad6e32e60d6b4842b, #1493
857de4755ef003134e4d3130ca792ff54861c577. `--check` writes nothing: it regenerates and compares every
value (stamps aside) with the committed fixture, bit for bit, and exits 1 on any difference (the
logits come from CPU matmuls: compare on a machine of the stamped CPU capability).
"""

from __future__ import annotations

import ast
import math
import os
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import _sdpa_flash_attn_func  # noqa: E402  (the one FA3 stand-in)
from tools.make_export_goldens import _simple, record_source, top_level  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "model_schedule_golden.pt"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "pr1204": ("#1204", "2026-03-31_ParallelResiduals_MiniDepthRecurrence"),
    "pr1493": ("#1493", "2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"),
}
CLASSES = {
    "pr1204": (
        "RMSNorm",
        "apply_canon_residual",
        "CastedLinear",
        "Rotary",
        "apply_rotary_emb",
        "CausalSelfAttention",
        "SmearGate",
        "BigramHashEmbedding",
        "ValueEmbedding",
        "MLP",
        "RepeatMLPWeights",
        "Block",
        "GPT",
    ),
    "pr1493": (
        "Hyperparameters",
        "RMSNorm",
        "CastedLinear",
        "Rotary",
        "apply_rotary_emb",
        "CausalSelfAttention",
        "MLP",
        "Block",
        "GPT",
    ),
}
B, T, VOCAB, DIM, HEADS, KV_HEADS, LAYERS, MLP_MULT, ROPE_DIMS = 1, 16, 64, 24, 4, 2, 6, 2, 4
DATA_SEED, WEIGHT_SEED, INIT_SEED = 1493, 1204, 0
CONFIGS = ("base", "parallel", "recurrence", "both")  # (parallel, recurrence): off/off, on/off, off/on, on/on

# PR #1204: the environment variables its Hyperparameters reads (record values where they concern
# the techniques, scaled to 6 layers: recurrence on the two layers at the U-Net hinge as 4,5 of 11,
# parallel from the physical layer after them as 7 of 11); the unrelated optional features off.
ENV_1204 = {
    "VOCAB_SIZE": VOCAB,
    "NUM_LAYERS": LAYERS,
    "MODEL_DIM": DIM,
    "NUM_HEADS": HEADS,
    "NUM_KV_HEADS": KV_HEADS,
    "MLP_MULT": float(MLP_MULT),
    "TIE_EMBEDDINGS": 1,
    "TIED_EMBED_INIT_STD": 0.005,
    "LOGIT_SOFTCAP": 30.0,
    "ROPE_BASE": 10000.0,
    "QK_GAIN_INIT": 1.5,
    "BIGRAM_VOCAB_SIZE": 0,  # off (record: 2816)
    "BIGRAM_DIM": 112,
    "XSA_LAST_N": 0,  # off (record: 11, over the virtual blocks)
    "ROPE_DIMS": ROPE_DIMS,  # partial RoPE, 4 of head_dim 6 (record: 16 of 64)
    "LN_SCALE": 1,
    "VE_ENABLED": 0,  # off (record: 1, virtual layers 9,10)
    "VE_DIM": 128,
    "VE_LAYERS": "",
    "CANON_AC_LAYERS": "",
    "PARALLEL_RESIDUAL": 1,
    "PARALLEL_START_LAYER": 4,  # record: 7 of 11
    "PARALLEL_START_LAYER_IS_PHYSICAL": 1,
    "NEGATIVE_SLOPE": 0.5,
    "DISABLE_LAYER0_ATTN": 0,  # off (record: 1)
    "RECUR_LAYERS": "2,3",  # record: 4,5 of 11
    "REPEAT_UNTIE_MLP": "full",
    "REPEAT_UNTIE_MLP_LAYERS": "2,3",
}
# PR #1493: its defaults are the record's run but QK_GAIN_INIT (5.25 on its command line).
ENV_1493 = {
    "VOCAB_SIZE": VOCAB,
    "NUM_LAYERS": LAYERS,
    "MODEL_DIM": DIM,
    "EMBEDDING_DIM": DIM,
    "NUM_HEADS": HEADS,
    "NUM_KV_HEADS": KV_HEADS,
    "MLP_MULT": float(MLP_MULT),
    "XSA_LAST_N": 0,  # off (record: 11)
    "ROPE_DIMS": ROPE_DIMS,
    "LN_SCALE": 1,
    "QK_GAIN_INIT": 5.25,
    "SKIP_GATES_ENABLED": 0,  # off (record: 1): pgolf's U-Net skips are the baseline's ungated ones
    "TIE_EMBEDDINGS": 1,
    "LOGIT_SOFTCAP": 30.0,
    "NUM_LOOPS": 2,  # record: 2
    "LOOP_START": 2,  # record: 3..5 of 11
    "LOOP_END": 3,
    "PARALLEL_RESIDUAL_START": 4,  # record: 7 of 11
}
# Parameters the records initialize to constants (set to init + j/16 here); everything else of
# two or more dimensions is a matrix or an embedding (set to k/8/sqrt(fan_in)).
CONTROL_SUFFIXES = (
    "attn_scale",
    "mlp_scale",
    "resid_mix",
    "q_gain",
    "skip_weights",
    "skip_gates",
    "parallel_post_lambdas",
    "parallel_resid_lambdas",
    "smear.gate",
)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------ reading record scripts


def script_source(path: Path) -> str:
    """The script's code: a shim is decompressed; a decoded copy that this Python cannot parse as a
    whole (#1493's code uses Python 3.12 f-strings outside the classes taken) is used as it is."""
    text = path.read_text(encoding="utf-8")
    try:
        ast.parse(text)
    except SyntaxError:
        return text
    return record_source(path)


def record_namespace(name: str, path: Path, env: dict[str, Any]) -> dict[str, Any]:
    """The script's constants and the classes of CLASSES[name], defined in a namespace whose
    `os.environ` holds only `env` (as strings, as a shell would give them)."""
    body = top_level(script_source(path))
    defs = {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [c for c in CLASSES[name] if c not in defs]
    if missing:
        fail(f"--record-script {name}={path}: no {', '.join(missing)} (not the {RECORDS[name][0]} record script)")
    chosen = [n for n in body if _simple(n)] + [defs[c] for c in CLASSES[name]]
    ns: dict[str, Any] = {
        "__name__": "record",
        "torch": torch,
        "nn": nn,
        "F": F,
        "Tensor": Tensor,
        "math": math,
        "uuid": uuid,
        "os": types.SimpleNamespace(environ={k: str(v) for k, v in env.items()}, path=os.path),
        "flash_attn_3_func": _sdpa_flash_attn_func,
    }
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), ns)
    return ns


def layer_list(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def kwargs_1204(env: dict[str, Any], parallel: bool, recurrence: bool) -> dict[str, Any]:
    """PR #1204's `GPT(...)` keyword arguments as its `main()` builds them from Hyperparameters
    (the eval model's call: `recurrence_active` given at construction)."""
    return {
        "vocab_size": int(env["VOCAB_SIZE"]),
        "num_layers": int(env["NUM_LAYERS"]),
        "model_dim": int(env["MODEL_DIM"]),
        "num_heads": int(env["NUM_HEADS"]),
        "num_kv_heads": int(env["NUM_KV_HEADS"]),
        "mlp_mult": float(env["MLP_MULT"]),
        "tie_embeddings": bool(env["TIE_EMBEDDINGS"]),
        "tied_embed_init_std": float(env["TIED_EMBED_INIT_STD"]),
        "logit_softcap": float(env["LOGIT_SOFTCAP"]),
        "rope_base": float(env["ROPE_BASE"]),
        "qk_gain_init": float(env["QK_GAIN_INIT"]),
        "bigram_vocab_size": int(env["BIGRAM_VOCAB_SIZE"]),
        "bigram_dim": int(env["BIGRAM_DIM"]),
        "xsa_last_n": int(env["XSA_LAST_N"]),
        "rope_dims": int(env["ROPE_DIMS"]),
        "ln_scale": bool(env["LN_SCALE"]),
        "ve_enabled": bool(env["VE_ENABLED"]),
        "ve_dim": int(env["VE_DIM"]),
        "ve_layers": str(env["VE_LAYERS"]),
        "canon_ac_layers": layer_list(str(env["CANON_AC_LAYERS"])),
        "parallel_residual": parallel,
        "parallel_start_layer": int(env["PARALLEL_START_LAYER"]),
        "parallel_start_layer_is_physical": bool(env["PARALLEL_START_LAYER_IS_PHYSICAL"]),
        "neg_slope": float(env["NEGATIVE_SLOPE"]),
        "disable_layer0_attn": bool(env["DISABLE_LAYER0_ATTN"]),
        "recur_layers": layer_list(str(env["RECUR_LAYERS"])),
        "recurrence_active": recurrence,
        "repeat_untie_mlp": str(env["REPEAT_UNTIE_MLP"]),
        "repeat_untie_mlp_layers": layer_list(str(env["REPEAT_UNTIE_MLP_LAYERS"])),
    }


def build_1204(path: Path, parallel: bool, recurrence: bool) -> tuple[nn.Module, dict[str, Any]]:
    env = dict(ENV_1204, PARALLEL_RESIDUAL=int(parallel))
    ns = record_namespace("pr1204", path, env)
    kwargs = kwargs_1204(env, parallel, recurrence)
    return ns["GPT"](**kwargs), {"env": env, "gpt_kwargs": kwargs}


def build_1493(path: Path, parallel: bool, recurrence: bool) -> tuple[nn.Module, dict[str, Any]]:
    env = dict(ENV_1493)
    if not parallel:
        env["PARALLEL_RESIDUAL_START"] = -1
    ns = record_namespace("pr1493", path, env)
    model = ns["GPT"](ns["Hyperparameters"]())
    model.looping_active = recurrence  # what the record's training loop and eval set
    return model, {"env": env, "looping_active": recurrence}


BUILD = {"pr1204": build_1204, "pr1493": build_1493}


def virtual_layers(name: str, model: nn.Module) -> dict[str, list[int]]:
    """The physical layer of each virtual position, split at the record's encoder/decoder boundary."""
    if name == "pr1204":
        seq, enc = list(model.v2p), int(model.num_encoder_layers)
        return {"encoder": seq[:enc], "decoder": seq[enc:]}
    if model.looping_active:
        return {"encoder": list(model.encoder_indices), "decoder": list(model.decoder_indices)}
    n_enc = int(model.num_encoder_layers)
    return {"encoder": list(range(n_enc)), "decoder": list(range(n_enc, n_enc + int(model.num_decoder_layers)))}


# ------------------------------------------------------------------ weights and data


def is_control(key: str) -> bool:
    return any(key == s or key.endswith("." + s) or key.startswith(s) for s in CONTROL_SUFFIXES)


def set_weights(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter from integer draws (see the module docstring); returns the fp32 state dict."""
    g = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if is_control(key) or p.ndim < 2:
                init = p.detach().float()
                flat = init.reshape(init.shape[0], -1) if init.ndim >= 2 else init.reshape(1, -1)
                if not bool((flat == flat[:, :1]).all()):
                    fail(f"{key}: expected a constant-initialized control tensor, the record's init varies")
                p.copy_(init + torch.randint(-4, 5, p.shape, generator=g).float() / 16)
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randint(-8, 9, p.shape, generator=g).float() / 8 / math.sqrt(fan_in))
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def token_ids() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(DATA_SEED)
    ids = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def run(model: nn.Module, state: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    keys = set(model.state_dict())
    extra = sorted(set(state) - keys)
    model.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model.forward_logits(x)
        loss = model(x, y)
    return {"logits": logits.float(), "loss": loss.float(), "unused_keys": extra}


# ------------------------------------------------------------------ facts about the techniques


def tensor_facts(t: Tensor) -> dict[str, Any]:
    flat = t.detach().reshape(-1)
    const = bool((flat == flat[0]).all())
    value = float(flat[0]) if const else None
    return {"shape": list(t.shape), "dtype": str(t.dtype), "constant": const, "value": value}


def init_facts(name: str, path: Path) -> dict[str, Any]:
    """The technique parameters as a fresh record model (recurrence off, parallel on) has them, and
    for #1204 what its switch does to the untied repeat MLPs."""
    torch.manual_seed(INIT_SEED)
    model, _ = BUILD[name](path, True, False)
    params = dict(model.named_parameters())
    wanted = ["skip_weights", "skip_gates"]
    if name == "pr1204":
        wanted += ["parallel_post_lambdas", "parallel_resid_lambdas"]
        wanted += sorted(k for k in params if k.startswith("repeat_mlp."))
    facts: dict[str, Any] = {k: tensor_facts(params[k]) for k in wanted if k in params}  # no gates: #1493 off
    facts["blocks"] = len(model.blocks)
    if name == "pr1204":
        model.set_recurrence_active(True)  # the record's switch: copies the bank MLP into the repeat MLPs
        synced = []
        for i, p in enumerate(model.recur_layers):
            rep = model.repeat_mlp[i]
            synced.append(
                bool(torch.equal(rep.fc.weight, model.mlp_up_bank[p]))
                and bool(torch.equal(rep.proj.weight, model.mlp_down_bank[p]))
            )
        facts["switch_copies_bank_mlp_into_repeat_mlp"] = synced
        facts["num_skip_weights"] = int(model.num_skip_weights)
    else:
        facts["num_skip_weights"] = int(model.num_skip_weights)
        facts["parallel_blocks"] = [i for i, b in enumerate(model.blocks) if b.parallel]
    return facts


def build(scripts: dict[str, Path]) -> dict:
    x, y = token_ids()
    data: dict = {
        "shapes": {
            "batch": B,
            "seq": T,
            "vocab": VOCAB,
            "dim": DIM,
            "heads": HEADS,
            "kv_heads": KV_HEADS,
            "layers": LAYERS,
            "mlp_mult": MLP_MULT,
            "rope_dims": ROPE_DIMS,
        },
        "input_ids": x,
        "target_ids": y,
    }
    for name, path in scripts.items():
        full, _ = BUILD[name](path, True, True)
        state = set_weights(full)
        entry: dict = {"state_dict": state, "init": init_facts(name, path), "configs": {}}
        for config in CONFIGS:
            parallel, recurrence = config in ("parallel", "both"), config in ("recurrence", "both")
            model, settings = BUILD[name](path, parallel, recurrence)
            out = run(model, state, x, y)
            entry["configs"][config] = {
                "parallel": parallel,
                "recurrence": recurrence,
                "settings": settings,
                "layers": virtual_layers(name, model),
                **out,
            }
        logits = {c: entry["configs"][c]["logits"] for c in CONFIGS}
        for a in CONFIGS:
            for b in CONFIGS[CONFIGS.index(a) + 1 :]:
                gap = float((logits[a] - logits[b]).abs().max())
                if gap < 1e-4:  # fp32 noise across CPUs is <= 7.2e-7; #1493's smallest gap is 5.2e-4
                    fail(f"{name}: configurations {a} and {b} give logits within {gap:.2e}: a technique had no effect")
        data[name] = entry
    return data


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURE).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    missing = sorted(set(RECORDS) - set(scripts))
    if missing:
        fail(f"missing --record-script for {', '.join(missing)} (expected NAME=PATH, NAME one of {', '.join(RECORDS)})")
    for name, path in scripts.items():
        if not path.is_file():
            fail(f"--record-script {name}={path}: no such file (pass the record's train_gpt.py)")
    scripts = {name: scripts[name] for name in RECORDS}
    torch.set_num_threads(1)  # one reduction order for the CPU matmuls
    data = build(scripts)
    commits = name_pairs(args.commit, "--commit", RECORDS)
    failed = check_or_write(
        data, args.out, args.check, "tools/make_model_schedule_goldens.py", RECORDS, list(RECORDS), scripts, commits
    )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
