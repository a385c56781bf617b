"""TensorFlow's RMSProp as a torch optimizer, for the paper's recipe (section 6.1 trained with TF's), and the
weights' moving average (WeightEMA).

torch.optim.RMSprop differs from TensorFlow's in three ways that matter with the paper's values: its
mean square starts at 0 (TF: 1), its epsilon is added outside the square root (TF: inside, and
TF-Slim's MobileNet flag is 1.0), and its learning rate multiplies the momentum buffer's output
(TF: the buffer accumulates lr x the scaled gradient, so a changing learning rate acts differently).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch

from mbv2_search.recipes import Recipe


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with momentum exactly as TensorFlow's ApplyRMSProp kernel (centered=False):

        ms  <- rho * ms + (1 - rho) * g^2            (ms starts at 1)
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        w   <- w - mom

    `weight_decay` is an L2 term added to the loss (g += weight_decay * w), as TF-Slim's regularizers
    do, and applies only to the parameter groups that set it (see `l2_groups`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        rho: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "rho": rho, "momentum": momentum, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["ms"] = torch.ones_like(param)  # TF initialises the mean square to 1
                    state["mom"] = torch.zeros_like(param)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(group["rho"]).addcmul_(grad, grad, value=1 - group["rho"])
                mom.mul_(group["momentum"]).addcdiv_(grad, ms.add(group["eps"]).sqrt_(), value=group["lr"])
                param.sub_(mom)
        return loss


def l2_groups(model: torch.nn.Module, weight_decay: float, *, depthwise: bool = False) -> list[dict[str, Any]]:
    """Parameter groups as TF-Slim's MobileNet training scope regularises them: conv and classifier
    weights with the L2 term; depthwise weights (regularize_depthwise=False), BatchNorm and biases without."""
    decayed, plain = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_depthwise = isinstance(module, torch.nn.Conv2d) and 1 < module.groups == module.in_channels
            weight = name == "weight" and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
            (decayed if weight and (depthwise or not is_depthwise) else plain).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class WeightEMA(torch.nn.Module):
    """Exponential moving average of weights with TF's warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current weights; copy buffers (BatchNorm stats)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = [p for p in self.module.parameters()]
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1 - decay)
        buffers = list(self.module.buffers())
        if buffers:  # one launch for all BatchNorm statistics, not 150
            torch._foreach_copy_(buffers, list(model.buffers()))


def build_optimizer(model: torch.nn.Module, recipe: Recipe, *, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's parameters at this learning rate."""
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
    if recipe.optimizer == "rmsprop_tf":
        groups = l2_groups(model, recipe.weight_decay, depthwise=recipe.l2_depthwise)
        return RMSpropTF(groups, lr=lr, rho=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.eps)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=recipe.rmsprop_decay,
            momentum=recipe.momentum,
            eps=recipe.eps,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.AdamW(params, lr=lr, eps=recipe.eps, weight_decay=recipe.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, *, lr: float, epochs: int, steps_per_epoch: int
) -> Any:
    """The recipe's per-step learning-rate schedule, or None for a constant rate."""
    schedulers, total = torch.optim.lr_scheduler, epochs * steps_per_epoch
    if recipe.schedule == "onecycle":
        return schedulers.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=recipe.warmup_fraction)
    if recipe.schedule == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=total)
    if recipe.schedule == "exponential" and recipe.decay_epochs:  # staircase, as tf.train.exponential_decay
        every = max(1, round(recipe.decay_epochs * steps_per_epoch))
        return schedulers.StepLR(optimizer, step_size=every, gamma=recipe.gamma)
    if recipe.schedule == "exponential":
        return schedulers.ExponentialLR(optimizer, recipe.gamma ** (1 / steps_per_epoch))  # x gamma per epoch, smoothly
    return None
