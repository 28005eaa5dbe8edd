"""When a model trained in steps stops: its step budget, early stopping and a time budget.

One rule for every such model (EfficientAD, STFPM): the loss is smoothed (exponential moving
average, 0.9), an improvement is a smoothed loss 1 % below the best so far, and training stops
after ``patience`` steps without one (0: never), or once ``max_seconds`` have passed.
"""

from __future__ import annotations

import logging
import math
import time

from .config import ProgressCallback

logger = logging.getLogger(__name__)


class StepBudget:
    """Call :meth:`done_step` after each step with its loss; it reports progress and says
    whether to stop. ``done``, ``ema`` (the smoothed loss) and ``last`` say where it ended."""

    def __init__(
        self,
        steps: int,
        progress: ProgressCallback,
        patience: int = 0,
        max_seconds: float | None = None,
    ) -> None:
        self.steps = steps
        self.progress = progress
        self.patience = patience
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        self.done = 0
        self.ema: float | None = None
        self.last = math.nan
        self._best = math.inf
        self._since_best = 0

    def done_step(self, loss: float) -> bool:
        """Record one step's loss and report it; True when training should stop now."""
        self.done += 1
        self.last = loss
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        if self.ema < self._best * 0.99:
            self._best, self._since_best = self.ema, 0
        else:
            self._since_best += 1
        self.progress(self.done / self.steps, f"step {self.done}/{self.steps} loss {loss:.4f}")
        if self.patience and self._since_best >= self.patience:
            logger.info(
                "early stop at step %d (no improvement for %d steps)", self.done, self.patience
            )
            return True
        if self.max_seconds and time.monotonic() - self.started > self.max_seconds:
            logger.info("time budget reached at step %d", self.done)
            return True
        return self.done >= self.steps

    @property
    def stopped_early(self) -> bool:
        return self.done < self.steps

    def summary(self) -> dict:
        """What a model trained in steps reports in its metrics: steps done, the smoothed and
        the last loss, whether it stopped early, and the seconds since the budget started."""
        return {
            "steps_done": self.done,
            "final_loss": self.ema,
            "last_loss": self.last,
            "stopped_early": self.stopped_early,
            "fit_seconds": round(time.monotonic() - self.started, 2),
        }
