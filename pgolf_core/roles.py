"""Parameter roles: what each parameter is, declared once where it is built, read everywhere.

The optimizer (which group, which Adam), the GPU precision cast (what stays fp32), the init
(zero-init output projections) and every exporter (what passes through as fp32) read the same
table, collected once after the build by `collect_roles`. A module declares its own parameters:

    declare_role(self, "scale", control=True)               # BigramHash's learned scale
    declare_role(self.proj, "weight", zero_init=True)       # an output projection
    declare_role(self, "gate", group="scalar", adam={"lr": 0.03, "betas_2": 0.95, "weight_decay": 0.0})

Why one table: the records decided all of this with name substrings (their CONTROL_TENSOR_NAME_PATTERNS)
read in five places; a plugin author had to know them and add to them. A parameter without a
declared role gets the baseline's rule (`group_of`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pgolf_core.types import ParamRole, PgolfError, Roles

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
