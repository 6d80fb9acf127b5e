"""The public types of pgolf: what a recipe holds, what hooks receive, what a plugin declares.

The bottom layer of the core: it imports nothing else from pgolf, so the hook catalog, every core
module and every plugin can import it at run time without an import cycle. Every name here is
exported by `pgolf_core`; a plugin typed with them passes `mypy --strict`.

    errors     PgolfError (the one exception type for a user's mistake: exit 2, no traceback)
    settings   Range, Recipe and its sections ([run] [model] [train] [eval] [export] [data])
    run        Env (where a rank runs), TrainState (train hooks), ValChunk (eval hooks), Model, Optimizers
    roles      ParamRole, Roles, declare_role, declare_all, role_of, collect_roles, is_control
    export     TensorPlan, ExportPlan, ExportContext, ExportFormat, Correction, Codec
    plugins    Plugin (the contract: every optional attribute with its default), Order (when it runs)
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

PGOLF_VERSION = "0.1.0"  # pgolf_core.__version__, in every run's summary

# ---------------------------------------------------------------- errors


class PgolfError(Exception):
    """Something the user can fix (a bad recipe, a corrupt shard, a missing optional package), with a
    message that says how. The CLI prints it and exits 2 without a traceback; any other exception is a
    bug in pgolf (or in a plugin) and keeps its traceback."""


class RecipeError(PgolfError):
    """A recipe (TOML file or command-line override) is invalid."""


class DataError(PgolfError):
    """A data file (shard, tokenizer, text) is missing or malformed."""


class RunFault(Exception):
    """The run started and then failed (non-finite loss, a write that failed): exit 1, its files kept."""


class WriteFault(OSError):
    """Writing one of the run's files failed (disk full, I/O error); the file is named."""

    def __init__(self, path: str | Path, exc: OSError):
        super().__init__(exc.errno, f"could not write {path}: {exc.strerror or exc}", str(path))

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ...: 'path'"
        return str(self.strerror)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Range:
    """The valid values of a number setting, declared in its type: `Annotated[int, Range(0)]`.

    `low`/`high` bound it (unbounded by default); `open` names the bounds excluded ("low", "high", "both").
    One checker (`pgolf_core.recipe.check_settings`) reads it for the core's sections and every
    plugin's `Config`, once, when the recipe loads; its message names the file, table, key and range.
    """

    low: float = -math.inf
    high: float = math.inf
    open: Literal["", "low", "high", "both"] = ""

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open in ("low", "both") else value >= self.low
        return above and (value < self.high if self.open in ("high", "both") else value <= self.high)

    def text(self) -> str:
        lo, hi = (int(x) if math.isfinite(x) and float(x).is_integer() else x for x in (self.low, self.high))
        lo_open, hi_open = self.open in ("low", "both"), self.open in ("high", "both")
        if self.high == math.inf:
            return f"expected {'>' if lo_open else '>='} {lo}"
        if self.low == -math.inf:
            return f"expected {'<' if hi_open else '<='} {hi}"
        return f"expected a value in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


@dataclass
class RunConfig:
    name: str = "run"
    seed: Annotated[int, Range(0, 2**32 - 1)] = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA, off for CPU
    out_dir: str = "runs"


@dataclass
class ModelConfig:
    vocab_size: Annotated[int, Range(0, open="low")] = 1024
    num_layers: Annotated[int, Range(0, open="low")] = 9
    model_dim: Annotated[int, Range(0, open="low")] = 512
    num_heads: Annotated[int, Range(0, open="low")] = 8
    num_kv_heads: Annotated[int, Range(0, open="low")] = 4
    mlp_mult: Annotated[float, Range(0, open="low")] = 2.0
    mlp_hidden: Annotated[int, Range(0)] = 0  # > 0 overrides mlp_mult * model_dim (PR #63 uses 1344)
    tie_embeddings: bool = True
    tied_embed_init_std: Annotated[float, Range(0)] = 0.005
    logit_softcap: Annotated[float, Range(0, open="low")] = 30.0
    rope_base: Annotated[float, Range(0, open="low")] = 10000.0
    qk_gain_init: float = 1.5
    attention: Literal["auto", "sdpa", "flash"] = "auto"


