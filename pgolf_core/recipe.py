"""Recipes: TOML files turned into typed, validated configuration.

A recipe has one table per core section (`[run]`, `[model]`, `[train]`, `[eval]`, `[export]`,
`[data]`) and one `[plugins.<name>]` table per plugin. Every value is checked against the
dataclass that owns it, so a typo fails loudly (file, table, key, expected type, nearest
valid key) instead of silently training the wrong model. Defaults are those of the naive
baseline record (`train_gpt.py` at the root of openai/parameter-golf).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pgolf_core.errors import PgolfError, RecipeError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Substrings that mark small "control" tensors: Adam instead of Muon, kept fp32, fp32 passthrough
# in the int8 exporter. Plugins append their own through `pgolf_configure`.


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    compile: str = "auto"  # auto (on for CUDA, off for CPU) | on | off
    out_dir: str = "runs"


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    mlp_hidden: int = 0  # > 0 overrides mlp_mult * model_dim (PR #63 uses 1344)
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    attention: str = "auto"  # auto | sdpa | flash


@dataclass
class TrainConfig:
    iterations: int = 20000
    warmup_steps: int = 20
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    max_wallclock_seconds: float = 600.0
    warmdown_iters: int = 1200
    val_loss_every: int = 200
    train_log_every: int = 50
    grad_accum_steps: int = 0  # 0 = 8 // world_size, as in the records
    grad_clip_norm: float = 0.0
    tied_embed_lr: float = 0.05
    embed_lr: float = 0.6
    head_lr: float = 0.008
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    adam_weight_decay: float = 0.0  # > 0 switches the token and scalar groups to AdamW
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    muon_weight_decay: float = 0.0
    # The records orthogonalize in bfloat16 (fast on GPUs). CPUs without bf16 matmul units run it
    # 30-100x slower than float32, so `--smoke` switches to float32; full recipes keep the record's.
    muon_ns_dtype: str = "bfloat16"
    # On CUDA the records cast the model to bf16 and restore linears and control tensors to fp32,
    # so embedding tables train as bf16 parameters; true keeps them fp32.
    fp32_embeddings: bool = False


@dataclass
class EvalConfig:
    seq_len: int = 0  # 0 = train_seq_len
    batch_tokens: int = 524_288
    sliding_stride: int = 0  # 0 = no sliding-window eval
    sliding_batch_seqs: int = 32
    chunk_tokens: int = 32_768  # test-time training: windows scored per chunk before the model adapts
    # "rescore_tail": as the records (windows clipped at the end re-score the last positions);
    # "once": every position scored exactly once (tail-duplication quirk);
    # "full_windows": PR #63's own loop (full windows only, a gap after the first; see evaluation.window_starts).
    sliding_tail: str = "rescore_tail"
    max_tokens: int = 0  # 0 = the whole validation set; > 0 truncates it (smoke runs)


@dataclass
class ExportConfig:
    compressor: str = "zlib"  # zlib | zstd, or a codec an enabled plugin adds (brotli, lzma)
    level: int = 9
    keep_float_max_numel: int = 65_536
    clip_quantile: float = 0.9999984
    artifact_limit_bytes: int = 16_000_000


@dataclass
class DataConfig:
    path: str = ""  # directory of fineweb_{train,val}_*.bin; empty = the embedded sample data
    tokenizer: str = ""  # SentencePiece .model; empty = the sample tokenizer / <path>/tokenizer.model
    train_pattern: str = "fineweb_train_*.bin"
    val_pattern: str = "fineweb_val_*.bin"


CORE_SECTIONS: dict[str, type] = dict(run=RunConfig, model=ModelConfig, train=TrainConfig, eval=EvalConfig,
                                      export=ExportConfig, data=DataConfig)  # fmt: skip


@dataclass
class PluginEntry:
    """One `[plugins.<name>]` table: whether it is enabled and its validated config object."""

    enabled: bool
    config: Any


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    data: DataConfig = field(default_factory=DataConfig)
    plugins: dict[str, PluginEntry] = field(default_factory=dict)
    source: str = "<defaults>"
    # How the command line changed the file ("smoke", "no-xsa", "with-swa", "set-<hash of the --set values>"):
    # the default run folder's name, so runs of one recipe with other toggles never land in one folder.
    variant: tuple[str, ...] = ()

    @property
    def enabled_plugins(self) -> list[str]:
        return [name for name, entry in self.plugins.items() if entry.enabled]

    def to_dict(self) -> dict[str, Any]:
        plugins = {name: {"enabled": e.enabled, **(dataclasses.asdict(e.config) if e.config is not None else {})}
                   for name, e in sorted(self.plugins.items())}  # fmt: skip
        return {**{name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}, "plugins": plugins}

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode("utf-8")).hexdigest()


# Overrides applied by `--smoke`: every enabled plugin stays, the model, sequence and step
# counts shrink so that a 2-core CPU finishes in about a minute. A fixed step count, no wallclock cap:
# the score must not depend on how busy the machine is. User `--set`s still win.
SMOKE_OVERRIDES: dict[str, Any] = {
    "model.model_dim": 128, "model.num_heads": 4, "model.num_kv_heads": 2,
    "train.iterations": 200, "train.warmup_steps": 2, "train.train_batch_tokens": 8 * 128, "train.train_seq_len": 128,
    "train.max_wallclock_seconds": 0.0, "train.warmdown_iters": 100, "train.val_loss_every": 100,
    "train.train_log_every": 25, "train.grad_accum_steps": 1, "train.muon_momentum_warmup_steps": 50,
    "train.muon_ns_dtype": "float32",
    "eval.seq_len": 0, "eval.batch_tokens": 16 * 128, "eval.max_tokens": 32_768, "eval.sliding_batch_seqs": 16,
    "export.keep_float_max_numel": 4096,
}  # fmt: skip


def load_recipe(
    path: str | Path | None,
    overrides: typing.Sequence[str] = (),
    *,
    enable: typing.Sequence[str] = (),
    disable: typing.Sequence[str] = (),
    smoke: bool = False,
    plugin_classes: typing.Callable[[list[str], str], dict[str, type]] | None = None,
) -> Recipe:
    """Read a TOML recipe, apply smoke settings and overrides, and validate every value.

    `overrides` are `section.key=value` strings (`plugins.ema.decay=0.998` for plugins); the value
    is parsed as a TOML literal and falls back to a plain string. `plugin_classes(names, source)`
    returns the plugin classes for the named plugins; it defaults to the entry-point registry.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    if smoke:
        model_table = raw.get("model", {})
        full_dim = model_table.get("model_dim", ModelConfig.model_dim) if isinstance(model_table, dict) else None
        for key, value in SMOKE_OVERRIDES.items():
            _set_dotted(raw, key, value, source)
        hidden = raw["model"].get("mlp_hidden", 0)
        if isinstance(hidden, int) and hidden > 0 and isinstance(full_dim, int) and full_dim > 0:
            # An explicit MLP width (PR #63: 1344 = 2.625 x 512) shrinks with the model, keeping its ratio.
            raw["model"]["mlp_hidden"] = max(1, round(hidden * SMOKE_OVERRIDES["model.model_dim"] / full_dim))
    user_set: set[str] = set()
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value, f"--set {item}")
        user_set.add(key)
    plugin_tables = raw.setdefault("plugins", {})
    if not isinstance(plugin_tables, dict):
        raise RecipeError(f"{source}: [plugins] must be a table of [plugins.<name>] tables")
    for name, on in [(n, True) for n in enable] + [(n, False) for n in disable]:
        flag = f"--{'enable' if on else 'disable'} {name}"
        if name not in plugin_tables:  # a name the recipe lacks is the flag's mistake, not the file's: name the flag
            if not on:
                raise RecipeError(f"{flag}: plugin {name!r} is not in {source}{did_you_mean(name, plugin_tables)}")
            from pgolf_core import registry

            (plugin_classes or registry.plugin_classes)([name], flag)  # an unknown plugin fails here
        table = plugin_tables.setdefault(name, {})
        if not isinstance(table, dict):
            raise RecipeError(f"{flag}: plugins.{name} is not a table")
        table["enabled"] = on

    try:
        if unknown := [key for key in raw if key not in CORE_SECTIONS and key != "plugins"]:
            raise RecipeError(
                f"{source}: unknown table [{unknown[0]}]{did_you_mean(unknown[0], [*CORE_SECTIONS, 'plugins'])}; "
                f"valid tables: {', '.join(f'[{s}]' for s in CORE_SECTIONS)}, [plugins.<name>]"
            )
        tags = ["smoke"] * smoke + [f"with-{n}" for n in enable] + [f"no-{n}" for n in disable]
        if sets := sorted(o for o in overrides if not o.startswith("run.seed=")):  # the seed is in the folder name
            tags.append(f"set-{hashlib.sha256(repr(sets).encode()).hexdigest()[:6]}")
        recipe = Recipe(source=source, variant=tuple(tags))
        for section, cls in CORE_SECTIONS.items():
            table = _table(raw.get(section, {}), section, source)
            setattr(recipe, section, build_config(cls, table, f"{source}: [{section}]"))
        _check_core(recipe)

        if plugin_tables:
            from pgolf_core import registry

            classes = (plugin_classes or registry.plugin_classes)(sorted(plugin_tables), source)
            for name in sorted(plugin_tables):
                table = dict(_table(plugin_tables[name], f"plugins.{name}", source))
                if smoke:
                    # A plugin's own smoke settings (class attribute SMOKE, e.g. a shorter EMA horizon
                    # for a few hundred steps) beat the recipe; the user's --set beats both.
                    for key, value in getattr(classes[name], "SMOKE", {}).items():
                        if f"plugins.{name}.{key}" not in user_set:
                            table[key] = value
                if not isinstance(enabled := table.pop("enabled", True), bool):
                    raise RecipeError(f"{source}: [plugins.{name}] enabled: expected bool, got {_type_name(enabled)}")
                config_cls = getattr(classes[name], "Config", None)
                config = build_config(config_cls, table, f"{source}: [plugins.{name}]") if config_cls else None
                if config_cls is None and table:
                    raise RecipeError(f"{source}: [plugins.{name}] takes no settings, got {sorted(table)}")
                recipe.plugins[name] = PluginEntry(enabled=enabled, config=config)
            for name in recipe.enabled_plugins:
                _validate_plugin(classes[name], recipe.plugins[name].config, recipe, f"{source}: [plugins.{name}]")
        _check_codec(recipe, classes if plugin_tables else {})
        return recipe
    except RecipeError as exc:
        raise RecipeError(_blame_override(str(exc), overrides)) from None


