"""threed.export: mesh files are +Y up (glTF's convention, and viewers'), the world +Z up; load_mesh undoes it."""
import numpy as np
import pytest
import trimesh

from threed.export import load_mesh, save_mesh


@pytest.mark.parametrize("suffix", ["glb", "obj", "ply"])
def test_a_tall_object_stands_up_in_the_file_and_loads_back_in_the_world(tmp_path, suffix):
    tower = trimesh.creation.box(extents=[0.2, 0.3, 1.0])  # tall along the world's up, +Z
    tower.apply_translation([0.1, 0.0, 0.5])  # standing on the ground plane z = 0, off centre in x
    tower.visual.vertex_colors = [200, 30, 30, 255]
    path = tmp_path / f"tower.{suffix}"
    save_mesh(tower, path)
    in_file = trimesh.load(path, force="mesh", process=False)  # as a glTF viewer reads it
    assert np.allclose(in_file.extents, [0.2, 1.0, 0.3])  # tall along +Y
    assert np.allclose(in_file.bounds[:, 1], [0.0, 1.0])  # standing on y = 0, upward
    assert np.allclose(in_file.bounds[:, 0], [0.0, 0.2])  # x unchanged
    back = load_mesh(path)
    assert np.allclose(back.bounds, tower.bounds, atol=1e-6)
    assert back.volume == pytest.approx(tower.volume)  # still wound outward
    assert (np.asarray(back.visual.vertex_colors)[:, :3] == [200, 30, 30]).all()
