"""The ShapeWorld evaluator: perfect on the canon, worse when displaced or wrongly coloured."""
import json

import numpy as np
import pytest
import trimesh

from threed.export import save_mesh
from threed.shapeworld import canon, evaluator
from threed.shapeworld.__main__ import main as shapeworld_main


def coloured(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh = mesh.copy()
    rgba = np.append((np.asarray(rgb) * 255).round(), 255).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


@pytest.fixture(scope="module")
def red_cube() -> trimesh.Trimesh:
    return coloured(evaluator.ground_truth_mesh("cube", resolution=64), canon.ALBEDOS["red"])


def test_the_canon_mesh_scores_perfectly_even_turned_about_z(red_cube):
    turned = red_cube.copy()
    turned.apply_transform(trimesh.transformations.rotation_matrix(np.radians(30), [0, 0, 1]))
    for mesh in (red_cube, turned):
        score = evaluator.evaluate_mesh(mesh, "a red cube")
        assert score["chamfer"] < 0.005 and score["iou"] > 0.95 and score["color_error"] < 0.01, score


def test_a_displaced_mesh_scores_worse(red_cube):
    shifted = red_cube.copy()
    shifted.apply_translation([0.12, 0.0, 0.0])
    perfect, displaced = (evaluator.evaluate_mesh(m, "a red cube") for m in (red_cube, shifted))
    assert displaced["chamfer"] > perfect["chamfer"] + 0.03
    assert displaced["iou"] < perfect["iou"] - 0.2


def test_a_wrongly_coloured_mesh_scores_worse(red_cube):
    blue = coloured(red_cube, canon.ALBEDOS["blue"])
    blue_for_red = evaluator.evaluate_mesh(blue, "a red cube")
    assert blue_for_red["color_error"] > 0.3
    assert blue_for_red["mean_color"] == pytest.approx(canon.ALBEDOS["blue"], abs=0.005)
    assert evaluator.evaluate_mesh(blue, "a blue cube")["color_error"] < 0.01


def test_the_wrong_shape_scores_worse(red_cube):
    assert evaluator.evaluate_mesh(red_cube, "a red sphere")["chamfer"] > 0.02


def test_eval_command_prints_json(red_cube, tmp_path, capsys):
    path = tmp_path / "cube.ply"
    save_mesh(red_cube, path)  # +Y up, as the project writes meshes and glTF viewers read them
    shapeworld_main(["eval", str(path), "--prompt", "a red cube, side view"])
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == "cube" and result["iou"] > 0.95
    with pytest.raises(SystemExit, match="not a ShapeWorld prompt"):
        shapeworld_main(["eval", str(path), "--prompt", "a red dodecahedron"])


def test_meshes_command_writes_the_canon(tmp_path):
    shapeworld_main(["meshes", str(tmp_path), "--resolution", "32"])
    assert sorted(p.stem for p in tmp_path.glob("*.ply")) == sorted(canon.SHAPES)
    assert trimesh.load(tmp_path / "torus.ply").is_watertight
