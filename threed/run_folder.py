"""Run folders: ``<outputs>/<config name>/<prompt slug>@<timestamp>/`` and what lives in them."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from threed.errors import OutputDirError, RunDirError


def prompt_slug(prompt: str, max_length: int = 64) -> str:
    """'A red vase!' -> 'a_red_vase'. Only [a-z0-9_], so no prompt can reach outside its folder."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "prompt"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def video(self) -> Path:
        return self.root / "turntable.mp4"

    def mesh(self, file_format: str) -> Path:
        return self.root / "mesh" / f"model.{file_format}"

    def mesh_files(self) -> list[Path]:
        """Every file of the exported meshes (an OBJ's MTL and texture image too), not the evaluators' scores."""
        folder = self.root / "mesh"
        files = folder.iterdir() if folder.is_dir() else []
        return sorted(p for p in files if p.is_file() and not p.name.startswith(".") and not p.name.endswith("_score.json"))

    def score(self, evaluator_name: str) -> Path:
        """The evaluator's numbers for the run's mesh (``threed.evaluation``), e.g. mesh/shapeworld_score.json."""
        return self.root / "mesh" / f"{evaluator_name}_score.json"


def create_run_folder(outputs: str | Path, config_name: str, prompt: str) -> RunPaths:
    """Makes a new, empty run folder, or says why the outputs folder cannot hold one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(outputs) / config_name / f"{prompt_slug(prompt)}@{stamp}"
    suffix = 1
    while root.exists():
        root = root.with_name(f"{prompt_slug(prompt)}@{stamp}-{suffix}")
        suffix += 1
    try:
        root.mkdir(parents=True)
        probe = root / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(
            f"cannot write run folder {str(root)!r}: {error.strerror or error}. Choose a writable folder with --outputs DIR"
        ) from None
    return RunPaths(root)


def existing_run_folder(run_dir: str | Path) -> RunPaths:
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run folder (no config.yaml in it); pass a folder printed by --train")
    return paths
