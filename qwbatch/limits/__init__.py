"""Request limits per model and per account: run at the provider's limit, not over it.

::

    registry.py   which limits apply (settings > run flags > model table); one limiter per
                  (account, model) in the process: LIMITERS.for_model(spec, settings)
    local.py      ModelLimiter: in-flight gate, paced sends, ramp-up, the learned rate
    learning.py   RateLearner: the account's limit learned from 429s (cut, remember, slow
                  approach, rare probe, forget), and shared with other workers
    shared.py     PrefectBudget: the request rate shared by every worker through a Prefect
                  global concurrency limit (rate tokens leased in batches; the in-flight
                  cap stays per process), or local only, said in the log, when no server
    prefect_limit.py  that limit on the server: names, sizes, reading, resizing
    gate.py       Gate and TokenPool: first-come-first-served waiting across event loops
    status.py     status lines (rate, limit, in flight, 429s/min) for the log and the CLI

Example::

    limiter = LIMITERS.for_model(table.get("qwen-image-2.0"), settings)
    async with limiter.slot():
        result = await provider.generate(request)
    limiter.on_success()
"""

from qwbatch.limits.local import LimitSpec, ModelLimiter
from qwbatch.limits.registry import LIMITERS, Limiter, LimiterRegistry, limit_spec
from qwbatch.limits.status import LimitStatus, reporting, status_of

__all__ = [
    "LIMITERS",
    "LimitSpec",
    "LimitStatus",
    "Limiter",
    "LimiterRegistry",
    "ModelLimiter",
    "limit_spec",
    "reporting",
    "status_of",
]
