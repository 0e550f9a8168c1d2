"""Meshes for the mesh stages: the tetrahedral grid and differentiable marching tetrahedra (DMTet's
surface extraction).

Like ``nerf/`` this package knows nothing of cameras' sampling, teachers or training: it turns signed
distances on a grid into a triangle mesh whose vertices carry gradients back to them.
"""
