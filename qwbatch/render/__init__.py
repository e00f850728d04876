"""Rendering a shard: requests in, stored images, catalog records and a journal out.

::

    engine.py         Engine wires the steps below for one shard; run_shard, ShardResult
    calls.py          Caller: the paid provider call, its retries, ambiguous-call accounting
    harvest.py        Harvester: download each result image, store and record it
    outputs.py        Outputs: verify and write an output (bytes, metadata, thumbnail)
    recorder.py       Recorder: catalog records, folded duplicates, the journal's end lines
    ledger.py         Ledger (one request's attempts and spend) and Totals (the engine's)
    retries.py        backoff with full jitter; the stamina loops for calls and store writes
    journal.py        the write-ahead journal a crashed or stopped run resumes from
    recovery.py       TaskFinder: the async task behind a submission whose answer was lost
    shard_loop.py     one event loop per process for every shard it renders
    shard_results.py  shard summaries written beside the catalog parts (for other machines)

Example::

    engine = Engine(provider=provider, store=store, table=table, settings=settings, run_id=run)
    result = await run_shard(engine, shard_key)
"""

from qwbatch.render.engine import (
    Engine,
    InputLoader,
    RecordsCallback,
    ShardResult,
    run_shard,
    store_retries,
)
from qwbatch.render.journal import (
    Journal,
    StoreJournal,
    read_journal,
    read_run_journal,
)
from qwbatch.render.shard_results import read_shard_result, write_shard_result

__all__ = [
    "Engine",
    "InputLoader",
    "Journal",
    "RecordsCallback",
    "ShardResult",
    "StoreJournal",
    "read_journal",
    "read_run_journal",
    "read_shard_result",
    "run_shard",
    "store_retries",
    "write_shard_result",
]
