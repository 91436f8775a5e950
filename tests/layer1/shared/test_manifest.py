from __future__ import annotations

from pathlib import Path

from layer1_patches.shared.manifest import largest_first


def test_largest_slides_come_first_so_the_array_does_not_end_on_one_big_task(tmp_path: Path) -> None:
    sizes = {"a.tif": 10, "b.tif": 300, "c.tif": 300, "d.tif": 50}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    pairs = [(tmp_path / name, None) for name in sorted(sizes)]
    order = [p.name for p, _ in largest_first(pairs)]
    assert order == ["b.tif", "c.tif", "d.tif", "a.tif"]  # ties by path: deterministic


def test_annotations_stay_with_their_slide(tmp_path: Path) -> None:
    small, big = tmp_path / "small.tif", tmp_path / "big.tif"
    small.write_bytes(b"x")
    big.write_bytes(b"x" * 100)
    xml = tmp_path / "small.xml"
    assert largest_first([(small, xml), (big, None)]) == [(big, None), (small, xml)]