def _table(value: Any, name: str, source: str) -> dict[str, Any]:
    """`value` when it is a TOML table: `model = 3` or `[[model]]` where `[model]` was meant is an error."""
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {name} must be a table ([{name}]), got {_type_name(value)}")
    return value


def _check_codec(recipe: Recipe, classes: dict[str, type]) -> None:
    """`[export] compressor` among the built-in codecs and those the enabled plugins add."""
    from pgolf_core.exporter import BUILTIN_CODECS, check_codec, codec_table

    codecs = list(BUILTIN_CODECS)
    for name in recipe.enabled_plugins:
        if hasattr(classes[name], "pgolf_codecs"):
            codecs += classes[name](recipe.plugins[name].config).pgolf_codecs()
    check_codec(codec_table(codecs), recipe.export.compressor, recipe.export.level, recipe.source)


# Ranges of single values: (section, space-separated keys, lowest, highest, brackets: "[" / "]" allow
# the lowest / the highest).
# Why a table: one rule per line is reviewable, and every message comes out in the same form.
RANGES: list[tuple[str, str, float, float, str]] = [
    ("run", "seed", 0, 2**32 - 1, "[]"),
    ("model", "vocab_size num_layers model_dim num_heads num_kv_heads", 0, math.inf, "(]"),
    ("model", "mlp_mult logit_softcap rope_base", 0, math.inf, "(]"),
    ("model", "mlp_hidden tied_embed_init_std", 0, math.inf, "[]"),
    ("train", "train_batch_tokens train_seq_len adam_eps muon_backend_steps", 0, math.inf, "(]"),
    ("train", "warmup_steps warmdown_iters val_loss_every train_log_every grad_accum_steps", 0, math.inf, "[]"),
    ("train", "grad_clip_norm max_wallclock_seconds muon_momentum_warmup_steps", 0, math.inf, "[]"),
    ("train", "tied_embed_lr embed_lr head_lr matrix_lr scalar_lr", 0, math.inf, "[]"),
    ("train", "adam_weight_decay muon_weight_decay", 0, math.inf, "[]"),
    ("train", "beta1 beta2 muon_momentum muon_momentum_warmup_start", 0, 1, "[)"),
    ("eval", "batch_tokens sliding_batch_seqs chunk_tokens", 0, math.inf, "(]"),
    ("eval", "seq_len sliding_stride max_tokens", 0, math.inf, "[]"),
    ("export", "keep_float_max_numel", 0, math.inf, "[]"),
    ("export", "artifact_limit_bytes", 0, math.inf, "(]"),
    ("export", "clip_quantile", 0, 1, "(]"),
]


