"""Benchmarks, printed as one JSON object.

    python -m threed.tools.bench render [--samples-per-ray 64] [--repeats 2]
    python -m threed.tools.bench hashgrid [--points 262144] [--repeats 3]
    python -m threed.tools.bench teacher [--repeats 3]
    python -m threed.tools.bench occupancy [--config configs/shapeworld.yaml] [--thresholds 0.01,0.4] [--every 100] [key.path=value ...]
    python -m threed.tools.bench step [--config configs/shapeworld.yaml] [--warmup 5] [--steps 10] [key.path=value ...]
    python -m threed.tools.bench tetrahedra [--resolution 128] [--shapes sphere,torus]
    python -m threed.tools.bench rasterize [--subdivisions 5] [--repeats 3]
    python -m threed.tools.bench export RUN_DIR [--texture-size 1024]

``export``: seconds for the parts of a finished run's textured export: its surface, xatlas' UV unwrap
and the bake of its colour into the texture.

``render``: milliseconds for the forward plus backward pass of one view at 64 x 64 and 256 x 256,
with dense sampling and with empty-space skipping at the same sample spacing, on a field with
ProlificDreamer's hash grid whose occupied volume is a sphere of radius 0.35 in the box
[-1, 1]^3.

``hashgrid``: forward-plus-backward throughput, in points per second, of ProlificDreamer's hash grid
(16 levels, 2 features, 2^19 entries) on ``--points`` random points, for each backend this machine
runs (``torch``; ``cpu``, the fused C kernel; ``tcnn`` on CUDA) and for a plain per-level loop of the
same lookup (int64 indices, one gather per level and corner, trilinear weights), side by side in one
process; each backend's ratio to the plain loop.

``teacher``: milliseconds for one training step of the ShapeWorld teacher (the ``small``
architecture, a batch of 32: ``TeacherTrainer.train_step``) and for one classifier-free-guided U-Net
call for 8 images (a batch of 16, conditional and unconditional), each in float32 and under bfloat16 autocast (fast only on CPUs with AMX).

``occupancy``: trains a config's run and, every ``--every`` steps, renders a few of its
training views with the occupancy grid thresholded at each of ``--thresholds`` (the same grid
densities, so the same run): the samples evaluated per view and the milliseconds of a view's
forward plus backward pass. The run itself keeps its config's threshold.

``step``: where a training step's time goes. Trains a config's run ``--warmup`` steps, then times
``--steps`` more one by one (the median wall time of a step, unprofiled), then profiles as many with
torch.profiler and reports the mean milliseconds per step of each part the trainer and the guidance
label (``step.*``, ``guidance.*``: the render, the teacher's and the fake score's U-Net calls, the
discriminator, each backward and optimiser step, the fake score's update...), nested parts included
in their parents; and the peak memory (CUDA's allocator, or the process's resident set on the CPU).

``rasterize``: the mesh stages' CPU rasterizer (``mesh.rasterize``: rasterize, interpolate vertex colours,
antialias) forward plus backward into the vertices and colours, for an icosphere of radius 0.35 (20,480
triangles at the default subdivisions), at 64 x 64 and 256 x 256, against one NeRF view's forward plus
backward of the ``render`` benchmark's sphere field with empty-space skipping, same camera, same process.

``tetrahedra``: marching tetrahedra (``mesh.tetrahedra``) on a grid of ``--resolution`` cells a side
over [-0.5, 0.5]^3 from the exact signed distance of canon shapes: the milliseconds of the
extraction, the mesh's size, and its Chamfer distance to the true surface: half the mean distance
of 20,000 mesh samples to the surface (|signed distance|) plus half that of 20,000 points of the true
surface to the mesh (trimesh's closest point); the true surface's points are those of a grid twice as
fine within a cell of it, moved onto it along the distance's gradient.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import trimesh

from nerf.field import FieldSpec, RadianceField
from nerf import hashgrid_cpu
from nerf.hashgrid import HASH_PRIMES, HashGridEncoding, HashGridSpec, tcnn_available
from nerf.occupancy import OccupancyGrid
from nerf.renderer import RenderSpec, render_rays
from threed.cameras import CameraBatch, make_cameras, sample_cameras
from threed.config import load_config
from threed.device import default_device
from threed.run import Run
from threed.shapeworld.train_teacher import ARCHITECTURES, TeacherTrainer
from threed.trainer import Trainer

SPHERE_RADIUS = 0.35


def wall_ms(work, device: torch.device) -> float:
    """Wall time of one call of ``work()`` in milliseconds, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def timed_ms(work, repeats: int, device: torch.device) -> float:
    """Median wall time of ``work()`` in milliseconds (the upper one of an even count), after one warm-up call."""
    work()
    times = sorted(wall_ms(work, device) for _ in range(repeats))
    return times[len(times) // 2]


def sphere_field(device: torch.device) -> RadianceField:
    """A field whose density, and occupancy grid, fill a sphere of radius 0.35."""
    field = RadianceField(FieldSpec(blob_radius=SPHERE_RADIUS)).to(device)

    def sphere_density(points: torch.Tensor) -> torch.Tensor:
        return 10.0 * (points.norm(dim=-1) < SPHERE_RADIUS).float()

    field.occupancy.update(sphere_density, torch.Generator(device).manual_seed(0))
    return field


def render_step(field: RadianceField, resolution: int, spec: RenderSpec, occupancy: OccupancyGrid | None, device):
    """One view's forward and backward pass, in chunks of rays whose gradients accumulate."""
    cameras = make_cameras(*(torch.tensor([v], device=device) for v in (15.0, 30.0, 2.0, 50.0)), resolution, resolution)
    rays = cameras.rays()
    generator = torch.Generator(device).manual_seed(0)

    def work():
        field.zero_grad(set_to_none=True)
        for start in range(0, len(rays), spec.chunk_rays):
            render = render_rays(field, rays[start : start + spec.chunk_rays], spec, generator, occupancy)
            (render.rgb.sum() / len(rays)).backward()

    return work


def bench_render(samples_per_ray: int, repeats: int) -> dict:
    device = default_device()
    field = sphere_field(device)
    spec = RenderSpec(samples_per_ray=samples_per_ray, chunk_rays=4096)
    result = {"device": describe(device), "samples_per_ray": samples_per_ray}
    for resolution in (64, 256):
        dense = timed_ms(render_step(field, resolution, spec, None, device), repeats, device)
        skip = timed_ms(render_step(field, resolution, spec, field.occupancy, device), repeats, device)
        result[f"res{resolution}"] = {"dense_ms": round(dense, 1), "skip_ms": round(skip, 1), "speedup": round(dense / skip, 2)}
    return result


def plain_hash_grid(encoding: HashGridEncoding, points: torch.Tensor) -> torch.Tensor:
    """The baseline: the encoding's lookup written as a plain loop over levels and corners.

    points: [N, 3] in [0, 1] -> features [N, L * F], as ``encoding`` computes them (tested)."""
    spec, primes = encoding.spec, torch.tensor(HASH_PRIMES, device=points.device)
    features = []
    for level, (scale, resolution, size, offset) in enumerate(zip(
            spec.level_scales(), spec.level_resolutions(), spec.level_sizes(), encoding.level_offsets.tolist())):
        scaled = points * scale + 0.5
        low = scaled.floor()
        frac, low = scaled - low, low.long()
        level_features = 0
        for corner in itertools.product((0, 1), repeat=3):
            side = torch.tensor(corner, device=points.device)
            coords = low + side
            if level < encoding.n_dense_levels:
                index = coords[:, 0] + coords[:, 1] * resolution + coords[:, 2] * resolution**2
            else:
                index = (coords[:, 0] * primes[0]) ^ (coords[:, 1] * primes[1]) ^ (coords[:, 2] * primes[2])
            weight = torch.where(side.bool(), frac, 1.0 - frac).prod(-1, keepdim=True)
            level_features = level_features + weight * encoding.table[offset + index % size]
        features.append(level_features)
    return torch.cat(features, dim=-1)


def bench_hashgrid(n_points: int, repeats: int) -> dict:
    device = default_device()
    points = torch.rand(n_points, 3, device=device, generator=torch.Generator(device).manual_seed(0))
    backends = ["torch"] + (["cpu"] * hashgrid_cpu.available() if device.type == "cpu" else ["tcnn"] * tcnn_available())
    result = {"device": describe(device), "points": n_points}
    encodings = {"plain_loop": HashGridEncoding(HashGridSpec()).to(device)}
    encodings.update({backend: HashGridEncoding(HashGridSpec(backend=backend)).to(device) for backend in backends})
    for name, encoding in encodings.items():
        lookup = functools.partial(plain_hash_grid, encoding) if name == "plain_loop" else encoding

        def forward_backward():
            encoding.table.grad = None
            lookup(points).sum().backward()

        milliseconds = timed_ms(forward_backward, repeats, device)
        result[f"{name}_points_per_s"] = round(n_points / (milliseconds / 1000))
    for backend in backends:
        result[f"{backend}_vs_plain_loop"] = round(result[f"{backend}_points_per_s"] / result["plain_loop_points_per_s"], 2)
    return result


def bench_teacher(repeats: int) -> dict:
    device = torch.device("cpu")  # the teacher's training script runs on the CPU
    result = {"device": describe(device)}
    images = torch.rand(32, 3, 64, 64) * 2 - 1
    captions = ["a red vase, front view"] * len(images)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        trainer = TeacherTrainer(Path(tempfile.gettempdir()), ARCHITECTURES["small"], steps=1000,  # never saved
                                 batch=len(images), lr=1e-4, seed=0, bf16=bf16)

        def guided_call():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                trainer.unet(torch.randn(16, 3, 64, 64), torch.full((16,), 500), encoder_hidden_states=text)

        with torch.no_grad():
            text = trainer.encode_captions(captions[:16])
        result[name] = {"train_step_ms": round(timed_ms(lambda: trainer.train_step(images, captions), repeats, device), 1),
                        "guided_call_ms": round(timed_ms(guided_call, repeats, device), 1)}
    return result


def bench_occupancy(config_path: str, overrides: list[str], thresholds: list[float], every: int, views: int) -> dict:
    with tempfile.TemporaryDirectory() as outputs:
        run, teacher = Run.start(load_config(config_path, [*overrides, f"outputs={outputs}"]))
        config, device = run.config, run.device
        trainer = run.trainer(teacher)
        field = trainer.representation.field  # a NeRF config's: this benchmark measures its occupancy grid
        occupancy = field.occupancy
        evaluated = []
        field.register_forward_hook(lambda module, inputs, output: evaluated.append(len(inputs[0])))
        result = {"device": describe(device), "config": config_path, "steps": {}}
        while trainer.step < config.trainer.max_steps:
            for _ in range(min(every, config.trainer.max_steps - trainer.step)):
                trainer.training_step()
            generator = torch.Generator(device).manual_seed(trainer.step)
            cameras = [sample_cameras(config.camera, generator, trainer.step) for _ in range(views)]
            per_threshold = {}
            for threshold in thresholds:
                with occupancy.thresholded(threshold):
                    evaluated.clear()
                    ms = timed_ms(lambda: render_views_backward(trainer, cameras), 1, device) / views
                per_threshold[str(threshold)] = {"samples_per_view": round(sum(evaluated[-views:]) / views), "ms_per_view": round(ms, 1)}
            result["steps"][str(trainer.step)] = per_threshold
        return result


def bench_step(config_path: str, overrides: list[str], warmup: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as outputs:
        run, teacher = Run.start(load_config(config_path, [*overrides, f"outputs={outputs}"]))
        trainer, device = run.trainer(teacher), run.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            trainer.training_step()
        step_ms = [wall_ms(trainer.training_step, device) for _ in range(steps)]
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(steps):
                trainer.training_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        parts = {event.key: round(event.cpu_time_total / 1000 / steps, 1) for event in profiler.key_averages()
                 if event.key.startswith(("step.", "guidance."))}
        peak_mb = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        return {"device": describe(device), "config": config_path, "overrides": overrides, "steps": steps,
                "step_ms_median": round(statistics.median(step_ms), 1), "parts_ms": dict(sorted(parts.items())),
                "peak_memory_mb": round(peak_mb)}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def render_views_backward(trainer: Trainer, cameras: list[CameraBatch]) -> None:
    """Each view's forward and backward pass through the trainer's representation, as a training step renders it
    (albedo; gradients discarded)."""
    for view in cameras:
        generator = torch.Generator(view.c2w.device).manual_seed(0)
        trainer.representation.render(view, generator, shading="albedo").images.sum().backward()
        trainer.representation.zero_grad(set_to_none=True)


def mesh_render_step(subdivisions: int, resolution: int, device: torch.device):
    """The rasterizer's forward and backward pass for an icosphere seen by ``render_step``'s camera."""
    from mesh.rasterize import antialias, clip_positions, interpolate, rasterize

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=SPHERE_RADIUS)
    vertices = torch.as_tensor(sphere.vertices, dtype=torch.float32, device=device).requires_grad_(True)
    colours = torch.rand(len(vertices), 3, device=device).requires_grad_(True)
    faces = torch.as_tensor(sphere.faces, dtype=torch.long, device=device)
    camera = make_cameras(*(torch.tensor([v], device=device) for v in (15.0, 30.0, 2.0, 50.0)), resolution, resolution)

    def work():
        clip = clip_positions(vertices, camera.c2w[0], camera.fovy[0])
        raster = rasterize(clip, faces, resolution, resolution)
        antialias(interpolate(colours, raster, faces), raster, clip, faces).sum().backward()

    return work, len(faces)


def bench_rasterize(subdivisions: int, repeats: int) -> dict:
    device = default_device()
    field = sphere_field(device)
    spec = RenderSpec(samples_per_ray=64, chunk_rays=4096)
    result = {"device": describe(device)}
    for resolution in (64, 256):
        work, triangles = mesh_render_step(subdivisions, resolution, device)
        mesh_ms = timed_ms(work, repeats, device)
        nerf_ms = timed_ms(render_step(field, resolution, spec, field.occupancy, device), repeats, device)
        result["triangles"] = triangles
        result[f"res{resolution}"] = {"mesh_ms": round(mesh_ms, 1), "nerf_ms": round(nerf_ms, 1),
                                      "mesh_over_nerf": round(mesh_ms / nerf_ms, 3)}
    return result


def surface_points(distance, points: torch.Tensor) -> torch.Tensor:
    """Points [N, 3] near the zero set of an exact signed ``distance``, moved onto it along its gradient."""
    points = points.clone().requires_grad_(True)
    value = distance(points)
    (gradient,) = torch.autograd.grad(value.sum(), points)
    return (points - value[:, None] * gradient).detach()


def bench_tetrahedra(resolution: int, shapes: list[str]) -> dict:
    from mesh.tetrahedra import marching_tetrahedra, tetrahedral_grid
    from threed.shapeworld.canon import SIGNED_DISTANCES

    grid = tetrahedral_grid(resolution, half_size=0.5)
    fine = tetrahedral_grid(2 * resolution, half_size=0.5).vertices
    report = {"device": describe(torch.device("cpu")), "resolution": resolution, "tets": len(grid.tets)}
    for shape in shapes:
        distance = SIGNED_DISTANCES[shape]
        started = time.perf_counter()
        points, faces = marching_tetrahedra(grid.vertices, grid.tets, distance(grid.vertices))
        elapsed_ms = 1000 * (time.perf_counter() - started)
        mesh = trimesh.Trimesh(points.numpy(), faces.numpy())
        samples = torch.as_tensor(trimesh.sample.sample_surface(mesh, 20_000, seed=0)[0], dtype=torch.float32)
        near = fine[distance(fine).abs() < 1.0 / resolution]
        truth = surface_points(distance, near[torch.randperm(len(near), generator=torch.Generator().manual_seed(0))[:20_000]])
        from_truth = trimesh.proximity.closest_point(mesh, truth.numpy())[1].mean()
        chamfer = 0.5 * (distance(samples).abs().mean().item() + from_truth)
        report[shape] = {"extract_ms": round(elapsed_ms, 1), "vertices": len(points), "faces": len(faces),
                         "watertight": bool(mesh.is_watertight), "chamfer": round(chamfer, 6)}
    return report


def bench_export(run_dir: str, texture_size: int) -> dict:
    """The parts of exporting a finished run's textured mesh: the surface, xatlas' unwrap and the bake."""
    from mesh.texture import bake, unwrap
    from threed.run import Run

    run = Run.open(run_dir, [f"export.texture_size={texture_size}"])
    representation = run.trained_representation()
    spec = run.config.export
    started = time.perf_counter()
    mesh = representation.extract_mesh(spec)
    surface_s = time.perf_counter() - started
    started = time.perf_counter()
    layout = unwrap(mesh.vertices, mesh.faces, spec.texture_size, spec.texture_padding)
    unwrap_s = time.perf_counter() - started
    points = torch.as_tensor(mesh.vertices[layout.source_vertex], dtype=torch.float32, device=run.device)
    started = time.perf_counter()
    bake(points, torch.as_tensor(layout.faces, device=run.device), torch.as_tensor(layout.uv, device=run.device),
         representation.albedo, spec.texture_size)
    return {"device": describe(run.device), "representation": run.config.representation, "faces": len(mesh.faces),
            "texture_size": spec.texture_size, "surface_s": round(surface_s, 2), "unwrap_s": round(unwrap_s, 2),
            "bake_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="volume rendering, dense and with empty-space skipping")
    render.add_argument("--samples-per-ray", type=int, default=64)
    render.add_argument("--repeats", type=int, default=2)
    hashgrid = commands.add_parser("hashgrid", help="the hash grid's backends against a plain per-level loop")
    hashgrid.add_argument("--points", type=int, default=2**18)
    hashgrid.add_argument("--repeats", type=int, default=3)
    teacher = commands.add_parser("teacher", help="ShapeWorld teacher training and sampling speed, fp32 and bf16")
    teacher.add_argument("--repeats", type=int, default=3)
    occupancy = commands.add_parser("occupancy", help="samples and render time of a real run at several occupancy thresholds")
    occupancy.add_argument("--config", default="configs/shapeworld.yaml")
    occupancy.add_argument("--thresholds", default="0.01,0.4", help="comma-separated densities")
    occupancy.add_argument("--every", type=int, default=100, help="training steps between measurements")
    occupancy.add_argument("--views", type=int, default=4, help="training views rendered per measurement")
    occupancy.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    step = commands.add_parser("step", help="where a training step's time goes, and the peak memory")
    step.add_argument("--config", default="configs/shapeworld.yaml")
    step.add_argument("--warmup", type=int, default=5, help="steps before any timing")
    step.add_argument("--steps", type=int, default=10, help="steps timed, then as many profiled")
    step.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    rasterize = commands.add_parser("rasterize", help="the CPU rasterizer against a NeRF view, forward plus backward")
    rasterize.add_argument("--subdivisions", type=int, default=5, help="icosphere subdivisions (5: 20,480 triangles)")
    rasterize.add_argument("--repeats", type=int, default=3)
    tetrahedra = commands.add_parser("tetrahedra", help="marching tetrahedra's accuracy on canon shapes' exact distances")
    tetrahedra.add_argument("--resolution", type=int, default=128, help="grid cells a side")
    tetrahedra.add_argument("--shapes", default="sphere,torus", help="comma-separated canon shapes")
    export = commands.add_parser("export", help="the parts of a finished run's textured export: surface, unwrap, bake")
    export.add_argument("run_dir")
    export.add_argument("--texture-size", type=int, default=1024)
    args = parser.parse_args(argv)
    run = {"render": lambda: bench_render(args.samples_per_ray, args.repeats), "teacher": lambda: bench_teacher(args.repeats),
           "hashgrid": lambda: bench_hashgrid(args.points, args.repeats),
           "occupancy": lambda: bench_occupancy(args.config, args.overrides, [float(t) for t in args.thresholds.split(",")],
                                                args.every, args.views),
           "step": lambda: bench_step(args.config, args.overrides, args.warmup, args.steps),
           "rasterize": lambda: bench_rasterize(args.subdivisions, args.repeats),
           "tetrahedra": lambda: bench_tetrahedra(args.resolution, args.shapes.split(",")),
           "export": lambda: bench_export(args.run_dir, args.texture_size)}
    print(json.dumps(run[args.command]()))


if __name__ == "__main__":
    main()
