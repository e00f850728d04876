"""How long to wait before retrying a provider call, and when to stop.

Exponential backoff with *full jitter* — a wait drawn uniformly from
``[0, min(cap, base × 2^(attempt-1))]`` — so that requests that failed together do not come
back together; a ``Retry-After`` from the server is a floor. A request stops being retried
after ``max_attempts`` attempts, or when the next attempt would start more than
``max_total_s`` seconds after its first send (time spent queueing for a first send does not
count).

A 429 is not among these: it is the limiter's business (``qwbatch.limits``), never the
row's. A throttled request is retried for as long as its run lives — no attempt cap, no time
budget; its attempts are not counted against ``max_attempts`` and the time budget starts
again at its next send. Only the run's end (a signal, ``qwbatch`` stopped, a budget) ends
it.

The retry loops themselves are stamina's: :func:`provider_retries` builds the one a provider
call or a download runs in (:class:`RetryPolicy` answers its hook), :func:`store_retries` the
one a store call runs in while the store is unreachable. Which errors are retried at all is
decided by the error tree (:mod:`qwbatch.core.errors`) and, for the provider's answers, by
:mod:`qwbatch.providers.dashscope_errors`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import stamina

from qwbatch.core.errors import StorageTransientError
from qwbatch.core.settings import Settings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and waits for one request; times in seconds."""

    max_attempts: int = 5
    base_s: float = 2.0
    cap_s: float = 60.0
    max_total_s: float = 900.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_s=settings.backoff_base_s,
            cap_s=settings.backoff_max_s,
            max_total_s=settings.max_request_s,
        )

    def backoff(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 62))
        wait = (rng or random).uniform(0.0, ceiling)
        return max(wait, retry_after) if retry_after else wait

    def next_wait(
        self,
        attempt: int,
        elapsed_s: float,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """The wait before attempt ``attempt + 1``, or None when the request should stop.

        ``elapsed_s`` is the time since the request's first send.
        """
        if attempt >= self.max_attempts:
            return None
        wait = self.backoff(attempt, retry_after, rng)
        if elapsed_s + wait > self.max_total_s:
            return None
        return wait


def provider_retries(
    settings: Settings,
    on: Callable[[Exception], bool | float],
    *,
    attempts: int | Literal["settings"] | None = "settings",
) -> stamina._core._RetryContextIterator:
    """Retries of a provider call or a download: ``on`` decides (and may name the wait, in
    seconds); at most ``attempts`` (``Settings.max_attempts`` by default; None: no cap, when
    ``on`` counts attempts itself)."""
    return stamina.retry_context(
        on=on,
        attempts=settings.max_attempts if attempts == "settings" else attempts,
        timeout=None,
        wait_initial=settings.backoff_base_s,
        wait_max=settings.backoff_max_s,
        wait_jitter=settings.backoff_base_s,
    )


def store_retries(settings: Settings) -> stamina._core._RetryContextIterator:
    """Retries for a store that is unreachable: no attempt cap, ``store_retry_s`` in all."""
    return stamina.retry_context(
        on=StorageTransientError,
        attempts=None,
        timeout=settings.store_retry_s,
        wait_initial=settings.backoff_base_s,
        wait_max=settings.backoff_max_s,
        wait_jitter=settings.backoff_base_s,
    )
