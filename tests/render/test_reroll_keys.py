"""A re-roll's key and seed, pinned: a change would make every re-roll in a catalog "new";
and a re-roll's key holds what it is rendered with, so two rows never share one."""

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
    assert again.request_key == "d35f4ab255490e5f8a96cbec4c6d194658772257fb0d8bb7b2dc53063fb7c5ad"
    assert reroll_request(request, 0, 1).seed == 345172742
    assert (again.n, again.params, again.target_size) == (1, request.params, "300*250")
    assert key_and_seed(RequestFields.of(again)) == (again.request_key, again.seed)
    # Rows that differ only in params, or only in their target size, re-roll under other keys.
    for other in (
        dataclasses.replace(request, params=(("quality", "low"),)),
        dataclasses.replace(request, target_size="728*90"),
    ):
        assert reroll_request(other, 1, 2).request_key != again.request_key
