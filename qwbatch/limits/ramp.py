"""The account's ramp, shared by every worker of a rate shared through Prefect: :class:`SharedRamp`.

The provider punishes a rate that rises too fast ("Request rate increased too quickly"), so
a run does not start at its full rate: it climbs from a quarter of it over a few seconds.
One process ramps its own limiter. Workers sharing a rate must ramp the *shared* rate: each
worker ramping alone, the account's rate during the ramp is the sum of their ramps up to the
shared limit, which no worker knows — and a 429 met then is learned at the wrong rate (at the
shared limit's, the cap: a cut far too shallow, a storm; or at one worker's ramp: a limit far
too low with four workers).

So the first worker of an idle account begins the ramp, publishes when it began (a Unix
time, beside what the workers learned), and sets the shared rate limit to the ramped rate;
every worker reads when it began and follows the same ramp. A cut ends the ramp: from then
on the learned rate is the rate. A worker that joins mid-ramp takes it where it is; one that
joins after leaves the limit alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class SharedRamp:
    """A ramp of ``seconds`` from ``start`` × the rate to all of it, begun at ``began`` (Unix
    time; None: none ran), ended early by a cut: one made after ``cuts`` were known."""

    seconds: float
    start: float
    began: float | None = None
    cuts: int = 0

    def begin(self, cuts: int, now: float | None = None) -> None:
        """Begin the ramp now (this worker found the account idle)."""
        self.began = time.time() if now is None else now
        self.cuts = cuts

    def take(self, began: object, cuts: int) -> bool:
        """Follow a ramp another worker began at ``began`` (a published value); whether it
        was news. Of two, the one begun later wins: an account idle since the earlier one
        began another."""
        if not isinstance(began, int | float) or isinstance(began, bool) or began <= 0:
            return False
        if self.began is not None and began <= self.began:
            return False
        self.began, self.cuts = float(began), cuts
        return True

    def running(self, cuts: int, now: float | None = None) -> bool:
        """Whether the ramp is still climbing: begun, not past its end, and no cut since."""
        if self.began is None or cuts > self.cuts:
            return False
        now = time.time() if now is None else now
        return now - self.began < self.seconds

    def fraction(self, cuts: int, now: float | None = None) -> float:
        """The share of the rate allowed now: ``start`` at the beginning, 1 at its end, after
        a cut (``cuts`` known now, more than at its beginning), or with no ramp running."""
        now = time.time() if now is None else now
        if not self.running(cuts, now):
            return 1.0
        assert self.began is not None
        return ramp_fraction(now - self.began, self.seconds, self.start)


def ramp_fraction(elapsed: float, seconds: float, start: float) -> float:
    """The share of the rate a ramp of ``seconds`` from ``start`` allows ``elapsed`` seconds
    after it began: ``start`` at first, rising in a straight line to 1 at its end."""
    if seconds <= 0 or elapsed >= seconds:
        return 1.0
    return start + (1.0 - start) * max(elapsed, 0.0) / seconds
