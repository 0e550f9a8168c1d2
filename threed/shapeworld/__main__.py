"""The ShapeWorld command line.

    python -m threed.shapeworld generate OUT.npz --per-prompt N --seed S
    python -m threed.shapeworld eval MESH --prompt "a red torus"
    python -m threed.shapeworld meshes OUT_DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from threed.export import load_mesh, save_mesh
from threed.files import atomic_path
from threed.shapeworld.canon import SHAPES, parse_prompt
from threed.shapeworld.evaluator import evaluate_mesh, ground_truth_mesh
from threed.shapeworld.render import generate_dataset


def _generate_command(arguments: argparse.Namespace) -> None:
    dataset = generate_dataset(arguments.per_prompt, arguments.seed, show_progress=True)
    with atomic_path(arguments.out) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **{name: np.asarray(value) for name, value in dataset.items()})
    print(f"wrote {len(dataset['images'])} images to {arguments.out}")


def _eval_command(arguments: argparse.Namespace) -> None:
    try:
        parse_prompt(arguments.prompt)  # before the (slow) loading, so a typo fails at once
        mesh = load_mesh(arguments.mesh)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps(evaluate_mesh(mesh, arguments.prompt)))


def _meshes_command(arguments: argparse.Namespace) -> None:
    arguments.out.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        save_mesh(ground_truth_mesh(shape, arguments.resolution), arguments.out / f"{shape}.ply")
    print(f"wrote {len(SHAPES)} ground-truth meshes to {arguments.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m threed.shapeworld", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="render the ShapeWorld data set to a compressed npz")
    generate.add_argument("out", type=Path, help="the .npz file to write")
    generate.add_argument("--per-prompt", type=int, default=160, help="images per prompt (36 prompts)")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate_command)
    evaluate = commands.add_parser("eval", help="score a mesh against the canon object of its prompt (JSON)")
    evaluate.add_argument("mesh", type=Path, help="OBJ, GLB or PLY")
    evaluate.add_argument("--prompt", required=True, help='e.g. "a red torus"')
    evaluate.set_defaults(run=_eval_command)
    meshes = commands.add_parser("meshes", help="write the canon's ground-truth meshes as PLY files")
    meshes.add_argument("out", type=Path, help="folder")
    meshes.add_argument("--resolution", type=int, default=128, help="marching-cubes grid")
    meshes.set_defaults(run=_meshes_command)
    arguments = parser.parse_args(argv)
    arguments.run(arguments)


if __name__ == "__main__":
    main()
