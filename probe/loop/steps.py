"""Which step comes next: the prediction behind arming the probe before a forward pass."""

from __future__ import annotations

from curvscope.probe.loop.schedules import Schedule

__all__ = ["StepNumbering", "StepPredictor"]


class StepNumbering:
    """The probe's own monotonic step for the loop's step numbers.

    Loops restart their count (``for step, batch in enumerate(loader)`` inside an epoch
    loop): a step below the last one starts a new stretch, numbered on from the last
    probe step, so that no snapshot key repeats and none is dropped by the server. A
    step equal to the last one is the same step again (not a new one).
    """

    def __init__(self) -> None:
        self.offset = 0
        self.last_user: int | None = None
        self.last: int | None = None

    def peek(self, user_step: int) -> int:
        """The probe step ``user_step`` will get (nothing changes)."""
        if self.last_user is not None and self.last is not None and user_step < self.last_user:
            return self.last + 1
        return user_step + self.offset

    def __call__(self, user_step: int) -> tuple[int, bool]:
        """``(probe_step, restarted)`` for the loop's ``user_step``."""
        restarted = False
        if self.last_user is not None and self.last is not None and user_step < self.last_user:
            self.offset = self.last + 1 - user_step
            restarted = True
        self.last_user = user_step
        self.last = user_step + self.offset
        return self.last, restarted


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
