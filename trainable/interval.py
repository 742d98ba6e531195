"""How often something happens while training: every N steps, every N epochs, or every so much time.

`train.checkpoint_every` (steps or a duration) and a sweep's `report_every` (epochs or steps) are
read here, and `duration_seconds` is the one reading of '11h30m' / '90m' / '45s' (the sweep's
time budget uses it too). `Clock` says when an interval is due during a run.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

DURATION = re.compile(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*")
COUNT = re.compile(r"\s*(\d+)\s*(steps?|epochs?)\s*")


@dataclass(frozen=True)
class Interval:
    """One of: `steps` training steps, `epochs` epochs, `seconds` of wall-clock time; all 0 = never."""
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.steps or self.epochs or self.seconds)


def duration_seconds(text: object) -> float | None:
    """'11h30m' / '90m' / '45s' → seconds; None when `text` is no such duration."""
    match = DURATION.fullmatch(str(text))
    if not match or not any(match.groups()):
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_interval(value: object, units: tuple[str, ...], durations: bool) -> Interval:
    """An integer counts `units[0]` (steps or epochs); '500 steps' / '2 epochs' name one of `units`;
    with `durations`, '10m' / '90s' / '1h30m' count wall-clock time. Raises ValueError saying what is
    accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Interval(**{units[0]: value})
    count = COUNT.fullmatch(value) if isinstance(value, str) else None
    unit = count.group(2).rstrip("s") + "s" if count else None
    if unit in units:
        return Interval(**{unit: int(count.group(1))})
    seconds = duration_seconds(value) if durations and isinstance(value, str) else None
    if seconds is not None:
        return Interval(seconds=seconds)
    named = " or ".join(f"'N {u}'" for u in units)
    timed = ", or a duration like '10m' or '90s'" if durations else ""
    raise ValueError(f"must be an integer >= 0 ({units[0]}), {named}{timed}; got {value!r}")


class Clock:
    """Whether an interval of steps or seconds is due, asked after a step. Steps are counted on the
    run's global step (`position()`), so a due point does not move when a run resumes elsewhere;
    seconds run from the clock's start or its last `reset`."""

    def __init__(self, interval: Interval, position: Callable[[], int]):
        if interval.epochs:
            raise ValueError("a Clock counts steps or seconds; epochs are the epoch loop's")
        self.interval, self.position = interval, position
        self.reset()

    def reset(self) -> None:
        self._mark_step, self._mark_time = self.position(), time.monotonic()

    def due(self) -> bool:
        if self.interval.steps:
            return self.position() // self.interval.steps > self._mark_step // self.interval.steps
        if self.interval.seconds:
            return time.monotonic() - self._mark_time >= self.interval.seconds
        return False
