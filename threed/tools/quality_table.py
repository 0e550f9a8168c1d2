"""The ShapeWorld quality table of BENCHMARKS.md: one prompt of each shape, each method, the
evaluator's Chamfer distance, IoU and colour error, and the wall time of the run.

    python -m threed.tools.quality_table --config configs/shapeworld.yaml --methods sds,vsd,uni-instruct:fkl --out quality.md

Each run is a cell of the comparison tool (``<outputs>/compare/<config>/<prompt>/<method>/seed<S>``),
so an interrupted table resumes where it stopped and ``launch.py --compare`` reuses its runs.
"""
from __future__ import annotations

import argparse
import logging
import platform
from pathlib import Path

import numpy as np
import torch
import trimesh

from threed.cells import Cell, Method, parse_methods, plan_cells
from threed.config import override
from threed.errors import UserError
from threed.run import Run
from threed.runner import CellRunner
from threed.shapeworld.canon import SHOWCASE_PROMPTS, parse_prompt
from threed.shapeworld.evaluator import evaluate_mesh, register_evaluator

log = logging.getLogger(__name__)
METRICS = ("chamfer", "initial_chamfer", "shape_gain", "iou", "color_error", "wall_time_s")


def score_cell(cell: Cell, prompt: str) -> dict:
    """The evaluator's numbers for the cell's mesh, its initial representation's Chamfer distance (step 0, the
    same export) and the shape gain 1 - Chamfer / initial Chamfer."""
    score = evaluate_mesh(trimesh.load(cell.mesh, force="mesh"), prompt)
    initial_mesh = Run(cell.config, cell.paths).initial_representation().extract_mesh(cell.config.export)
    initial_chamfer = evaluate_mesh(initial_mesh, prompt)["chamfer"]
    return {"prompt": prompt, "method": cell.method.label, "chamfer": score["chamfer"],
            "initial_chamfer": initial_chamfer, "shape_gain": 1.0 - score["chamfer"] / initial_chamfer,
            "iou": score["iou"], "color_error": score["color_error"],
            "wall_time_s": cell.wall_time_s, "threads": cell.threads}


def quality_rows(config: str, overrides: list[str], methods: list[Method], prompts: list[str], seed: int) -> list[dict]:
    """Trains what is missing and scores every prompt x method run: one dict of METRICS per run."""
    rows = []
    for prompt in prompts:
        _, _, cells = plan_cells(config, [*overrides, override("prompt", prompt)], methods, [seed])
        CellRunner().run(cells)
        rows += [score_cell(cell, prompt) for cell in cells]
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """Per-run rows, then each method's medians over the prompts."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    lines = [header, "", "| prompt | method | Chamfer | initial Chamfer | shape gain | IoU | colour error | "
                         "wall time (s) | threads |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['prompt']} | {r['method']} | {r['chamfer']:.4f} | {r['initial_chamfer']:.4f} | {r['shape_gain']:.2f} | "
              f"{r['iou']:.3f} | {r['color_error']:.4f} | {r['wall_time_s']:.0f} | {r['threads'] or 'not recorded'} |"
              for r in rows]
    for method in methods:
        medians = {key: float(np.median([r[key] for r in rows if r["method"] == method])) for key in METRICS}
        lines.append(f"| **median** | **{method}** | {medians['chamfer']:.4f} | {medians['initial_chamfer']:.4f} | "
                     f"{medians['shape_gain']:.2f} | {medians['iou']:.3f} | {medians['color_error']:.4f} | "
                     f"{medians['wall_time_s']:.0f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m threed.tools.quality_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapeworld.yaml")
    parser.add_argument("--methods", default="sds,vsd,uni-instruct:fkl")
    parser.add_argument("--prompts", default=";".join(SHOWCASE_PROMPTS), help="ShapeWorld prompts separated by ';'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("quality.md"), help="the Markdown table to write")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_evaluator()  # the runs' own shapeworld_score.json
    prompts = [p.strip() for p in arguments.prompts.split(";") if p.strip()]
    try:
        for prompt in prompts:
            parse_prompt(prompt)  # the evaluator needs canon prompts: check them all before hours of training
        methods = parse_methods(arguments.methods)
    except (UserError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        rows = quality_rows(arguments.config, arguments.overrides, methods, prompts, arguments.seed)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    header = (f"Config `{arguments.config}` {' '.join(arguments.overrides)}, seed {arguments.seed}; "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}; each run's CPU threads "
              f"in its row")
    arguments.out.write_text(markdown(rows, header))
    print(arguments.out.read_text())


if __name__ == "__main__":
    main()
