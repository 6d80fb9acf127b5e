"""Optimizers and schedules of the records.

Muon (Newton–Schulz orthogonalized momentum) for the block matrices, Adam/AdamW for the token
embedding and the small control tensors, a wallclock-aware linear warmdown and a Muon momentum
warm-up. Parameter groups come from the parameter roles (`pgolf_core.types`): the declared group
or own Adam, else the baseline's name rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf_core.types import NO_ROLE, Roles, TrainConfig, group_of


def newton_schulz5(grad: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalize a matrix (quintic Newton–Schulz iteration; bf16 as the records)."""
    a, b, c = 3.4445, -4.7750, 2.0315  # Keller Jordan's quintic coefficients
    x = grad.to(dtype)
    x = x / (x.norm() + eps)
    tall = grad.size(0) > grad.size(1)
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum and decoupled weight decay (`W *= 1 - lr * wd` before the update).

    Under DDP parameter i is orthogonalized by rank `i % world_size`; the bf16 updates are summed
    across ranks in one flat buffer, so every rank applies identical updates.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        backend_steps: int = 5,
        weight_decay: float = 0.0,
        orthogonalize: Callable[[Tensor, int], Tensor] = newton_schulz5,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, weight_decay=weight_decay))
        self.orthogonalize = orthogonalize

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:  # build_optimizers makes Muon only for a non-empty matrix group
            params: list[Tensor] = group["params"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.bfloat16)
            updates = flat.split([p.numel() for p in params])  # views into `flat`, one per parameter
            for i, (p, update) in enumerate(zip(params, updates, strict=True)):
                if i % world == rank and p.grad is not None:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                    buf = self.state[p]["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(p.grad)
                    ortho = self.orthogonalize(p.grad.add(buf, alpha=group["momentum"]), group["backend_steps"])
                    update.copy_((ortho * max(1.0, ortho.size(0) / ortho.size(1)) ** 0.5).reshape(-1))
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for p, update in zip(params, updates, strict=True):
                if group["weight_decay"] > 0:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(update.view_as(p).to(p.dtype), alpha=-group["lr"])


@dataclass
class Optimizers:
    """All optimizers of a run; `muon` is also in `all` (its momentum follows a schedule)."""

    all: list[torch.optim.Optimizer]
    muon: Muon | None

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def set_lr_scale(self, scale: float) -> None:
        for opt in self.all:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

    def set_muon_momentum(self, momentum: float) -> None:
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["momentum"] = momentum

    def step(self) -> None:
        for opt in self.all:
            opt.step()


def build_optimizers(model: nn.Module, cfg: TrainConfig, roles: Roles, device_type: str) -> Optimizers:
    """Token / head / scalar groups with Adam (AdamW when `adam_weight_decay > 0`), matrices with Muon."""
    groups: dict[str, list[Tensor]] = {"token": [], "head": [], "matrix": [], "scalar": []}  # the records' order
    own: dict[tuple[float, float, float], list[Tensor]] = {}  # own Adams, one per (lr, beta2, weight decay)
    for name, param in model.named_parameters():
        if custom := roles.get(name, NO_ROLE).adam:
            key = (custom["lr"], custom.get("betas_2", cfg.beta2), custom.get("weight_decay", 0.0))
            own.setdefault(key, []).append(param)
        else:
            groups[group_of(name, param, roles)].append(param)  # declare_role checks the group name
    tied = getattr(getattr(model, "spec", None), "tie_embeddings", True)
    adam_lrs = {"token": cfg.tied_embed_lr if tied else cfg.embed_lr, "head": cfg.head_lr, "scalar": cfg.scalar_lr}
    adam_cls = torch.optim.AdamW if cfg.adam_weight_decay > 0 else torch.optim.Adam
    fused = {"fused": True} if device_type == "cuda" else {}
    optimizers: list[torch.optim.Optimizer] = []
    muon: Muon | None = None

    def adam(cls: type[torch.optim.Adam], params: list[Tensor], lr: float, beta2: float, wd: float) -> torch.optim.Adam:
        group = {"params": params, "lr": lr, "base_lr": lr}
        return cls([group], betas=(cfg.beta1, beta2), eps=cfg.adam_eps, weight_decay=wd, **fused)

    for name, params in groups.items():  # an empty group gets no optimizer
        if params and name == "matrix":
            ns = partial(newton_schulz5, dtype=getattr(torch, cfg.muon_ns_dtype))
            group = [{"params": params, "base_lr": cfg.matrix_lr}]
            muon = Muon(group, cfg.matrix_lr, cfg.muon_momentum, cfg.muon_backend_steps, cfg.muon_weight_decay, ns)
            optimizers.append(muon)
        elif params:
            optimizers.append(adam(adam_cls, params, adam_lrs[name], cfg.beta2, cfg.adam_weight_decay))
    for (lr, beta2, wd), params in own.items():  # e.g. PR #194's SmearGate Adam (lr 0.02, betas (0.9, 0.99))
        optimizers.append(adam(torch.optim.Adam, params, lr, beta2, wd))
    return Optimizers(all=optimizers, muon=muon)


def lr_scale(step: int, elapsed_ms: float, cfg: TrainConfig) -> float:
    """Warmdown multiplier in [0, 1]: linear to 0 over the last `warmdown_iters` steps, where with a
    wallclock cap the remaining steps are estimated from the average step time so far."""
    if cfg.warmdown_iters <= 0:
        return 1.0
    if cfg.max_wallclock_seconds <= 0:
        if cfg.iterations - cfg.warmdown_iters <= step < cfg.iterations:
            return (cfg.iterations - step) / cfg.warmdown_iters
        return 1.0
    warmdown_ms = cfg.warmdown_iters * (elapsed_ms / max(step, 1))  # the average step time so far
    remaining_ms = max(1000.0 * cfg.max_wallclock_seconds - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def muon_momentum(step: int, cfg: TrainConfig) -> float:
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum
