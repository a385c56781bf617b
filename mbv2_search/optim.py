"""TensorFlow's RMSProp as a torch optimizer, for the paper's recipe (section 6.1 trained with TF's).

torch.optim.RMSprop differs from TensorFlow's in three ways that matter with the paper's values: its
mean square starts at 0 (TF: 1), its epsilon is added outside the square root (TF: inside, and
TF-Slim's MobileNet flag is 1.0), and its learning rate multiplies the momentum buffer's output
(TF: the buffer accumulates lr x the scaled gradient, so a changing learning rate acts differently).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


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
