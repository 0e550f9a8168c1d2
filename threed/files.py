"""Files written whole or not at all: the one way the project writes checkpoints, meshes, videos,
caches and records, so that a crash or a kill never leaves a half-written file under its real name."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (the same suffix, so writers that go by it still work, and a
    name of its own, so concurrent writers never share it); when the block ends without an error the file
    written there is flushed to disk and renamed over ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_torch(state, path: str | Path) -> None:
    """``torch.save`` of ``state`` to ``path``, atomically."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | Path, record: dict) -> None:
    write_text(path, json.dumps(record) + "\n")
