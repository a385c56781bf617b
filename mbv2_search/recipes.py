"""Training recipes: optimizer, schedule and regularization as data. No torch, no Lightning.

Study loading validates recipe names and overrides against these without importing either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Recipe(BaseModel):
    """Optimizer, schedule and regularization; every field can be overridden."""

    # finite: a NaN learning rate is bad input, not a diverged trial; numbers written as YAML strings
    # (1e30, which YAML 1.1 reads as text) are read as numbers, but true is not a momentum (_no_bools)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    optimizer: Literal["sgd", "rmsprop", "rmsprop_tf", "adamw"] = "sgd"  # rmsprop_tf: TensorFlow's (optim.py)
    lr: float = Field(0.1, gt=0)  # at reference_batch; scaled linearly by batch_size / reference_batch
    reference_batch: int = Field(128, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    rmsprop_decay: float = Field(0.9, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(5e-5, ge=0)
    schedule: Literal["onecycle", "cosine", "exponential", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.1, gt=0, lt=1)  # onecycle: share of steps spent rising
    gamma: float = Field(0.98, gt=0, le=1)  # exponential: decay per `decay_epochs`
    decay_epochs: float | None = Field(None, gt=0)  # exponential: in steps of this many epochs (None: smoothly)
    l2_depthwise: bool = True  # rmsprop_tf: whether depthwise weights get the L2 term (TF-Slim: no)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1)  # None: the ArchSpec's

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("a boolean is not allowed here")
        return value

    def scaled_lr(self, batch_size: int) -> float:
        """Learning rate for this batch size (linear scaling rule)."""
        return self.lr * batch_size / self.reference_batch


def recipe_with(name: str, overrides: dict[str, object], *, path: str, section: str = "") -> Recipe:
    """A named recipe with some fields replaced; a one-line ConfigError names the bad field and value."""
    from mbv2_search.schema import parse

    return parse(Recipe, {**RECIPES[name].model_dump(), **overrides}, path=path, section=section)


RECIPES: dict[str, Recipe] = {
    # Short proxy runs: SGD + Nesterov, a one-cycle schedule with a short warm-up and label smoothing
    # reach 97% on digits in 10 epochs (width 0.35 at 32 px; measured against longer warm-ups and AdamW).
    "fast": Recipe(),
    # Paper section 6.1: "RMSPropOptimizer with both decay and momentum set to 0.9 ... weight decay
    # 0.00004 ... initial learning rate of 0.045, and learning rate decay rate of 0.98 per epoch".
    # Where the paper is silent, TF-Slim's MobileNetV2 training flags (models/research/slim README and
    # train_image_classifier.py): lr 0.045 for batch 96 per replica, decay 0.98 every 2.5 epochs
    # (staircase), --rmsprop_epsilon 1.0, label smoothing 0.1, moving-average decay 0.9999, dropout
    # keep 0.8; its MobileNet training scope puts the L2 term on conv and classifier weights only
    # (regularize_depthwise=False), and TF's RMSProp is RMSpropTF (mean square from 1, eps inside).
    "paper": Recipe(
        optimizer="rmsprop_tf",
        lr=0.045,
        reference_batch=96,
        momentum=0.9,
        nesterov=False,
        rmsprop_decay=0.9,
        eps=1.0,
        weight_decay=4e-5,
        l2_depthwise=False,
        schedule="exponential",
        gamma=0.98,
        decay_epochs=2.5,
        label_smoothing=0.1,
        ema_decay=0.9999,
        dropout=0.2,
    ),
}
