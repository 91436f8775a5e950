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
