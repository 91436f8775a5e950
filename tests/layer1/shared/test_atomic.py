"""`layer1_patches/shared/atomic.py`: a reader sees the old file or the whole new one, and nothing is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer1_patches.shared.atomic import (
    atomic_path,
    partial_path,
    read_json_object,
    remove_inside,
    write_json_atomic,
    write_text_atomic,
)
from layer1_patches.shared.errors import CamnetError


def test_partial_path_is_hidden_beside_the_final() -> None:
    assert partial_path(Path("/out/slide_1")) == Path("/out/.slide_1.partial")


def test_write_json_atomic_writes_the_object_and_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    data = {"jobs": {"layer1": "12", "train": "13"}, "mode": "slurm", "n": [1, 2.5, None]}
    assert write_json_atomic(path, data) == path
    assert json.loads(path.read_text()) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.json"]


def test_write_json_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "timings.json"
    path.write_text('{"old": true, "longer": "than the new content by a good margin"}')
    write_json_atomic(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timings.json"]


def test_write_text_atomic_failing_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old"

    def killed(*_args: object) -> None:  # the writer dies after writing every byte, before the rename
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr("layer1_patches.shared.atomic.os.replace", killed)
        with pytest.raises(OSError):
            write_text_atomic(path, "new and complete")
    assert path.read_text() == "old"
    write_text_atomic(path, "new")
    assert path.read_text() == "new"


def test_write_text_atomic_failing_rename_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "timings.json").mkdir()  # the rename onto a folder fails
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "timings.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timings.json"]


def test_atomic_path_renames_into_place_on_success(tmp_path: Path) -> None:
    final = tmp_path / "froc.png"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".png"
        assert tmp != final
        tmp.write_bytes(b"png")
        assert not final.exists()  # nothing visible until the block succeeds
    assert final.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["froc.png"]


def test_atomic_path_leaves_nothing_behind_on_an_exception(tmp_path: Path) -> None:
    final = tmp_path / "model.keras"
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(final) as tmp:
        tmp.write_bytes(b"half a model")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_exception_keeps_the_old_file(tmp_path: Path) -> None:
    final = tmp_path / "slide_roc.png"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.write_bytes(b"new but unfinished")
        raise KeyboardInterrupt
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide_roc.png"]


def test_atomic_path_writer_that_wrote_nothing_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out.png"
    with pytest.raises(FileNotFoundError), atomic_path(final):
        pass
    assert list(tmp_path.iterdir()) == []


def test_read_json_object_returns_the_object(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"a": 1, "b": {"c": [1, 2]}}')
    assert read_json_object(path) == {"a": 1, "b": {"c": [1, 2]}}


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"a": 1', b"[1, 2]", b'"text"', b"3", b"null",
                                     b"\xff\xfe\x00garbage"])
def test_read_json_object_of_garbage_or_non_object_is_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert read_json_object(path) == {}


def test_read_json_object_of_missing_file_or_folder_is_empty(tmp_path: Path) -> None:
    assert read_json_object(tmp_path / "missing.json") == {}
    assert read_json_object(tmp_path / "no" / "such" / "dir.json") == {}
    assert read_json_object(tmp_path) == {}  # a folder


def test_remove_inside_refuses_the_folder_itself_and_its_parent(tmp_path: Path) -> None:
    # Regression (issue 13): output folder OUT/<stem> with stem '.' or '..' is OUT or its parent; rmtree on it
    # deleted every other slide's output, or OUT's siblings.
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    canary = tmp_path / "canary"
    canary.write_text("keep")
    for victim in (out / ".", out / "..", out / "other" / ".." / ".."):
        with pytest.raises(CamnetError, match="refusing to remove .*outside output folder"):
            remove_inside(victim, out)
    assert canary.read_text() == "keep" and (out / "other").is_dir()


def test_remove_inside_removes_a_link_never_its_target(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    out.mkdir()
    (out / "slide1").symlink_to(elsewhere)
    remove_inside(out / "slide1", out)
    assert not (out / "slide1").exists() and (elsewhere / "data").is_dir()
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("x")
    remove_inside(out / "sub", out)
    assert not (out / "sub").exists()
    remove_inside(out / "gone", out)  # nothing there: fine
