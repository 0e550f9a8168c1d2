"""Comparing an exported mesh with a ground truth: Chamfer distance (minimised over rotations about
z), volumetric IoU and the colour error of the mean surface colour, in chromaticity."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from mesh.texture import sample

Inside = Callable[[np.ndarray], np.ndarray]  # points [N, 3] -> bool [N]


@dataclass
class MeshScore:
    chamfer: float  # mean of the two mean nearest-neighbour distances, scene units
    iou: float  # volumetric intersection over union
    color_error: float  # distance between chromaticities (rgb / (r + g + b))
    rotation_deg: float  # rotation about z of the mesh that fits best
    mean_color: tuple[float, float, float]  # rgb in [0, 1] over area-uniform surface samples: what color_error judges

    def as_dict(self) -> dict:
        return {"chamfer": self.chamfer, "iou": self.iou, "color_error": self.color_error,
                "rotation_deg": self.rotation_deg, "mean_color": list(self.mean_color)}


def rotation_z(degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])


def chamfer(points: np.ndarray, truth_points: np.ndarray, truth_tree: cKDTree) -> float:
    to_truth = truth_tree.query(points)[0].mean()
    from_truth = cKDTree(points).query(truth_points)[0].mean()
    return 0.5 * (to_truth + from_truth)


def surface_samples(mesh: trimesh.Trimesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points [count, 3] on the surface and their colours [count, 3] in [0, 1]: vertex colours
    interpolated, or the base-colour texture sampled at the interpolated UV as a glTF viewer samples it;
    grey without either."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    corners = mesh.faces[faces]  # [count, 3]
    barycentric = trimesh.triangles.points_to_barycentric(mesh.vertices[corners], points)[..., None]  # [count, 3, 1]
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[corners, :3] / 255.0  # [count, 3, 3]
        return points, (barycentric * colors).sum(axis=1)
    if mesh.visual.kind == "texture":
        uv = (barycentric * np.asarray(mesh.visual.uv)[corners]).sum(axis=1)
        return points, base_color(mesh.visual.material, uv)
    return points, np.full((count, 3), 0.5)


def base_color(material: trimesh.visual.material.Material, uv: np.ndarray) -> np.ndarray:
    """A material's base colour [N, 3] in [0, 1] at ``uv`` [N, 2]: its texture (bilinear) times its colour factor."""
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        image, factor = material.baseColorTexture, material.baseColorFactor
    else:
        image, factor = material.image, material.diffuse
    factor = np.ones(3) if factor is None else np.asarray(factor, dtype=np.float64)[:3] / 255.0
    if image is None:
        return np.broadcast_to(factor, (len(uv), 3)).copy()
    texels = torch.tensor(np.array(image.convert("RGB")), dtype=torch.float64) / 255.0
    return sample(texels, torch.as_tensor(uv, dtype=torch.float64)).numpy() * factor


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    return rgb / max(float(rgb.sum()), 1e-8)


def chromaticity_error(rgb, albedo) -> float:
    """The evaluator's colour error: the distance between the chromaticities of a mean colour and an albedo."""
    rgb, albedo = (np.asarray(colour, dtype=np.float64) for colour in (rgb, albedo))
    return float(np.linalg.norm(chromaticity(rgb) - chromaticity(albedo)))


def best_rotation(points: np.ndarray, truth_points: np.ndarray, coarse_step_deg: float = 10.0,
                  fine_step_deg: float = 1.0, sweep_samples: int = 4000) -> tuple[float, float]:
    """(Chamfer distance, angle) minimised over rotations of ``points`` about z: a coarse sweep of the
    circle, then a fine one around the best coarse angle, both on a subsample of the points (a
    nearest-neighbour query is slow when the two sets lie far apart), and the distance at the best
    angle on all of them."""

    def sweep(angles: np.ndarray) -> float:
        distances = [chamfer(mine @ rotation_z(angle).T, theirs, tree) for angle in angles]
        return float(angles[int(np.argmin(distances))])

    mine, theirs = points[:sweep_samples], truth_points[:sweep_samples]
    tree = cKDTree(theirs)
    coarse = sweep(np.arange(0.0, 360.0, coarse_step_deg))
    angle = sweep(coarse + np.arange(-coarse_step_deg, coarse_step_deg + 1e-9, fine_step_deg))
    return chamfer(points @ rotation_z(angle).T, truth_points, cKDTree(truth_points)), angle


def score_mesh(mesh: trimesh.Trimesh, truth: trimesh.Trimesh, inside_truth: Inside, albedo: tuple[float, float, float],
               half_extent: float = 0.5, samples: int = 30000, grid: int = 48, seed: int = 0) -> MeshScore:
    """Scores ``mesh`` against ``truth``; IoU on a ``grid``^3 lattice over [-half_extent, half_extent]^3."""
    points, colors = surface_samples(mesh, samples, seed)
    truth_points, _ = surface_samples(truth, samples, seed + 1)
    distance, angle = best_rotation(points, truth_points)
    axis = (np.arange(grid) + 0.5) / grid * (2 * half_extent) - half_extent
    lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    in_truth = inside_truth(lattice)
    # Inside-ness of the surface alone, its copies of vertices along texture seams welded.
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    in_mesh = welded.contains(lattice @ rotation_z(angle))  # the lattice, turned back into the mesh's frame
    union = np.logical_or(in_truth, in_mesh).sum()
    iou = float(np.logical_and(in_truth, in_mesh).sum() / union) if union else 0.0
    mean_color = colors.mean(axis=0)
    return MeshScore(float(distance), iou, chromaticity_error(mean_color, albedo), angle % 360.0,
                     tuple(float(c) for c in mean_color))
