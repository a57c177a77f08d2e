"""Without torchrun, the distributed helpers behave as a single process."""

from __future__ import annotations

import pytest

from serpent_cli import distributed


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = distributed.init_distributed("cpu")
    assert ctx.is_main and not ctx.is_distributed
    assert distributed.shard(list(range(5)), ctx) == [0, 1, 2, 3, 4]
    assert distributed.gather_objects({"a": 1}, ctx) == [{"a": 1}]


def test_shard_is_round_robin_and_complete() -> None:
    items = list(range(11))
    parts = [distributed.shard(items, distributed.DistContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for part in parts for i in part) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
