"""Recipes: TOML files turned into typed, validated configuration (the `Recipe` of `pgolf_core.types`).

A recipe has one table per core section (`[run]`, `[model]`, `[train]`, `[eval]`, `[export]`,
`[data]`) and one `[plugins.<name>]` table per plugin. Every value is checked against the
dataclass that owns it, its declared type (`Annotated` ranges, `Literal` choices) included, so a typo
fails loudly (file, table, key, expected value, nearest valid key) instead of silently training the
wrong model. Defaults are those of the naive baseline record (`train_gpt.py` at the root of
openai/parameter-golf). The plugin classes come from the caller (`pgolf_core.registry.load_recipe`):
this module knows no registry, no hardware and no world size.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from pgolf_core.types import (
    CORE_SECTIONS,
    ModelConfig,
    PgolfError,
    Plugin,
    PluginEntry,
    Range,
    Recipe,
    RecipeError,
    did_you_mean,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

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


def read_recipe(
    path: str | Path | None,
    overrides: typing.Sequence[str] = (),
    *,
    plugin_classes: typing.Callable[[list[str], str], dict[str, type[Plugin]]],
    enable: typing.Sequence[str] = (),
    disable: typing.Sequence[str] = (),
    smoke: bool = False,
) -> Recipe:
    """Read a TOML recipe, apply smoke settings and overrides, and validate every value.

    `overrides` are `section.key=value` strings (`plugins.ema.decay=0.998` for plugins); the value
    is parsed as a TOML literal and falls back to a plain string. `plugin_classes(names, source)`
    returns the classes of the named plugins (an unknown name is its error).
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
            plugin_classes([name], flag)  # an unknown plugin fails here
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

        classes = plugin_classes(sorted(plugin_tables), source)
        for name, cls in classes.items():
            table = dict(_table(plugin_tables[name], f"plugins.{name}", source))
            if smoke:
                # A plugin's own smoke settings (class attribute SMOKE, e.g. a shorter EMA horizon
                # for a few hundred steps) beat the recipe; the user's --set beats both.
                for key, value in cls.SMOKE.items():
                    if f"plugins.{name}.{key}" not in user_set:
                        table[key] = value
            if not isinstance(enabled := table.pop("enabled", True), bool):
                raise RecipeError(f"{source}: [plugins.{name}] enabled: expected bool, got {_type_name(enabled)}")
            config = build_config(cls.Config, table, f"{source}: [plugins.{name}]") if cls.Config else None
            if cls.Config is None and table:
                raise RecipeError(f"{source}: [plugins.{name}] takes no settings, got {sorted(table)}")
            recipe.plugins[name] = PluginEntry(enabled=enabled, config=config)
        for name in recipe.enabled_plugins:
            try:
                classes[name].check(recipe.plugins[name].config, recipe)
            except PgolfError as exc:
                raise RecipeError(f"{source}: [plugins.{name}] {exc}") from None
        return recipe
    except RecipeError as exc:
        raise RecipeError(_blame_override(str(exc), overrides)) from None


def _table(value: Any, name: str, source: str) -> dict[str, Any]:
    """`value` when it is a TOML table: `model = 3` or `[[model]]` where `[model]` was meant is an error."""
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {name} must be a table ([{name}]), got {_type_name(value)}")
    return value


def check_settings(config: Any, where: str) -> None:
    """Every value of a settings dataclass (a core section or a plugin's `Config`) against its declared
    type: floats finite, strings free of NUL characters, numbers inside their `Annotated` `Range`."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]  # `Annotated[int, Range(0)] | None` bounds its int too
        bounds = [
            m for h in (hint, *typing.get_args(hint)) for m in getattr(h, "__metadata__", ()) if isinstance(m, Range)
        ]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise RecipeError(f"{where} {f.name}={value!r}: expected a finite number")
            if isinstance(item, str) and "\x00" in item:
                raise RecipeError(f"{where} {f.name}={value!r}: NUL characters are not allowed")
            for bound in bounds:
                if item is not None and not bound.admits(item):
                    raise RecipeError(f"{where} {f.name}={item!r}: {bound.text()}")


def _check_core(recipe: Recipe) -> None:
    """The cross-field checks that a field's type cannot express."""
    m, t, e, where = recipe.model, recipe.train, recipe.eval, recipe.source
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
    if (stride := e.sliding_stride) > (eval_seq := e.seq_len or t.train_seq_len):
        raise RecipeError(f"{where}: [eval] sliding_stride={stride}: expected <= the eval sequence length {eval_seq}")
    for key in ("train_pattern", "val_pattern", "val_bytes_pattern"):
        if not (pattern := getattr(recipe.data, key)) and key != "val_bytes_pattern" or Path(pattern).is_absolute():
            raise RecipeError(
                f"{where}: [data] {key}={pattern!r}: expected a file pattern relative to data.path "
                f"(e.g. 'fineweb_train_*.bin'; only val_bytes_pattern may be empty)"
            )


def grad_accum_steps(t: Any, world_size: int, where: str) -> int:
    """Micro-batches per optimizer step: `[train] grad_accum_steps`, or 0 = 8 // world size (the records'). The
    per-rank micro-batch must hold whole sequences. Checked where the world size is known (the launcher's)."""
    if t.grad_accum_steps == 0 and 8 % world_size:
        raise RecipeError(
            f"{where}: [train] grad_accum_steps=0 needs a world size dividing 8, got {world_size} "
            "processes; set train.grad_accum_steps explicitly"
        )
    accum = t.grad_accum_steps or 8 // world_size
    if t.train_batch_tokens % (per_step := t.train_seq_len * world_size * accum):
        raise RecipeError(
            f"{where}: [train] train_batch_tokens={t.train_batch_tokens} must be a multiple of train_seq_len x "
            f"world_size x grad_accum_steps = {t.train_seq_len} x {world_size} x {accum} = {per_step}"
        )
    return accum


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
    config = cls(**kwargs)
    check_settings(config, where)
    return config


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list of {_hint_name(item)}, got {_type_name(value)} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in (allowed := typing.get_args(hint)):
            near = did_you_mean(str(value), allowed)
            raise RecipeError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}{near}")
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
