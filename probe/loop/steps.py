"""Which step comes next: the prediction behind arming the probe before a forward pass."""

from __future__ import annotations

from curvscope.probe.loop.schedules import Schedule

__all__ = ["StepPredictor"]


class StepPredictor:
    """Predict the next step as the last step plus the last stride.

    The backends must observe a step's forward pass, which runs before the loop says which
    step it is (``with probe(step)``), so the probe arms when the *predicted* next step is
    scheduled. Before the first step nothing is known: the first forward is always armed.

    Args:
        schedule: ``step -> bool``.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.last: int | None = None
        self.stride = 1

    @property
    def expected(self) -> int:
        """The step expected next."""
        return (self.last or 0) + self.stride

    def next_scheduled(self) -> bool:
        """Whether the expected next step is scheduled (``True`` before the first step)."""
        if self.last is None:
            return True
        return bool(self.schedule(self.last + self.stride))

    def is_scheduled(self, step: int) -> bool:
        """Whether ``step`` is measured: scheduled, and not the step just measured again."""
        return step != self.last and bool(self.schedule(step))

    def advance(self, step: int) -> None:
        """``step`` is done: it becomes the last step, its distance the stride."""
        if self.last is not None and step > self.last:
            self.stride = step - self.last
        self.last = step