@dataclass
class TrainConfig:
    iterations: int = 20000
    warmup_steps: Annotated[int, Range(0)] = 20
    train_batch_tokens: Annotated[int, Range(0, open="low")] = 524_288
    train_seq_len: Annotated[int, Range(0, open="low")] = 1024
    max_wallclock_seconds: Annotated[float, Range(0)] = 600.0
    warmdown_iters: Annotated[int, Range(0)] = 1200
    val_loss_every: Annotated[int, Range(0)] = 200
    train_log_every: Annotated[int, Range(0)] = 50
    grad_accum_steps: Annotated[int, Range(0)] = 0  # 0 = 8 // world_size, as in the records
    grad_clip_norm: Annotated[float, Range(0)] = 0.0
    tied_embed_lr: Annotated[float, Range(0)] = 0.05
    embed_lr: Annotated[float, Range(0)] = 0.6
    head_lr: Annotated[float, Range(0)] = 0.008
    matrix_lr: Annotated[float, Range(0)] = 0.04
    scalar_lr: Annotated[float, Range(0)] = 0.04
    beta1: Annotated[float, Range(0, 1, open="high")] = 0.9
    beta2: Annotated[float, Range(0, 1, open="high")] = 0.95
    adam_eps: Annotated[float, Range(0, open="low")] = 1e-8
    adam_weight_decay: Annotated[float, Range(0)] = 0.0  # > 0 switches the token and scalar groups to AdamW
    muon_momentum: Annotated[float, Range(0, 1, open="high")] = 0.95
    muon_momentum_warmup_start: Annotated[float, Range(0, 1, open="high")] = 0.85
    muon_momentum_warmup_steps: Annotated[int, Range(0)] = 500
    muon_backend_steps: Annotated[int, Range(0, open="low")] = 5
    muon_weight_decay: Annotated[float, Range(0)] = 0.0
    # The records orthogonalize in bfloat16 (fast on GPUs). CPUs without bf16 matmul units run it
    # 30-100x slower than float32, so `--smoke` switches to float32; full recipes keep the record's.
    muon_ns_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    # On CUDA the records cast the model to bf16 and restore linears and control tensors to fp32,
    # so embedding tables train as bf16 parameters; true keeps them fp32.
    fp32_embeddings: bool = False


@dataclass
class EvalConfig:
    seq_len: Annotated[int, Range(0)] = 0  # 0 = train_seq_len
    batch_tokens: Annotated[int, Range(0, open="low")] = 524_288
    sliding_stride: Annotated[int, Range(0)] = 0  # 0 = no sliding-window eval
    sliding_batch_seqs: Annotated[int, Range(0, open="low")] = 32
    # test-time training: the validation tokens scored per chunk before the model adapts on them
    chunk_tokens: Annotated[int, Range(0, open="low")] = 32_768
    # Which windows the sliding eval keeps at the end of the stream (see evaluation.window_starts):
    # "rescore_tail": as the records' plain sliding eval (windows clipped at the end re-score the last positions);
    # "drop_short": windows shorter than the stride dropped, the first kept (PR #549's test-time-training eval);
    # "once": every position scored exactly once (tail-duplication quirk);
    # "full_windows": PR #63's own loop (full windows only, a gap after the first).
    sliding_tail: Literal["rescore_tail", "drop_short", "once", "full_windows"] = "rescore_tail"
    max_tokens: Annotated[int, Range(0)] = 0  # 0 = the whole validation set; > 0 truncates it (smoke runs)


@dataclass
class ExportConfig:
    compressor: str = "zlib"  # zlib | zstd, or a codec an enabled plugin adds (brotli, lzma)
    level: int = 9
    keep_float_max_numel: Annotated[int, Range(0)] = 65_536
    clip_quantile: Annotated[float, Range(0, 1, open="low")] = 0.9999984
    artifact_limit_bytes: Annotated[int, Range(0, open="low")] = 16_000_000


