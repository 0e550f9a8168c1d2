"""threed.files: every file the project writes is either the old one or the complete new one."""
import pytest
import torch

from threed.files import atomic_path, save_torch, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "step0000001.pt"
    save_torch({"x": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_torch({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]


def test_writers_get_distinct_hidden_temporary_names_with_the_target_suffix(tmp_path):
    target = tmp_path / "sub" / "model.glb"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == target.parent  # made if missing
        assert first.suffix == ".glb" and first.name.startswith(".") and not list(tmp_path.glob("sub/model*"))
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the last block to finish wins, whole
    assert [p.name for p in target.parent.iterdir()] == ["model.glb"]


def test_write_json_round_trips(tmp_path):
    write_json(tmp_path / "cell.json", {"seed": 3})
    assert (tmp_path / "cell.json").read_text() == '{"seed": 3}\n'
