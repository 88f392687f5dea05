"""Schedule the learning rate over the session's training budget (model.learning_rate_schedule)."""

from __future__ import annotations

from dataclasses import dataclass

LEARNING_RATE_SCHEDULES = ("constant", "linear")
"""Values of model.learning_rate_schedule."""


@dataclass(slots=True)
class BudgetSchedule:
    """A learning rate that falls in a straight line from `start` to 0 over `budget` steps of the model.

    SB3 calls a schedule with its own progress, measured over one `learn` call; the model trains in
    pieces of a few rollouts, so that progress restarts at every piece. This schedule ignores it and is
    measured on the model's own step counter instead, which TradingModel writes into `steps` before every
    update; past the budget (a resumed session) the rate stays at 0.
    """

    start: float
    """The rate at step 0 (model.hyperparams.learning_rate)."""
    budget: int
    """Steps over which the rate reaches 0: training.episodes x training.steps_per_episode."""
    steps: int = 0
    """The model's step counter (all envs together) when the next update starts."""

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"a learning-rate schedule needs a budget of at least 1 step, got {self.budget}")

    def __call__(self, _progress_remaining: float) -> float:
        return self.start * max(0.0, 1.0 - self.steps / self.budget)