@dataclass
class DataConfig:
    path: str = ""  # directory of fineweb_{train,val}_*.bin; empty = the embedded sample data
    tokenizer: str = ""  # SentencePiece .model; empty = the sample tokenizer / <path>/tokenizer.model
    train_pattern: str = "fineweb_train_*.bin"
    val_pattern: str = "fineweb_val_*.bin"
    val_bytes_pattern: str = ""  # per-token byte sidecars ("fineweb_val_bytes_*.bin", CaseOps); "": the byte tables


@dataclass
class PluginEntry:
    """One `[plugins.<name>]` table: whether it is enabled and its validated config object."""

    enabled: bool
    config: Any


@dataclass
class Recipe:
    """A resolved recipe: the core's sections and the plugin tables, every value checked
    (`pgolf_core.load_recipe` makes one)."""

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
        plugins = {
            name: {"enabled": e.enabled, **(dataclasses.asdict(e.config) if e.config is not None else {})}
            for name, e in sorted(self.plugins.items())
        }
        return {**{name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}, "plugins": plugins}

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode("utf-8")).hexdigest()


# The core's sections by table name, in `Recipe`'s order: its fields that hold a settings dataclass.
CORE_SECTIONS: dict[str, type] = {name: type(v) for name, v in vars(Recipe()).items() if dataclasses.is_dataclass(v)}


def dump_toml(data: dict[str, Any]) -> str:
    """Nested dicts of scalars and lists as TOML (tables for dicts, dotted for nesting)."""
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


# ---------------------------------------------------------------- where a run executes


