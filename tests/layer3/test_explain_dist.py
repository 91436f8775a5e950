"""Round-robin patch shares and their merge back into selection order."""

from __future__ import annotations

from layer3_inference.explain import dist


def test_shares_cover_every_item_once_and_merge_back_in_order() -> None:
    n, size = 11, 3
    shares = [dist.World(rank, size).share(n).tolist() for rank in range(size)]
    assert sorted(sum(shares, [])) == list(range(n))
    parts = [[f"item{i}" for i in share] for share in shares]
    assert dist.merge_shares(parts, n, size) == [f"item{i}" for i in range(n)]


def test_single_process_world() -> None:
    world = dist.World()
    assert world.is_chief and world.gather(5) == [5] and world.allgather("a") == ["a"]
    assert world.share(3).tolist() == [0, 1, 2]


class _TwoRanks:
    """Stands in for `infer.Ranks` of a two-process run: allgather returns both ranks' values in rank order."""

    def __init__(self, other: object) -> None:
        self.other = other
        self.calls: list[object] = []

    def allgather(self, value: object) -> list[object]:
        self.calls.append(value)
        return [value, self.other]


def test_gather_reaches_only_the_chief_but_every_rank_takes_part() -> None:
    chief, worker = _TwoRanks("from 1"), _TwoRanks("from 1")
    assert dist.World(0, 2, chief).gather("from 0") == ["from 0", "from 1"]
    assert dist.World(1, 2, worker).gather("from 0") is None
    assert worker.calls == ["from 0"]  # the worker still joins the collective
    assert not dist.World(1, 2, worker).is_chief
    assert dist.World(1, 2, worker).share(7).tolist() == [1, 3, 5]


def test_merge_shares_of_uneven_parts() -> None:
    # 5 items over 3 ranks: rank 0 holds 0 and 3, rank 1 holds 1 and 4, rank 2 holds 2
    assert dist.merge_shares([["a", "d"], ["b", "e"], ["c"]], 5, 3) == ["a", "b", "c", "d", "e"]
