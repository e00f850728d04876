"""Planning a run: what to render, what the catalog already holds, and the shards to render.

``plan_run`` is the one way in: it reads and checks the manifest, drops requests whose
outputs exist, folds repeated requests, prices the rest (refusing or trimming to a budget)
and writes the work as shard files. It chooses the path itself: in memory when a budget
ranks the whole plan (``memory``), else streaming in one process (``stream``) or, for
large manifests, two (``split``, its second process ``second_process``); the paths are
internals, and share ``tally`` (the estimate's counts), ``dedup`` (rows already rendered)
and ``aliases`` (rows repeating a request).

- ``model``: the ``Plan`` every path fills, ``new_run_id``;
- ``shards``: shard file lines and keys (``read_shard``, ``decode_shard``); ``shard_codec``:
  their compression; ``shard_writer``: shards written as the plan streams.
"""

from qwbatch.plan.model import Plan, new_run_id
from qwbatch.plan.planner import plan_run
from qwbatch.plan.shards import decode_shard, read_shard

__all__ = ["Plan", "decode_shard", "new_run_id", "plan_run", "read_shard"]
