"""The ShapeWorld quality table of BENCHMARKS.md: one prompt of each shape, each method, each seed: the
evaluator's Chamfer distance, IoU and colour error, the shape gain (1 - Chamfer / the Chamfer of the run's
own initial field), the wall time of the run; then each method's medians over the seeds for every shape,
its diversity (the mean pairwise Chamfer distance between the seeds' meshes of each prompt), and, for several
methods, their means with standard errors and their paired differences from the first.

    python -m threed.tools.quality_table --methods sds,vsd,uni-instruct:fkl --seeds 0,1,2 --workers 2 --out quality.md
    python -m threed.tools.quality_table --methods uni-instruct:fkl --seeds 0,1 --then configs/shapeworld-geometry.yaml \
        --then configs/shapeworld-texture.yaml --out stages.md   # stage 1 beside the mesh stages

Each run is a cell of the comparison tool (``<outputs>/compare/<config>/<prompt>/<method>/seed<S>``),
so an interrupted table resumes where it stopped and ``launch.py --compare`` reuses its runs. With
``--workers`` above 1 the runs are Ray tasks of one CPU thread each (``threed.runner``).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path

import numpy as np
import torch

from threed.cells import Cell, Method, parse_methods, parse_seeds, plan_cells
from threed.compare import diversity
from threed.config import override
from threed.errors import UserError
from threed.export import load_mesh
from threed.paired_statistics import mean_with_error, paired_comparison, paired_difference
from threed.run import Run
from threed.runner import CellRunner
from threed.shapeworld.canon import SHOWCASE_PROMPTS, parse_prompt
from threed.shapeworld.evaluator import evaluate_mesh, register_evaluator

log = logging.getLogger(__name__)
METRICS = ("chamfer", "initial_chamfer", "shape_gain", "iou", "color_error", "wall_time_s")


def evaluated(run: Cell, prompt: str) -> tuple[dict, float]:
    """The evaluator's numbers for a run's mesh and its initial field's Chamfer distance (step 0, the same
    export): those the run wrote, or computed here for runs trained without the evaluator registered."""
    saved = run.paths.score("shapeworld")
    if saved.is_file():
        score = json.loads(saved.read_text())
        return score, score["initial"]["chamfer"]
    score = evaluate_mesh(load_mesh(run.paths.mesh(run.config.export.formats[0])), prompt)
    initial_mesh = Run(run.config, run.paths).initial_representation().extract_mesh(run.config.export)
    return score, evaluate_mesh(initial_mesh, prompt)["chamfer"]


def score_cell(cell: Cell, prompt: str) -> dict:
    """The evaluator's numbers for the cell's final mesh (its last stage's), the Chamfer distance of its first
    run's initial field and the shape gain 1 - Chamfer / initial Chamfer; with stages, the first run's
    (stage 1's) Chamfer and colour error too."""
    first, initial_chamfer = evaluated(cell, prompt)
    final = evaluated(cell.final, prompt)[0] if cell.stages else first
    row = {"prompt": prompt, "shape": parse_prompt(prompt)[0], "method": cell.method.label, "seed": cell.seed,
           "chamfer": final["chamfer"], "initial_chamfer": initial_chamfer,
           "shape_gain": 1.0 - final["chamfer"] / initial_chamfer, "iou": final["iou"],
           "color_error": final["color_error"], "wall_time_s": cell.wall_time_s, "threads": cell.threads}
    if cell.stages:
        row |= {"stage1_chamfer": first["chamfer"], "stage1_color_error": first["color_error"]}
    return row


def quality_rows(config: str, overrides: list[str], methods: list[Method], prompts: list[str], seeds: list[int],
                 runner: CellRunner, stages: list[str] = ()) -> tuple[list[dict], list[dict]]:
    """Trains what is missing (all prompts' runs, each followed by the mesh ``stages``, through one runner);
    returns one dict of METRICS per prompt x method x seed cell, and one diversity per prompt x method."""
    cells_of = {prompt: plan_cells(config, [*overrides, override("prompt", prompt)], methods, seeds, stages)[2]
                for prompt in prompts}
    runner.run([cell for cells in cells_of.values() for cell in cells])
    rows = [score_cell(cell, prompt) for prompt, cells in cells_of.items() for cell in cells]
    diversities = [{"prompt": prompt, "method": method.label,
                    "diversity": diversity([load_mesh(c.mesh) for c in cells if c.method == method])}
                   for prompt, cells in cells_of.items() for method in methods]
    return rows, diversities


def median_of(rows: list[dict], key: str, **match) -> float:
    return float(np.median([r[key] for r in rows if all(r[k] == v for k, v in match.items())]))


def markdown(rows: list[dict], header: str, diversities: list[dict] = ()) -> str:
    """Per-run rows and each method's medians over all its runs; then, per method and shape, the medians
    over the seeds of the shape gain and the Chamfer distance; the ``diversities`` (see ``quality_rows``) of
    several seeds; for several methods, their paired comparison."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    shapes = list(dict.fromkeys(row["shape"] for row in rows))
    lines = [header, "", "| prompt | method | seed | Chamfer | initial Chamfer | shape gain | IoU | colour error | "
                         "wall time (s) | threads |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['prompt']} | {r['method']} | {r['seed']} | {r['chamfer']:.4f} | {r['initial_chamfer']:.4f} | "
              f"{r['shape_gain']:.2f} | {r['iou']:.3f} | {r['color_error']:.4f} | {r['wall_time_s']:.0f} | "
              f"{r['threads'] or 'not recorded'} |" for r in rows]
    for method in methods:
        medians = {key: median_of(rows, key, method=method) for key in METRICS}
        lines.append(f"| **median** | **{method}** | all | {medians['chamfer']:.4f} | {medians['initial_chamfer']:.4f} | "
                     f"{medians['shape_gain']:.2f} | {medians['iou']:.3f} | {medians['color_error']:.4f} | "
                     f"{medians['wall_time_s']:.0f} | |")
    lines += ["", "Medians over the seeds, shape gain / Chamfer:", "",
              "| method | " + " | ".join(shapes) + " | median Chamfer of the shapes |",
              "|---|" + "---|" * (len(shapes) + 1)]
    for method in methods:
        per_shape = [(median_of(rows, "shape_gain", method=method, shape=s), median_of(rows, "chamfer", method=method, shape=s))
                     for s in shapes]
        lines.append(f"| {method} | " + " | ".join(f"{gain:.2f} / {chamfer:.4f}" for gain, chamfer in per_shape) +
                     f" | {np.median([chamfer for _, chamfer in per_shape]):.4f} |")
    if any(d["diversity"] is not None for d in diversities):
        lines += diversity_comparison(diversities, methods)
    if len(methods) > 1:
        lines += paired_comparison(rows, methods)
    if "stage1_chamfer" in rows[0]:
        lines += stage_comparison(rows, methods, shapes)
    return "\n".join(lines) + "\n"


def diversity_comparison(diversities: list[dict], methods: list[str]) -> list[str]:
    """Markdown lines: each method's diversity on every prompt, its mean over the prompts (± standard error),
    and its difference from the first method's on the same prompts (± standard error, median; prompts where it
    is the more diverse)."""
    prompts = list(dict.fromkeys(d["prompt"] for d in diversities))
    of = {(d["method"], d["prompt"]): d["diversity"] for d in diversities}
    reference = methods[0]
    lines = ["", "Diversity, the mean pairwise Chamfer distance between the seeds' meshes of a prompt (higher: the "
                 f"seeds differ more); mean over the prompts, and the difference from {reference} on the same prompts:",
             "", "| method | " + " | ".join(prompts) + f" | mean | − {reference} |", "|---|" + "---|" * (len(prompts) + 2)]
    for method in methods:
        mine = [of[(method, prompt)] for prompt in prompts]
        difference = ""
        if method != reference:
            difference = paired_difference([a - of[(reference, prompt)] for a, prompt in zip(mine, prompts)], better=1)
        lines.append(f"| {method} | " + " | ".join(f"{d:.4f}" for d in mine) + f" | {mean_with_error(mine)} | {difference} |")
    return lines


def stage_comparison(rows: list[dict], methods: list[str], shapes: list[str]) -> list[str]:
    """Markdown lines: per method and shape, the medians over the seeds of the Chamfer distance and colour
    error after stage 1 and after the mesh stages."""
    lines = ["", "After stage 1 and after the mesh stages, medians over the seeds, Chamfer / colour error:", "",
             "| method | after | " + " | ".join(shapes) + " | median Chamfer of the shapes | median colour error |",
             "|---|---|" + "---|" * (len(shapes) + 2)]
    for method in methods:
        for label, chamfer, colour in (("stage 1", "stage1_chamfer", "stage1_color_error"),
                                       ("mesh stages", "chamfer", "color_error")):
            per_shape = [(median_of(rows, chamfer, method=method, shape=s), median_of(rows, colour, method=method, shape=s))
                         for s in shapes]
            lines.append(f"| {method} | {label} | " + " | ".join(f"{c:.4f} / {e:.3f}" for c, e in per_shape) +
                         f" | {np.median([c for c, _ in per_shape]):.4f} | {np.median([e for _, e in per_shape]):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m threed.tools.quality_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapeworld.yaml")
    parser.add_argument("--methods", default="sds,vsd,uni-instruct:fkl")
    parser.add_argument("--prompts", default=";".join(SHOWCASE_PROMPTS), help="ShapeWorld prompts separated by ';'")
    parser.add_argument("--seeds", default="0", help="seeds separated by commas, like 0,1,2")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time; above 1 they are Ray tasks of one thread")
    parser.add_argument("--then", action="append", default=[], metavar="CONFIG",
                        help="a mesh stage after each run (repeatable, in order): the table scores the last stage's "
                             "mesh and sets it beside stage 1's")
    parser.add_argument("--out", type=Path, default=Path("quality.md"), help="the Markdown table to write")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_evaluator()  # the runs' own shapeworld_score.json
    prompts = [p.strip() for p in arguments.prompts.split(";") if p.strip()]
    try:
        for prompt in prompts:
            parse_prompt(prompt)  # the evaluator needs canon prompts: check them all before hours of training
        methods = parse_methods(arguments.methods)
        seeds = parse_seeds(arguments.seeds)
    except (UserError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        rows, diversities = quality_rows(arguments.config, arguments.overrides, methods, prompts, seeds,
                                         CellRunner(workers=arguments.workers), arguments.then)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    stages = "".join(f" then `{stage}`" for stage in arguments.then)
    header = (f"Config `{arguments.config}`{stages} {' '.join(arguments.overrides)}, seeds {','.join(map(str, seeds))}; "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}; each run's CPU threads in its row")
    arguments.out.write_text(markdown(rows, header, diversities))
    print(arguments.out.read_text())


if __name__ == "__main__":
    main()
