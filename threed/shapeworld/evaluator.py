"""The ShapeWorld evaluator: a mesh made for a canon prompt scored against the canon's true object."""
from __future__ import annotations

import functools

import mcubes
import numpy as np
import torch
import trimesh

from threed.evaluation import Evaluator, register
from threed.mesh_metrics import score_mesh
from threed.shapeworld.canon import (ALBEDOS, SCENE_HALF_EXTENT, SHOWCASE_PROMPTS, SIGNED_DISTANCES, is_canon_prompt,
                                     parse_prompt)


def ground_truth_mesh(shape: str, resolution: int = 128) -> trimesh.Trimesh:
    """The canon surface of ``shape`` (a fresh copy; see _ground_truth_mesh)."""
    return _ground_truth_mesh(shape, resolution).copy()


@functools.lru_cache(maxsize=12)
def _ground_truth_mesh(shape: str, resolution: int) -> trimesh.Trimesh:
    """The canon surface of ``shape`` in world units, by marching cubes of its signed distance sampled on a
    ``resolution``^3 grid over the scene box [-0.5, 0.5]^3: closed, with outward-facing triangles."""
    axis = torch.linspace(-SCENE_HALF_EXTENT, SCENE_HALF_EXTENT, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3]
    distance = SIGNED_DISTANCES[shape](grid.reshape(-1, 3)).reshape(grid.shape[:3])
    vertices, faces = mcubes.marching_cubes(distance.numpy(), 0.0)
    vertices = vertices * (2 * SCENE_HALF_EXTENT / (resolution - 1)) - SCENE_HALF_EXTENT
    mesh = trimesh.Trimesh(vertices, faces[:, ::-1])  # marching cubes winds them inwards for this sign
    # Grid nodes exactly on a flat face (a cap at z = +-0.3 when 0.2 (resolution - 1) is whole) give zero-area
    # triangles; without them the mesh is closed.
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh


def evaluate_mesh(mesh: trimesh.Trimesh, prompt: str) -> dict:
    """The evaluator's numbers for a mesh made for a ShapeWorld prompt (see threed.mesh_metrics)."""
    shape, colour = parse_prompt(prompt)

    def inside(points: np.ndarray) -> np.ndarray:
        return (SIGNED_DISTANCES[shape](torch.from_numpy(points)) < 0).numpy()

    score = score_mesh(mesh, ground_truth_mesh(shape), inside, ALBEDOS[colour], half_extent=SCENE_HALF_EXTENT)
    return {"prompt": prompt, "shape": shape, "colour": colour, **score.as_dict()}


def find_evaluator(prompt: str) -> Evaluator | None:
    """The ShapeWorld evaluator of a canon prompt ("a red vase"); None for any other prompt."""
    if not is_canon_prompt(prompt):
        return None
    return Evaluator("shapeworld", functools.partial(evaluate_mesh, prompt=prompt), SHOWCASE_PROMPTS)


def register_evaluator() -> None:
    """Makes runs, the comparison and the demo score canon prompts (``threed.evaluation``)."""
    register("shapeworld", find_evaluator)