@dataclass(frozen=True)
class Env:
    """Where one rank runs and scores: its device, its share of rows/windows, the autocast dtype (None:
    off) and whether a process group exists (torchrun; the run's setup makes it)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None
    distributed: bool = False
    on_batch: Callable[[], None] = lambda: None  # after each scored batch (the run's progress display)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def share(self, n: int) -> tuple[int, int]:
        """Contiguous share `[n*r/W, n*(r+1)/W)` of `n` items, as every record splits rows and windows."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def autocast(self) -> torch.autocast:
        """Autocast to `autocast_dtype`; when it is None, a disabled autocast (which also turns off one around it)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def average(self, tensors: Sequence[Tensor | None]) -> None:
        """Mean over ranks in place (gradients of a test-time-training step); a no-op in one process."""
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            for t in tensors:
                if t is not None:
                    dist.all_reduce(t, op=dist.ReduceOp.AVG)


class Model(nn.Module):
    """The model as hooks see it (the core's GPT is one). `blocks` are its layers; `set_layer_orders`
    gives it extra layer schedules (depth recurrence) and `layer_phase` picks the one that runs;
    `forward(input_ids, target_ids)` is the mean loss, `forward_logits(input_ids)` the logits."""

    blocks: nn.ModuleList
    layer_phase: int
    set_layer_orders: Callable[[list[list[int]]], None]
    forward_logits: Callable[[Tensor], Tensor]


class Optimizers(Protocol):
    """The run's optimizers; `all` lists each one (their param groups hold `base_lr`)."""

    all: list[torch.optim.Optimizer]


@dataclass
class TrainState:
    """What train hooks see. `report(key, value)` logs `key:value` and records a metric."""

    recipe: Recipe
    model: Model  # the uncompiled model (its parameters are the trained ones)
    optimizers: Optimizers
    env: Env
    roles: Roles = field(default_factory=dict)
    step: int = 0
    lr_scale: float = 1.0
    elapsed_ms: float = 0.0
    reports: dict[str, Any] = field(default_factory=dict)
    on_report: Callable[[str, Any, int], None] = field(default=lambda key, value, step: None, repr=False)

    def report(self, key: str, value: Any) -> None:
        self.reports[key] = value
        self.on_report(key, value, self.step)


@dataclass
class ValChunk:
    """Validation tokens handed to an eval hook: inputs `tokens[:-1]`, targets `tokens[1:]` (int64, on
    the eval device). For `pgolf_eval_adapt` every target was scored before the chunk was made
    (`scored`); `pgolf_eval_prescore` gets the whole unscored stream (`scored=False`). Chunk `index` of
    `count`; `env` says where this rank runs (device, share); `seq_len` is the eval's sequence length;
    `report(key, value)` logs."""

    tokens: Tensor
    index: int
    count: int
    env: Env
    scored: bool = True
    report: Callable[[str, Any], None] = field(default=lambda key, value: None, repr=False)
    seq_len: int = 0

    def rows(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """This rank's contiguous share of the chunk's full rows `(x, y)` [rows, seq_len] (as the records
        split a chunk for training; a partial last row is dropped)."""
        first, last = self.env.share((self.tokens.numel() - 1) // seq_len)
        local = self.tokens[first * seq_len : last * seq_len + 1]
        return local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)


# ---------------------------------------------------------------- export


@dataclass(frozen=True)
class ParamRole:
    """`group`: optimizer group ("token", "matrix" = Muon, "scalar", "head"; None = the rule).
    `control`: a small control tensor: scalar group, fp32 under the bf16 cast, fp32 in export.
    `adam`: an Adam of its own (`lr`, `betas_2`, `weight_decay`), outside every group.
    `zero_init`: zeroed after the build (output projections)."""

    group: str | None = None
    control: bool = False
    adam: Mapping[str, float] | None = None
    zero_init: bool = False


Roles = Mapping[str, ParamRole]


# ---------------------------------------------------------------- parameter roles
# Parameter roles: what each parameter is, declared once where it is built, read everywhere.
#
# The optimizer (which group, which Adam), the GPU precision cast (what stays fp32), the init
# (zero-init output projections) and every exporter (what passes through as fp32) read the same
# table, collected once after the build by `collect_roles`. A module declares its own parameters:
#
#     declare_role(self, "scale", control=True)               # BigramHash's learned scale
#     declare_role(self.proj, "weight", zero_init=True)       # an output projection
#     declare_role(self, "gate", group="scalar", adam={"lr": 0.03, "betas_2": 0.95, "weight_decay": 0.0})
#
# Why one table: the records decided all of this with name substrings (their CONTROL_TENSOR_NAME_PATTERNS)
# read in five places; a plugin author had to know them and add to them. A parameter without a
# declared role gets the baseline's rule (`group_of`).

GROUPS = ("token", "matrix", "scalar", "head")


NO_ROLE = ParamRole()


def declare_role(module: nn.Module, param: str, **role: Any) -> None:
    """Declare the role of `module.<param>`; the table lives on the module under `param_roles`."""
    made = ParamRole(**role)
    if made.group is not None and made.group not in GROUPS:
        raise PgolfError(f"declare_role({param!r}): group {made.group!r} is not one of {', '.join(GROUPS)}")
    module.__dict__.setdefault("param_roles", {})[param] = made


def role_of(module: nn.Module, param: str) -> ParamRole:
    return module.__dict__.get("param_roles", {}).get(param, NO_ROLE)


def collect_roles(model: nn.Module) -> dict[str, ParamRole]:
    """Full parameter name (and state-dict key, where the model renames it) -> declared role."""
    out: dict[str, ParamRole] = {}
    for prefix, module in model.named_modules():
        for param, role in module.__dict__.get("param_roles", {}).items():
            out[f"{prefix}.{param}" if prefix else param] = role
    state_key = getattr(model, "state_key", str)  # also under the state-dict key (exporters read those)
    return {**out, **{state_key(name): role for name, role in out.items()}}


def group_of(name: str, param: Tensor, roles: Roles) -> str:
    """The optimizer group: the declared one, else the baseline's rule (token embedding, head,
    control tensors and vectors in the blocks -> Adam groups, block matrices -> Muon)."""
    role = roles.get(name, NO_ROLE)
    if role.group:
        return role.group
    if name == "tok_emb.weight":
        return "token"
    if name.startswith("lm_head."):
        return "head"
    if role.control:
        return "scalar"
    if name.startswith("blocks."):
        return "matrix" if param.ndim == 2 else "scalar"
    raise PgolfError(
        f"parameter {name!r} has no optimizer group: declare it where it is built, e.g. "
        "`pgolf_core.declare_role(module, 'weight', group='matrix')` (token, matrix, scalar, head)"
    )


def is_control(name: str, roles: Roles) -> bool:
    return roles.get(name, NO_ROLE).control


def declare_all(module: nn.Module, **role: Any) -> None:
    """Declare one role for every parameter of `module` and its children."""
    for owner in module.modules():
        for param, _ in owner.named_parameters(recurse=False):
            declare_role(owner, param, **role)


@dataclass
class TensorPlan:
    """How one tensor is exported; `pgolf_export_plan` implementations fill it in.

    `clip_percentile`: clip each row at this quantile of |w| (GPTQ-lite's search result).
    `row_clip`: each row's absolute clip |w| <= c_r, one value per row [rows] (SDClip: k * std(row)).
    `q`/`scale`: integers and scales already computed by the plan's author (GPTQ-lite keeps its
    search's winners), used as they are. A format that cannot honour a plan entry refuses it.
    """

    clip_percentile: float | None = None
    row_clip: Tensor | None = None
    q: Tensor | None = None
    scale: Tensor | None = None


ExportPlan = dict[str, TensorPlan]


@dataclass
class ExportContext:
    """What `pgolf_export_plan` sees: the recipe, the parameter roles, `report(key, value)`."""

    recipe: Recipe
    roles: Roles
    report: Callable[[str, Any], None]


class ExportFormat(Protocol):
    """Turns a state dict into the object that is saved, and back. Exclusive: one per run.

    `tags` are the `__quant_format__` values this format reads ("" for objects without a tag, such
    as PR #414's); `quantize` stores the tag it writes under `obj["__quant_format__"]`. `roles` maps
    names to `ParamRole` (control tensors pass through as fp32); `report(key, value)` logs a statistic.
    `needs_plan` (say why, e.g. 'row_rule = "plan"'; "" for none) makes a run without any
    `pgolf_export_plan` implementation a recipe error at setup, before training, not at export.
    """

    label: str  # in log lines and summary keys: "int8", "int6"
    tags: tuple[str, ...]
    needs_plan: str

    def quantize(
        self, weights: Mapping[str, Tensor], plan: ExportPlan, roles: Roles, report: Callable[[str, Any], None]
    ) -> dict[str, Any]: ...

    def dequantize(self, obj: Mapping[str, Any], dtypes: Mapping[str, torch.dtype]) -> dict[str, Tensor]: ...


class Correction(Protocol):
    """A stage after quantization that stores extra data to shrink the reconstruction error (LQER).

    `encode` sees the original weights and the current dequantized ones and returns its payload
    (tensors, dicts, numbers: what `torch.save(weights_only)` can hold); `apply` adds the payload's
    correction to dequantized weights. Both run in the writer; only `apply` runs in the reader.
    """

    tag: str

    def encode(self, weights: Mapping[str, Tensor], dequantized: Mapping[str, Tensor], plan: ExportPlan) -> Any: ...

    def apply(self, dequantized: dict[str, Tensor], payload: Any) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class Codec:
    """A byte codec: `encode(raw, level) -> blob`, `decode(blob) -> raw`.

    `magic` are the leading bytes of every blob it writes, so a reader can tell the codec from the
    file alone; a codec without one (raw brotli) is read when the recipe names it.
    """

    name: str
    encode: Callable[[bytes, int], bytes]
    decode: Callable[[bytes], bytes]
    magic: bytes = b""
    levels: tuple[int, int] = (0, 0)  # the valid `[export] level` range


# ---------------------------------------------------------------- plugins


class Order(enum.IntEnum):
    """When a plugin's answers come in a collecting hook: lower first, ties by name. The bands follow a
    run's phases, so a plugin says which kind of step it is and the order between kinds follows."""

    EMBED_RAW = 10  # modules on the raw token embedding (BigramHash adds before the norm)
    EMBED_NORMED = 20  # modules after the embedding norm (SmearGate mixes), after the raw ones
    MODEL = 50  # block parts and static slots (XSA, LN scale, partial RoPE, depth recurrence)
    VALUES = 60  # per-layer value extras (value embeddings)
    TRAIN_SWITCH = 70  # step-start switches (late QAT), before the weight averages read the step
    AVERAGE = 80  # weight averages that choose the final weights (EMA, SWA)
    EVAL = 90  # eval-time adaptation (test-time training)
    DEFAULT = 100  # a plugin that does not say
    INIT = 700  # init schemes on the built model, after every plugin's layers exist (OrthoInit)
    EXPORT_EDIT = 800  # export: edits weights before the plans read them (pruning)
    EXPORT_PLAN = 900  # export plans on the final weights (GPTQ-lite, SDClip)
    EXPORT_FORMAT = 950  # the export format
    EXPORT_CORRECTION = 960  # corrections stacked after the format (LQER)
    CODEC = 990  # byte codecs


@dataclass(frozen=True)
class Tiny:
    """How the plugin contract's tiny run (4 layers, 32 wide, 6 steps; `pgolf_core.testing`) makes a plugin act:
    its `settings` (its `[plugins.<name>]` table), `partners` enabled in both runs (the format GPTQ-lite plans
    for), `--set` `overrides` for both runs, and `overrides_with` for the run with the plugin only (a codec
    acts when `export.compressor` names it)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    partners: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    overrides_with: tuple[str, ...] = ()


class Plugin:
    """The base of every plugin: a technique, enabled by a `[plugins.<name>]` table in a recipe.

    A subclass sets `name` and `version` and implements hooks of `pgolf_core.hookspecs` as methods
    decorated with `@pgolf_core.hookimpl`. Every other attribute is optional; its default is here, and
    the core reads them here and nowhere else:

    - `order`: an `Order` band: where its answers come in collecting hooks (ties broken by name).
    - `Config`: a dataclass of its settings (the TOML table's keys); its field types declare the valid
      values (`Annotated[int, Range(0)]`, `Literal["a", "b"]`), checked once when the recipe loads.
    - `check(config, recipe)`: the checks a field type cannot say (a setting against `[model]`, two
      settings together); raise `PgolfError` whose message starts with the key, the value and what was
      expected (`"last_n=12: expected 0..11"`); the core adds the file and the table.
    - `SMOKE`: settings that `--smoke` applies (a shorter EMA horizon for 200 steps); `--set` beats them.
    - `TINY`: a `Tiny`: how the plugin contract's tiny run (4 layers, 6 steps) makes it act.
    - `requires`: plugins it needs enabled to act (SDClip needs the int6 format); `conflicts`: plugins
      it cannot run with (EMA and SWA both pick the final weights). `pgolf ablate` reads both.
    - `forms(config)`: for a plugin with several forms, the hooks the configured form implements;
      the others are not registered (a TTT that adapts before or after scoring). None: all of them.

    The core makes one instance per run, `cls(config)` (`config` None without a `Config`).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = ""
    order: ClassVar[int] = Order.DEFAULT
    Config: ClassVar[type | None] = None
    SMOKE: ClassVar[Mapping[str, Any]] = {}
    TINY: ClassVar[Tiny] = Tiny()
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @classmethod
    def check(cls, config: Any, recipe: Recipe) -> None:
        """Cross-field and model-dependent checks of the settings, once, when the recipe loads."""

    @classmethod
    def forms(cls, config: Any) -> tuple[str, ...] | None:
        """The hooks of the configured form (None: every hook the class implements)."""
