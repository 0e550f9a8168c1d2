"""Many runs at once: ``launch.py --batch FILE`` trains every run FILE lists, through a ``CellRunner``
(in this process, or as Ray tasks on a local Ray or a cluster), and writes a summary table.

FILE has one prompt a line; after " | ", optionally the seeds and the methods to run it with (by default
the config's own seed and method); blank lines and lines starting with # are skipped::

    a red vase
    a green cube | seeds=0,1,2 | methods=sds,uni-instruct:fkl

Every run is a cell (``threed.cells``): a finished one is skipped, an interrupted one resumes, and a
comparison of the same prompt and config reuses them. The summary, ``<outputs>/batch/<file name>/summary.md``
and ``summary.csv``, has a row per run: its status, wall time, threads, the evaluator's numbers where
an evaluator knows the prompt, and its folder.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from threed.cells import Cell, Method, parse_methods, parse_seeds, plan_cells
from threed.config import load_config, override
from threed.errors import ConfigError
from threed.files import write_text
from threed.run_folder import prompt_slug
from threed.runner import CellRunner

SCORES = ("chamfer", "iou", "color_error")


@dataclass(frozen=True)
class BatchLine:
    prompt: str
    seeds: list[int] | None = None  # None: the config's seed
    methods: list[Method] | None = None  # None: the config's method


def parse_batch_file(path: str | Path) -> list[BatchLine]:
    """The runs a batch file lists; a ConfigError names the line that cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"batch file {str(path)!r} does not exist; give a text file with one prompt a line")
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        prompt, *options = (part.strip() for part in text.split(" | "))
        settings = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("seeds", "methods") or not value or key in settings:
                raise ConfigError(f"{path}:{number}: {option!r} is not seeds=0,1 or methods=sds,uni-instruct:fkl (once each)")
            settings[key] = value
        if not prompt:
            raise ConfigError(f"{path}:{number}: the line has no prompt")
        try:
            lines.append(BatchLine(prompt, parse_seeds(settings["seeds"]) if "seeds" in settings else None,
                                   parse_methods(settings["methods"]) if "methods" in settings else None))
        except ConfigError as error:
            raise ConfigError(f"{path}:{number}: {error}") from None
    if not lines:
        raise ConfigError(f"batch file {str(path)!r} lists no prompt")
    return lines


def plan_batch(config_path: str, overrides: list[str], lines: list[BatchLine]) -> list[Cell]:
    """Every run of every line as a cell, checked (config, stale folders) before any of them trains."""
    cells = []
    for line in lines:
        line_overrides = [*overrides, override("prompt", line.prompt)]
        base = load_config(config_path, line_overrides)
        methods, seeds = line.methods or [Method.of(base)], line.seeds or [base.seed]
        cells += plan_cells(config_path, line_overrides, methods, seeds)[2]
    return cells


def batch(config_path: str, overrides: list[str], batch_file: str | Path, runner: CellRunner) -> Path:
    """Trains the batch's missing runs, then writes its summary (also when some failed); returns its folder."""
    cells = plan_batch(config_path, overrides, parse_batch_file(batch_file))
    root = Path(cells[0].config.outputs) / "batch" / prompt_slug(Path(batch_file).stem)
    try:
        runner.run(cells)
    finally:
        write_summary(cells, root)
    return root


def summary_row(cell: Cell) -> dict:
    row = {"prompt": cell.config.prompt, "method": cell.method.label, "seed": cell.seed,
           "status": "finished" if cell.finished() else "not finished"}
    row["wall_time_s"] = round(cell.wall_time_s, 1) if cell.finished() else None
    row["threads"] = cell.threads if cell.finished() else None
    scores = sorted((cell.final.paths.root / "mesh").glob("*_score.json"))
    score = json.loads(scores[0].read_text()) if scores else {}
    row.update({key: score.get(key) for key in SCORES})
    row["run_folder"] = str(cell.final.paths.root)
    return row


def write_summary(cells: list[Cell], root: Path) -> None:
    rows = [summary_row(cell) for cell in cells]
    table = io.StringIO()
    writer = csv.DictWriter(table, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(root / "summary.csv", table.getvalue())

    def text(value) -> str:
        return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(text(value) for value in row.values()) + " |" for row in rows]
    write_text(root / "summary.md", "\n".join(lines) + "\n")
