"""Learning-rate schedules as small state machines (their state goes into the checkpoint).

plateau: multiply the lr by `plateau_factor` (÷10 by default) when the epoch's mean training L1 loss
(the generator's, not a validation metric) has not improved for `plateau_patience` epochs. exponential: lr · 0.1^(step / lr_decay_steps), the seed project's
`tf.train.exponential_decay(..., decay_rate=0.1)`. none: constant.
"""
from __future__ import annotations

from trainable.config import OptimConfig


class LrSchedule:
    def __init__(self, optim: OptimConfig):
        self.optim = optim
        self.scale = 1.0            # current multiplier of the base learning rates
        self.best = float("inf")
        self.bad_epochs = 0

    def factor(self, step: int) -> float:
        """The multiplier for the next optimizer step."""
        if self.optim.schedule == "exponential":
            return 0.1 ** (step / self.optim.lr_decay_steps)
        return self.scale

    def end_epoch(self, loss: float) -> None:
        if self.optim.schedule != "plateau":
            return
        if loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.optim.plateau_patience:
            self.scale *= self.optim.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