def _range_text(low: float, high: float, brackets: str) -> str:
    lo, hi = (int(x) if float(x).is_integer() else x for x in (low, high))
    if high == math.inf:
        return f"expected {'>=' if brackets[0] == '[' else '>'} {lo}"
    return f"expected a value in {brackets[0]}{lo}, {hi}{brackets[1]}"


def check_values(config: Any, where: str) -> None:
    """Every float finite and every string free of NUL characters, in any config dataclass."""
    for f in fields(config):
        value = getattr(config, f.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise RecipeError(f"{where} {f.name}={value!r}: expected a finite number")
            if isinstance(item, str) and "\x00" in item:
                raise RecipeError(f"{where} {f.name}={value!r}: NUL characters are not allowed")


def _check_core(recipe: Recipe) -> None:
    """Ranges and cross-field checks that a single type check cannot express."""
    m, t, e, where = recipe.model, recipe.train, recipe.eval, recipe.source
    for section in CORE_SECTIONS:
        check_values(getattr(recipe, section), f"{where}: [{section}]")
    for section, keys, low, high, brackets in RANGES:
        for key in keys.split():
            value = getattr(getattr(recipe, section), key)
            if not (low <= value <= high) or (value, brackets[0]) == (low, "(") or (value, brackets[1]) == (high, ")"):
                raise RecipeError(f"{where}: [{section}] {key}={value!r}: {_range_text(low, high, brackets)}")

    if t.iterations < 0 and t.max_wallclock_seconds <= 0:
        raise RecipeError(
            f"{where}: [train] iterations={t.iterations} with max_wallclock_seconds={t.max_wallclock_seconds}: "
            f"the run would never stop; expected iterations >= 0, or a wallclock cap > 0"
        )

    for key, by_key in (("model_dim", "num_heads"), ("num_heads", "num_kv_heads")):
        value, by = getattr(m, key), getattr(m, by_key)
        if value % by:
            raise RecipeError(f"{where}: [model] {key}={value} must be divisible by {by_key}={by}")
    if (m.model_dim // m.num_heads) % 2:
        raise RecipeError(
            f"{where}: [model] model_dim={m.model_dim}: head_dim = model_dim / num_heads = "
            f"{m.model_dim // m.num_heads} must be even for RoPE"
        )
    choices = {
        ("model", "attention"): ("auto", "sdpa", "flash"), ("run", "device"): ("auto", "cpu", "cuda"),
        ("run", "compile"): ("auto", "on", "off"), ("eval", "sliding_tail"): ("rescore_tail", "once", "full_windows"),
        ("train", "muon_ns_dtype"): ("bfloat16", "float32"),
    }  # fmt: skip
    for (section, key), allowed in choices.items():
        value = getattr(getattr(recipe, section), key)
        if value not in allowed:
            raise RecipeError(
                f"{where}: [{section}] {key}: expected one of {', '.join(map(repr, allowed))}, got {value!r}"
                f"{did_you_mean(str(value), allowed)}"
            )
    # The per-rank micro-batch must hold whole sequences: world size from the launcher (torchrun sets
    # WORLD_SIZE), accumulation as the loop resolves it (0 = 8 // world).
    world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    accum = grad_accum_steps(t, world, where)
    if t.train_batch_tokens % (per_step := t.train_seq_len * world * accum):
        raise RecipeError(
            f"{where}: [train] train_batch_tokens={t.train_batch_tokens} must be a multiple of train_seq_len x "
            f"world_size x grad_accum_steps = {t.train_seq_len} x {world} x {accum} = {per_step}"
        )
    if (stride := e.sliding_stride) > (eval_seq := e.seq_len or t.train_seq_len):
        raise RecipeError(f"{where}: [eval] sliding_stride={stride}: expected <= the eval sequence length {eval_seq}")
    for key in ("train_pattern", "val_pattern"):
        if not (pattern := getattr(recipe.data, key)) or Path(pattern).is_absolute():
            raise RecipeError(
                f"{where}: [data] {key}={pattern!r}: expected a non-empty file pattern relative to data.path "
                f"(e.g. 'fineweb_train_*.bin')"
            )


def grad_accum_steps(t: TrainConfig, world_size: int, where: str) -> int:
    """Micro-batches per optimizer step: `[train] grad_accum_steps`, or 0 = 8 // world size (the records')."""
    if t.grad_accum_steps == 0 and 8 % world_size:
        raise RecipeError(f"{where}: [train] grad_accum_steps=0 needs a world size dividing 8, got {world_size} "
                          "processes; set train.grad_accum_steps explicitly")  # fmt: skip
    return t.grad_accum_steps or 8 // world_size


def _validate_plugin(cls: type, config: Any, recipe: Recipe, where: str) -> None:
    """Generic checks on a plugin's settings, then its own `validate` (see `pgolf_core.hookspecs`)."""
    if config is not None and dataclasses.is_dataclass(config):
        check_values(config, where)
    try:
        getattr(cls, "validate", lambda *_: None)(config, recipe.model, recipe)
    except (ValueError, PgolfError) as exc:  # third-party plugins validate with ValueError too
        raise RecipeError(f"{where} {exc}") from None


def _blame_override(message: str, overrides: typing.Sequence[str]) -> str:
    """Name the `--set` that supplied the offending value: the error is not in the file."""
    for item in overrides:
        table, _, leaf = _parse_override(item)[0].rpartition(".")
        named = rf"\[{re.escape(table)}\] ({re.escape(leaf)}(?![\w\[])|unknown (key '{re.escape(leaf)}'|plugin))"
        if table and re.search(named, message):
            return f"{message} (from --set {item})"
    return message


def build_config(cls: type, table: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a TOML table, checking keys and value types."""
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in valid:
            raise RecipeError(
                f"{where} unknown key {key!r}{did_you_mean(key, valid)}; valid keys: {', '.join(sorted(valid))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where} {key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list of {_hint_name(item)}, got {_type_name(value)} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected bool (true/false), got {_type_name(value)} {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected int, got {_type_name(value)} {value!r}")
    if not isinstance(value, hint):
        raise RecipeError(f"{where}: expected {_hint_name(hint)}, got {_type_name(value)} {value!r}")
    return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "table"}  # TOML's words


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _read_toml(path: Path) -> dict[str, Any]:
    if "\x00" in str(path):
        raise RecipeError(f"{str(path)!r}: a recipe path cannot contain NUL characters")
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory; expected a recipe .toml file (e.g. recipes/baseline.toml)")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        return tomllib.loads(path.read_bytes().decode())  # what tomllib.load does, UnicodeDecodeError included
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the recipe as UTF-8"
        ) from None


def _parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` as (key, value), the value a TOML literal or else a plain string. A key outside every
    section (`iterations`, `trian.iterations`) is refused here, naming the full dotted key it most likely meant:
    as a table of the recipe it would only meet "unknown table", blamed on the file."""
    key, equals, text = item.partition("=")
    parts = key.strip().split(".")
    sections = [*CORE_SECTIONS, "plugins"]
    if not equals or len(parts) < 2 or not all(parts) or parts[0] not in sections:
        known = [f"{s}.{f.name}" for s, cls in CORE_SECTIONS.items() for f in fields(cls)]
        # the same key in its section; without "=" the key may be right and the value is what is missing
        hint = did_you_mean(key.strip(), [k for k in known if equals and k.endswith(f".{parts[-1]}")])
        raise RecipeError(f"--set {item}: expected section.key=value, the section one of {sections}{hint}")
    try:
        return key.strip(), tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), text  # bare words are strings: --set data.path=/data/fineweb10B_sp1024


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set `section.key` (or `plugins.<name>.key`) in the raw TOML tables; `_parse_override` checked its form."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{where}: {part!r} is a value, not a table")
    node[parts[-1]] = value


def dump_toml(data: dict[str, Any]) -> str:
    """Write nested dicts of scalars and lists as TOML (tables for dicts, dotted for nesting)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix and (scalars or not table):
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
