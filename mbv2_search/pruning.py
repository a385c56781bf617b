"""Early stopping for multi-objective studies, which Optuna's pruners refuse.

At each rung (successive halving: min_epochs x factor^k epochs) a running trial reports its validation
accuracy; it stops when enough trials that reached the same rung dominate it there: accuracy at least
as high at no more cost (costs are known before training), one of them strictly better. So a trial
on the rung's Pareto front always goes on. Peers are read from the shared storage, so it works
across workers. Training knows nothing of this: the search passes the callback in.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytorch_lightning as pl

from mbv2_search.pareto import dominance, minimised
from mbv2_search.study import PruningModel
from mbv2_search.trial_index import look


def rung_key(epoch: int) -> str:
    """User attribute holding a trial's validation accuracy at a rung."""
    return f"rung_{epoch:04d}"


def dominators(
    study: optuna.Study, *, trial_number: int, epoch: int, accuracy: float, costs: dict[str, float]
) -> list[int]:
    """Numbers of the trials that reached this rung and dominate (accuracy, costs) there."""
    key = rung_key(epoch)
    objectives = ["val_acc", *costs]
    numbers, rows = [], []
    for peer in _reported(study, key):
        if peer.number == trial_number or "excluded" in peer.user_attrs:
            continue
        peer_costs = {name: peer.user_attrs.get(name) for name in costs}
        if any(value is None for value in peer_costs.values()):
            continue
        numbers.append(peer.number)
        rows.append({"val_acc": peer.user_attrs[key], **peer_costs})
    if not rows:
        return []
    columns = {name: [row[name] for row in rows] for name in objectives}
    own = minimised({"val_acc": accuracy, **costs}, objectives)
    better = dominance(minimised(columns, objectives), own)[:, 0]
    return [number for number, dominates in zip(numbers, better) if dominates]


def peers_at(study: optuna.Study, *, trial_number: int, epoch: int) -> int:
    """How many other trials reported at this rung."""
    return sum(1 for t in _reported(study, rung_key(epoch)) if t.number != trial_number)


def _reported(study: optuna.Study, key: str) -> list[optuna.trial.FrozenTrial]:
    """The trials, finished or not, that reported at a rung (read incrementally: see trial_index)."""
    with look(study) as index:
        return index.with_attr(key)


class RungPruner(pl.Callback):
    """Reports validation accuracy at each rung and stops training when the rung's peers dominate it."""

    def __init__(
        self, study: optuna.Study, trial: optuna.Trial, *, costs: dict[str, float], config: PruningModel, epochs: int
    ) -> None:
        self.study, self.trial, self.costs, self.config = study, trial, costs, config
        self.rungs = set(config.rungs(epochs))
        self.stopped_at: int | None = None
        self.reason = ""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.rungs or "val_acc" not in trainer.callback_metrics:
            return
        accuracy = float(trainer.callback_metrics["val_acc"])
        self.trial.set_user_attr(rung_key(epoch), accuracy)
        if peers_at(self.study, trial_number=self.trial.number, epoch=epoch) < self.config.min_peers:
            return
        better = dominators(
            self.study, trial_number=self.trial.number, epoch=epoch, accuracy=accuracy, costs=self.costs
        )
        if len(better) >= self.config.min_dominators:
            self.stopped_at = epoch
            self.reason = f"dominated at epoch {epoch} (val_acc {accuracy:.4f}) by trials {', '.join(map(str, sorted(better)[:10]))}"
            trainer.should_stop = True
