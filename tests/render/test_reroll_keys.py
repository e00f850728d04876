"""A re-roll's key and seed, pinned: a change would make every re-roll in a catalog "new"."""

from __future__ import annotations

import dataclasses

from qwbatch.core.keys import RequestFields, key_and_seed
from qwbatch.core.types import RenderRequest
from qwbatch.render.rerolls import reroll_request


def test_reroll_keys_are_pinned() -> None:
    request = RenderRequest(
        row_id="a",
        row_number=0,
        request_key="x",
        model="flux-2-pro",
        mode="edit",
        prompt="p",
        negative_prompt="n",
        size="1024*1024",
        n=2,
        seed=5,
        prompt_extend=True,
        watermark=True,
        input_sha256=("a" * 64,),
        params=(("quality", "high"),),
        target_size="300*250",
    )
    again = reroll_request(request, 1, 2)
    assert again.request_key == "cfc96666e9dde3ffae046cfb30b15e57443e905cef2ed7b1d86bea67326a0345"
    assert reroll_request(request, 0, 1).seed == 345172742
    assert (again.n, again.params, again.target_size) == (1, request.params, "300*250")
    # The key leaves params and target_size out (as it always has), whatever the request holds.
    bare = dataclasses.replace(RequestFields.of(again), params=(), target_size=None)
    assert key_and_seed(bare) == (again.request_key, again.seed)
