"""A circuit breaker per run: stop calling a provider that refuses the account or is gone.

With a wrong key every request gets the same 401; with the provider unreachable every
attempt gets "connection refused", and each request would retry for minutes. Neither says
anything about the rows, so the breaker answers for all of them:

- **Probing** (from the start until a call succeeds): at most ``probes`` paid calls in all,
  counting those that failed; the rest wait. One success closes the breaker for good (calls flow
  freely), unless later calls fail account-wide again.
- **Open** after ``probes`` account-wide failures in a row (errors marked ``account_wide``
  by the provider: 401/403, arrears, quota used up, connection refused, see
  :mod:`qwbatch.core.errors`): no more calls. The engine sets the run's stop flag with the
  reason, so every shard ends the way Ctrl-C ends it: nothing more sent, rows left
  unrendered (not failed), journal and catalog parts written, one line saying why.

A breaker is shared by every shard of one run in a process (:func:`breaker_for`); it is
thread-safe, and waits by polling so it belongs to no event loop.

Example::

    breaker = breaker_for(run_id)
    async with breaker.probe():          # ProviderUnavailableError once open
        result = await provider.generate(request)
    breaker.succeeded()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from qwbatch.core.errors import ProviderUnavailableError, QwBatchError

#: Account-wide failures in a row that open the breaker, and calls on the wire while probing.
PROBES = 3
#: Seconds between two looks at a full probing gate.
_POLL_S = 0.02


class Breaker:
    """See the module's docstring."""

    def __init__(self, probes: int = PROBES) -> None:
        self.probes = probes
        self._lock = threading.Lock()
        self._in_flight = 0
        self._succeeded = False
        self._failures = 0
        #: Why the breaker opened (the last failure's message); None while it is closed.
        self.reason: str | None = None

    @contextlib.asynccontextmanager
    async def probe(self) -> AsyncIterator[None]:
        """A place on the wire: waits while probing is full; ProviderUnavailableError once open."""
        while True:
            with self._lock:
                self._raise_if_open()
                # Until a call succeeds, ``probes`` calls in all: failed ones count too.
                if self._succeeded or self._in_flight + self._failures < self.probes:
                    self._in_flight += 1
                    break
            await asyncio.sleep(_POLL_S)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def succeeded(self) -> None:
        with self._lock:
            self._succeeded = True
            self._failures = 0

    def failed(self, exc: QwBatchError) -> bool:
        """Count an account-wide failure; True when it opened the breaker (or it was open)."""
        with self._lock:
            self._failures += 1
            if self.reason is None and self._failures >= self.probes:
                self.reason = exc.message
            return self.reason is not None

    def check(self) -> None:
        """ProviderUnavailableError if the breaker is open."""
        with self._lock:
            self._raise_if_open()

    def _raise_if_open(self) -> None:
        if self.reason is not None:
            raise ProviderUnavailableError(f"stopped calling the provider: {self.reason}")


_BREAKERS: dict[str, Breaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(run_id: str) -> Breaker:
    """The breaker every shard of run ``run_id`` in this process shares."""
    with _BREAKERS_LOCK:
        return _BREAKERS.setdefault(run_id, Breaker())


def forget(run_id: str) -> None:
    """Drop run ``run_id``'s breaker (a new attempt of the run starts closed again)."""
    with _BREAKERS_LOCK:
        _BREAKERS.pop(run_id, None)
