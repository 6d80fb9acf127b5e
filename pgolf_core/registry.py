"""Plugin discovery, recipes with their plugins, and the per-run plugin manager.

Built-in and third-party plugins are found the same way: the `pgolf.plugins` entry-point group,
whose values point at plugin classes: subclasses of `pgolf_core.Plugin`, whose docstring lists
every attribute the core reads. Its methods decorated with `pgolf_core.hookimpl` are its hooks.

Only plugins named (and enabled) in the recipe are registered: "disabled" means "not
registered", so an ablation cannot leave half-active state behind.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pluggy
from torch import nn

from pgolf_core import hookspecs
from pgolf_core.exporter import BUILTIN_CODECS, ExportStack, Int8Format, export_stack
from pgolf_core.hookspecs import hookimpl
from pgolf_core.model import MLP, CastedLinear, ModelSpec, Rotary
from pgolf_core.recipe import read_recipe
from pgolf_core.types import Codec, ExportFormat, PgolfError, Plugin, Recipe, RecipeError, did_you_mean

# ---------------------------------------------------------------- the catalog's defaults
# One built-in plugin registered before every other, so that pluggy calls it last: an exclusive hook's default
# answers only when no enabled plugin did. Why a plugin and not `if answer is None` branches in the core: the
# defaults are then listed, ordered and documented like every other answer, and a reader finds all of them here.


class Defaults(Plugin):
    """The naive baseline's parts: full RoPE, relu² MLP, CastedLinear, int8 export, zlib and zstd."""

    name = "defaults"  # (no version or order: it is registered first, by hand, and never listed)

    @hookimpl
    def pgolf_rotary(self, spec: ModelSpec, layer: int) -> nn.Module:
        return Rotary(spec.head_dim, base=spec.rope_base)

    @hookimpl
    def pgolf_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
        return MLP(spec)

    @hookimpl
    def pgolf_linear(self, spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module:
        return CastedLinear(in_features, out_features)

    @hookimpl
    def pgolf_export_format(self, recipe: Recipe) -> ExportFormat:
        return Int8Format(recipe.export.keep_float_max_numel, recipe.export.clip_quantile)

    @hookimpl
    def pgolf_codecs(self) -> list[Codec]:
        return list(BUILTIN_CODECS)


# ---------------------------------------------------------------- discovery, recipes with their plugins, the manager


class PluginSource(NamedTuple):
    """Where a plugin comes from: an entry point of a distribution, or a local file."""

    name: str
    origin: str  # distribution name or file path
    load: Any  # zero-argument callable returning the plugin class
    entry: str = ""  # the entry point's `module:Class` ("" for a file: its PLUGIN names the class)


def discover(plugin_dirs: Sequence[str | Path] = ()) -> dict[str, PluginSource]:
    """All installed plugins (entry points) plus those in `plugin_dirs` (one class per `*.py`
    file, exported as `PLUGIN`). Nothing is imported yet. A file named like an installed plugin
    is an error, not a silent replacement: a run would otherwise use one of two codes unsaid."""
    found: dict[str, PluginSource] = {}
    for ep in importlib.metadata.entry_points(group="pgolf.plugins"):
        found[ep.name] = PluginSource(ep.name, getattr(ep.dist, "name", "?"), ep.load, ep.value)
    for directory in map(Path, plugin_dirs):
        if not directory.is_dir():
            raise PgolfError(f"--plugins-dir {directory}: not a directory")
        for file in sorted(directory.glob("*.py")):
            if (other := found.get(file.stem)) is not None:
                clash = f"{file} would shadow the plugin {file.stem!r} from {other.origin}"
                raise PgolfError(f"--plugins-dir {directory}: {clash}; rename the file and its plugin's name")
            found[file.stem] = PluginSource(file.stem, str(file), functools.partial(_load_file, file))
    return found


def _load_file(file: Path) -> Any:
    """The `PLUGIN` class of a local plugin file, imported once per process as module `pgolf_local_<stem>`
    (like any import: loading it again must give the same `Config` class, or configs would not compare)."""
    loaded = sys.modules.get(f"pgolf_local_{file.stem}")  # (a failed import left no PLUGIN: it is retried)
    if loaded is not None and getattr(loaded, "__file__", None) == str(file) and hasattr(loaded, "PLUGIN"):
        return loaded.PLUGIN
    spec = importlib.util.spec_from_file_location(f"pgolf_local_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so inspect, pickle and dataclasses can find it like any module
    spec.loader.exec_module(module)
    return getattr(module, "PLUGIN", None)  # (none: load_class says what PLUGIN must be)


def load_class(source: PluginSource) -> type[Plugin]:
    """Import one plugin class; a failure is a clear error naming the plugin, where it comes from
    (distribution or file), the line that failed and the fix."""
    try:
        cls = source.load()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import error of third-party code, even sys.exit
        frames, dist = traceback.extract_tb(exc.__traceback__), source.origin
        at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        fix = f"fix {dist}, or move it out of the --plugins-dir folder" if dist.endswith(".py") else (
            f"fix its code or install its missing dependency, then reinstall it (pip install {dist}), "
            f"or uninstall it (pip uninstall {dist})"
        )  # fmt: skip
        raise PgolfError(
            f"plugin {source.name!r} (from {dist}) failed to load: {type(exc).__name__}: {exc}{at}; {fix}"
        ) from None
    check_plugin_class(cls, source)
    check_config_fields(cls, source)
    return cls


def check_plugin_class(cls: Any, source: PluginSource) -> None:
    """What the entry point (or a file's PLUGIN) names is a plugin class: one with a hook, its name and a
    version. The common paste error points it at the technique's torch module, which would load and do nothing."""
    check_hook_names(cls, source)
    if not inspect.isclass(cls) or issubclass(cls, nn.Module):
        problem = f"a torch module ({cls.__qualname__})" if inspect.isclass(cls) else f"{cls!r}, not a class"
    elif not issubclass(cls, Plugin):
        problem = f"{cls.__qualname__}, which is not a subclass of pgolf_core.Plugin"
    elif not hooks_of(cls):
        problem = f"{cls.__qualname__}, which has no pgolf_* hook method, so it would do nothing"
    elif cls.name != source.name or not cls.version:
        problem = f"{cls.__qualname__}, whose name or version is missing or not the plugin's"
    else:
        return
    pointer = f"entry point {source.name} = {source.entry}" if source.entry else "file's PLUGIN"
    raise PgolfError(
        f"plugin {source.name!r} (from {source.origin}): the {pointer} points at {problem}; point it at the plugin "
        f'class (a pgolf_core.Plugin with name = {source.name!r}, a version such as "0.1.0", hooks decorated with '
        "@pgolf_core.hookimpl)" + (" in its pyproject.toml, then reinstall it" if source.entry else "")
    )


def check_config_fields(cls: type[Plugin], source: PluginSource) -> None:
    """A `Config` value without a type annotation is a plain class attribute, not a dataclass field:
    the setting would silently not exist (its TOML key an "unknown key")."""
    config = cls.Config
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return
    annotated = {k for c in inspect.getmro(config) for k in getattr(c, "__annotations__", {})}
    values = (bool, int, float, str, list, tuple)  # a setting's value; methods, properties, ... are not settings
    bare = [(k, v) for k, v in vars(config).items() if isinstance(v, values) and not (k[0] == "_" or k in annotated)]
    for key, value in bare[:1]:
        raise PgolfError(
            f"plugin {source.name!r} (from {source.origin}): Config.{key} = {value!r} has no type annotation, so it "
            f"is not a setting ([plugins.{source.name}] {key} would be an unknown key); write "
            f"`{key}: {type(value).__name__} = {value!r}`"
        )


def plugin_classes(
    names: Sequence[str], source: str, plugin_dirs: Sequence[str | Path] = ()
) -> dict[str, type[Plugin]]:
    """Load the classes of the plugins a recipe names; unknown names are recipe errors (the first one named)."""
    available = discover(plugin_dirs)
    for name in [name for name in names if name not in available][:1]:
        raise RecipeError(
            f"{source}: [plugins.{name}] unknown plugin {name!r}{did_you_mean(name, available)}; "
            f"installed: {', '.join(sorted(available)) or 'none'} (see `pgolf plugins`)"
        )
    return {name: load_class(available[name]) for name in names}


def load_recipe(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    enable: Sequence[str] = (),
    disable: Sequence[str] = (),
    smoke: bool = False,
    plugin_dirs: Sequence[str | Path] = (),
) -> Recipe:
    """A recipe file read, validated and resolved with its plugins (installed, or files in `plugin_dirs`).

    `overrides` are `section.key=value` strings (`plugins.ema.decay=0.998`), the value a TOML literal or
    else a plain string; `enable`/`disable` switch plugin tables on and off; `smoke` shrinks the recipe
    for a CPU (`pgolf_core.recipe.SMOKE_OVERRIDES`). Every check that needs no data or hardware runs here:
    values, plugin settings, two plugins answering one exclusive hook, the codec, the export plan."""
    classes = functools.partial(plugin_classes, plugin_dirs=plugin_dirs)
    recipe = read_recipe(path, overrides, plugin_classes=classes, enable=enable, disable=disable, smoke=smoke)
    plugin_parts(recipe, plugin_dirs)
    return recipe


def version_order(plugin: Any) -> dict[str, Any]:
    """A plugin's (or plugin class's) version and order."""
    return {"version": str(plugin.version), "order": int(plugin.order)}


class Manager(pluggy.PluginManager):
    """pluggy's manager, except that of a plugin with several forms it registers only the hooks of the
    configured one (`Plugin.forms`): the other form's hooks do not exist for this run."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        form = plugin.forms(plugin.config) if isinstance(plugin, Plugin) else None
        return None if form is not None and name not in form else super().parse_hookimpl_opts(plugin, name)


class Plugins(NamedTuple):
    """A run's plugin manager, its plugins in hook order, and the export parts they make up."""

    pm: pluggy.PluginManager
    ordered: list[Any]
    export: ExportStack


def plugin_parts(recipe: Recipe, plugin_dirs: Sequence[str | Path] = ()) -> Plugins:
    """The recipe's plugins, loaded and checked together, and its export parts (format, codec, plan)."""
    pm = create_manager(recipe, plugin_dirs)
    return Plugins(pm, ordered_plugins(pm), export_stack(pm, recipe))


def create_manager(recipe: Any, plugin_dirs: Sequence[str | Path] = ()) -> pluggy.PluginManager:
    """One plugin manager per run, holding the recipe's enabled plugins in `(order, name)` order.

    Two enabled plugins answering the same exclusive hook is an error naming both.
    """
    pm = Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Defaults(), name=Defaults.name)  # first registered = called last
    available = discover(plugin_dirs)
    classes = plugin_classes(recipe.enabled_plugins, recipe.source, plugin_dirs)  # load_class checked their hooks
    plugins = [cls(recipe.plugins[name].config) for name, cls in classes.items()]
    # pluggy calls the most recently registered implementation first: register in reverse.
    for plugin in sorted(plugins, key=lambda p: (int(p.order), p.name), reverse=True):
        origin = available[plugin.name].origin
        # a form naming a hook its class lacks would register nothing, silently
        if unknown := sorted(set(plugin.forms(plugin.config) or ()) - set(hooks_of(plugin))):
            raise PgolfError(f"plugin {plugin.name!r} (from {origin}): forms() names {unknown}, not its hooks")
        try:
            pm.register(plugin, name=plugin.name)
        except pluggy.PluginValidationError as exc:  # a known hook with arguments the catalog lacks
            raise PgolfError(f"plugin {plugin.name!r} (from {origin}): {exc}") from None
    pm.check_pending()  # (load_class's check_hook_names has already named any method pluggy would reject here)
    for hook_name in hookspecs.EXCLUSIVE_HOOKS:
        names = sorted({i.plugin_name for i in getattr(pm.hook, hook_name).get_hookimpls()} - {Defaults.name})
        if len(names) > 1:
            origins = ", ".join(f"{n!r} from {available[n].origin}" for n in names)
            raise RecipeError(
                f"{recipe.source}: plugins {' and '.join(repr(n) for n in names)} both implement the "
                f"exclusive hook {hook_name} ({origins}); only one plugin may answer it: enable only one of "
                f"them (--disable NAME, or remove its [plugins.NAME] table)"
            )
    return pm


def check_hook_names(cls: type, source: PluginSource) -> None:
    """Every `pgolf_*` method is a catalog hook marked `@hookimpl`: a misspelled name or a missing
    decorator would otherwise register nothing and fail silently."""
    catalog = hookspecs.catalog()
    for attr in [attr for attr in dir(cls) if attr.startswith("pgolf_") and callable(getattr(cls, attr))]:
        where = f"plugin {source.name!r} (from {source.origin}): method {attr}"
        if attr not in catalog:
            fix = "rename it to a hook of docs/hooks.md, or give a helper method a name without the pgolf_ prefix"
            raise PgolfError(f"{where} is not a hook of the catalog{did_you_mean(attr, catalog)}: {fix}")
        if not hasattr(getattr(cls, attr), "pgolf_impl"):
            raise PgolfError(f"{where} is not decorated with @pgolf_core.hookimpl, so it would never be called")


def ordered_plugins(pm: pluggy.PluginManager) -> list[Any]:
    """The recipe's plugins in hook-call order (the built-in defaults, always last, left out)."""
    return sorted((p for p in pm.get_plugins() if not isinstance(p, Defaults)), key=lambda p: (int(p.order), p.name))


def hooks_of(c: Any) -> list[str]:
    """Names of the hooks a plugin class (or plugin) implements."""
    return sorted(name for name in dir(c) if name.startswith("pgolf_") and hasattr(getattr(c, name), "pgolf_impl"))


def describe(plugin_dirs: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """One record per installed plugin for `pgolf plugins`; a broken plugin is reported, not fatal."""
    rows: list[dict[str, Any]] = []
    for name, source in sorted(discover(plugin_dirs).items()):
        row: dict[str, Any] = {"name": name, "origin": source.origin}
        try:
            cls = load_class(source)
            config = cls.Config
            row.update(
                **version_order(cls),
                hooks=hooks_of(cls),
                config=({f.name: _field_default(f) for f in dataclasses.fields(config)} if config is not None else {}),
                doc=(inspect.getdoc(cls) or "").split("\n")[0],
            )
        except Exception as exc:  # noqa: BLE001 - a load error, or a malformed class (Config not a dataclass, ...)
            malformed = f"plugin {name!r} (from {source.origin}) is malformed: {type(exc).__name__}: {exc}"
            row["error"] = str(exc) if isinstance(exc, PgolfError) else malformed
        rows.append(row)
    return rows


def _field_default(f: dataclasses.Field) -> Any:
    """A setting's default: its value, what its factory makes, or None for a required setting."""
    default = f.default_factory() if callable(f.default_factory) else f.default
    return None if default is dataclasses.MISSING else default


def noncompliance(pm: pluggy.PluginManager) -> str:
    """Why a run's score breaks the challenge's eval rule ("" when it does not)."""
    names = ", ".join(impl.plugin_name for impl in pm.hook.pgolf_eval_prescore.get_hookimpls())
    return f"{names} adapt(s) on validation tokens before scoring them (pgolf_eval_prescore)" if names else ""
