"""Running cells: one after another in this process, or as Ray tasks, each with its CPU (or GPU) request,
on a local Ray started for the purpose or on a cluster given by address. Finished cells are skipped,
interrupted ones resume from their checkpoints (``threed.cells``), and a task whose worker died or
raised is retried. On a cluster every node needs this project importable and the same outputs folder
(a shared file system).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from threed import evaluation
from threed.cells import Cell, run_cell
from threed.config import PROJECT_ROOT
from threed.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellRunner:
    workers: int = 1  # runs at a time; above 1 (or with an address) they are Ray tasks
    address: str | None = None  # a Ray cluster's ("auto", "ray://host:10001"); None: a local Ray when needed
    cpus_per_run: int = 1  # each Ray task's CPU request, and its torch threads
    gpus_per_run: float = 0.0  # each Ray task's GPU request (a fraction shares a GPU)
    retries: int = 2

    @property
    def uses_ray(self) -> bool:
        return self.workers > 1 or self.address is not None

    def run(self, cells: list[Cell]) -> None:
        """Trains every unfinished cell; a UserError lists the cells that still failed after their retries."""
        missing = []
        for cell in cells:
            if cell.finished():
                log.info("%s: finished, skipped", describe(cell))
            else:
                missing.append(cell)
        if not missing:
            return
        if self.uses_ray:
            self._run_on_ray(missing)
        else:
            self._run_here(missing)

    def _run_here(self, cells: list[Cell]) -> None:
        """One after another in this process; a run that fails (bad input, NaN) is reported at the end and does
        not stop the others. No retries: here a failure would repeat."""
        failed = []
        for cell in cells:
            log.info("%s: training", describe(cell))
            try:
                run_cell(cell)
            except UserError as error:
                failed.append(f"{describe(cell)}: {str(error)[:200]}")
                log.error("%s: failed: %s", describe(cell), error)
        raise_if_failed(failed, len(cells))

    def _run_on_ray(self, cells: list[Cell]) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if self.address else self.workers * self.cpus_per_run,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [
                         str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}})
        task = ray.remote(train_cell).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                              max_retries=self.retries, retry_exceptions=True)
        finders = evaluation.registered()
        pending = {task.remote(cell, finders, self.cpus_per_run): cell for cell in cells}
        log.info("%d runs submitted to Ray (%s)", len(cells), self.address or f"local, {self.workers} workers")
        failed = []
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done)
            try:
                ray.get(done)
                log.info("%s: finished", describe(cell))
            except Exception as error:  # Ray wraps the task's exception; its first line says what it was
                failed.append(f"{describe(cell)}: {str(error).strip().splitlines()[-1][:200]}")
                log.error("%s: failed after %d retries", describe(cell), self.retries)
        if started_here:
            ray.shutdown()
        raise_if_failed(failed, len(cells))


def raise_if_failed(failed: list[str], total: int) -> None:
    if failed:
        raise UserError(f"{len(failed)} of {total} runs failed: " + "; ".join(failed))


def describe(cell: Cell) -> str:
    return f"{cell.config.prompt!r} {cell.method.label} seed {cell.seed}"


def train_cell(cell: Cell, finders: dict[str, evaluation.Finder], threads: int) -> None:
    """A Ray task: trains one cell with ``threads`` torch threads, its worker knowing the driver's evaluators."""
    torch.set_num_threads(threads)
    for world, finder in finders.items():
        evaluation.register(world, finder)
    run_cell(cell)
