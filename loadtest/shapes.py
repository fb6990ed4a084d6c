"""Load plans: how many locust users run at each moment of a test.

Plain classes with ``tick(elapsed_s) -> (users, spawn_rate) | None`` (``None`` ends the test), so
they are testable without locust; :mod:`loadtest.locustfile` wraps the chosen one in a
``LoadTestShape``.

* ``steady``: a constant number of users for the run time (``-u``, ``-r``, ``-t``);
* ``step``: a ramp for autoscaling: start at ``-u`` users and add ``--step-users`` every
  ``--step-seconds``, ``--steps`` times (the last step lasts as long as the others);
* ``spike``: ``-u`` users for the run time, with ``--spike-users`` more between
  ``--spike-at`` and ``--spike-at + --spike-seconds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

SHAPES = ("steady", "step", "spike")


class Shape(Protocol):
    """A load plan."""

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """Users and spawn rate at ``elapsed_s`` seconds, or ``None`` when the test is over."""
        ...


@dataclass(frozen=True)
class Steady:
    """``users`` for ``duration_s`` seconds.

    Attributes:
        users: Concurrent users.
        spawn_rate: Users started per second until all run.
        duration_s: Length of the test.
    """

    users: int
    spawn_rate: float
    duration_s: float

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """See :class:`Shape`."""
        return (self.users, self.spawn_rate) if elapsed_s < self.duration_s else None


@dataclass(frozen=True)
class StepRamp:
    """``start_users``, then ``step_users`` more every ``step_s`` seconds, for ``steps`` steps.

    Attributes:
        start_users: Users of the first step.
        step_users: Users added at each further step.
        steps: Number of steps (the first included).
        step_s: Seconds per step.
        spawn_rate: Users started per second at each step.
    """

    start_users: int
    step_users: int
    steps: int
    step_s: float
    spawn_rate: float

    @property
    def duration_s(self) -> float:
        """Length of the test."""
        return self.steps * self.step_s

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """See :class:`Shape`."""
        step = int(elapsed_s // self.step_s)
        if step >= self.steps:
            return None
        return self.start_users + step * self.step_users, self.spawn_rate


@dataclass(frozen=True)
class Spike:
    """``base_users`` throughout, ``spike_users`` more from ``at_s`` for ``spike_s`` seconds.

    Attributes:
        base_users: Users before and after the spike.
        spike_users: Extra users during the spike.
        at_s: When the spike starts.
        spike_s: How long it lasts.
        duration_s: Length of the test.
        spawn_rate: Users started (and stopped) per second.
    """

    base_users: int
    spike_users: int
    at_s: float
    spike_s: float
    duration_s: float
    spawn_rate: float

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """See :class:`Shape`."""
        if elapsed_s >= self.duration_s:
            return None
        if self.at_s <= elapsed_s < self.at_s + self.spike_s:
            return self.base_users + self.spike_users, self.spawn_rate
        return self.base_users, self.spawn_rate


def make_shape(name: str, *, users: int, spawn_rate: float, run_time_s: float | None,
               step_users: int = 5, step_seconds: float = 30.0, steps: int = 5,
               spike_users: int = 20, spike_seconds: float = 10.0,
               spike_at: float | None = None) -> Shape:
    """The plan called ``name`` from the command-line options.

    Raises:
        ValueError: an unknown name, or a spike plan without a run time.
    """
    if name == "step":
        return StepRamp(users, step_users, steps, step_seconds, spawn_rate)
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    if name == "steady":
        # Without a run time a steady test runs until interrupted, as plain locust does.
        return Steady(users, spawn_rate, run_time_s or math.inf)
    if not run_time_s:
        raise ValueError(f"the {name} shape needs a run time (-t / --run-time)")
    at = spike_at if spike_at is not None else run_time_s / 3
    # Spikes are sudden: start the extra users at once rather than at the ramp rate.
    return Spike(users, spike_users, at, spike_seconds, run_time_s,
                 max(spawn_rate, float(users + spike_users)))
