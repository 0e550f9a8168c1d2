"""Data-parallel training under torchrun, on the CPU with gloo: two ranks with one view each take the update of
one process averaging those two views' gradients, keep the same parameters, and a killed two-rank run resumes."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from guidance.teacher import DiffusionTeacher
from threed.config import load_config
from threed.distributed import Ranks
from threed.run_folder import RunPaths
from threed.trainer import Trainer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ONE_VIEW = ["camera.batch_size=1"]


@dataclass(frozen=True)
class RecordingRanks(Ranks):
    """Rank ``rank`` of two with no process group: keeps its own gradients, recording them at each averaging."""

    recorded: list = field(default_factory=list)

    def average_gradients(self, parameters):
        self.recorded.append([None if p.grad is None else p.grad.clone() for p in parameters])


@dataclass(frozen=True)
class ReplayRanks(Ranks):
    """Sets each averaging's gradients to given ones, in order."""

    gradients: list = field(default_factory=list)

    def average_gradients(self, parameters):
        for parameter, grad in zip(parameters, self.gradients.pop(0), strict=True):
            parameter.grad = grad


def trained_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**{f"representation.{k}": v.clone() for k, v in trainer.representation.state_dict().items()},
            **{f"guidance.{i}": p.detach().clone() for i, p in enumerate(trainer.guidance.trainable_parameters())}}


def one_rank_step(rank: int, config_overrides: list[str], folder: str) -> None:
    """A spawned process: rank ``rank`` of a two-process gloo group takes one training step and saves its state."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2)
    try:
        config = load_config("configs/tiny.yaml", config_overrides)
        teacher = DiffusionTeacher.from_pretrained(config.teacher, torch.device("cpu"))
        trainer = Trainer(config, RunPaths(Path(folder) / "run"), teacher)
        assert trainer.ranks == Ranks(rank, 2)
        trainer.training_step()
        torch.save(trained_state(trainer), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def average(first: list, second: list) -> list:
    """Per parameter, the mean of two ranks' gradients (a rank without one counts as zero)."""
    return [None if a is None and b is None else ((a if a is not None else 0) + (b if b is not None else 0)) / 2
            for a, b in zip(first, second, strict=True)]


def test_two_ranks_with_one_view_each_take_the_update_of_both_views_averaged(fast_overrides, tmp_path, monkeypatch):
    """Adam's first step is about lr * sign(gradient), so entries whose gradient is near zero show rounding: the
    ranks and the reference all run one thread, whose kernels round alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compare_ranks_with_the_averaged_reference([*fast_overrides, *ONE_VIEW], tmp_path)
    finally:
        torch.set_num_threads(threads)


def compare_ranks_with_the_averaged_reference(overrides: list[str], tmp_path: Path) -> None:
    mp.spawn(one_rank_step, args=(overrides, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]

    config = load_config("configs/tiny.yaml", overrides)
    teacher = DiffusionTeacher.from_pretrained(config.teacher, torch.device("cpu"))
    paths = RunPaths(tmp_path / "reference")
    views = [RecordingRanks(rank, 2) for rank in (0, 1)]  # each rank's view and draws, one process
    for recorder in views:
        Trainer(config, paths, teacher, recorder).training_step()
    assert len(views[0].recorded) == 2  # the 3D parameters' step, then the fake score's and discriminator's
    replay = ReplayRanks(0, 2, [average(a, b) for a, b in zip(views[0].recorded, views[1].recorded, strict=True)])
    reference = Trainer(config, paths, teacher, replay)
    start = trained_state(reference)
    reference.training_step()
    expected = trained_state(reference)

    assert ranks[0].keys() == expected.keys() and any(name.startswith("guidance.") for name in expected)
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: the ranks' parameters differ"
    assert not torch.equal(start["representation.field.encoding.table"], expected["representation.field.encoding.table"])
    differs = [not torch.allclose(a, b) for a, b in zip(views[0].recorded[0], views[1].recorded[0]) if a is not None]
    assert any(differs), "the two ranks' views gave the same gradients: the test could not tell them apart"


def torchrun(*arguments: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(PROJECT_ROOT / "launch.py"), *arguments]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def final_checkpoint(run: Path) -> dict:
    return torch.load(sorted((run / "checkpoints").glob("step*.pt"))[-1], weights_only=True)


def test_a_killed_two_rank_run_resumes_to_the_same_parameters(fast_overrides, tmp_path):
    torchrun("--config", "configs/tiny.yaml", "--train", *fast_overrides, *ONE_VIEW)
    [run] = (tmp_path / "outputs" / "tiny").iterdir()  # rank 0 made the one run folder
    assert (run / "mesh" / "model.glb").is_file() and (run / "turntable.mp4").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [2, 4, 6]  # written once, by rank 0
    assert len(final_checkpoint(run)["view_generators"]) == 2

    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    # Both processes died after the step-3 checkpoint: nothing from later steps survives.
    (stopped / "checkpoints" / "step0000006.pt").unlink()
    shutil.rmtree(stopped / "mesh")
    torchrun("--resume", str(stopped))
    resumed, uninterrupted = final_checkpoint(stopped), final_checkpoint(run)
    assert resumed["step"] == 6
    for name, value in uninterrupted["representation"].items():
        assert torch.equal(resumed["representation"][name], value), name
    for resumed_part, part in zip(resumed["guidance"].values(), uninterrupted["guidance"].values(), strict=True):
        if isinstance(part, torch.Tensor):
            assert torch.equal(resumed_part, part)
