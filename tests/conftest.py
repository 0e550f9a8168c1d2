import os
import socket
from pathlib import Path

# Tests never reach the network: set before huggingface_hub or gradio is imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import torch  # noqa: E402

from guidance.tiny_teacher import build_tiny_pipeline  # noqa: E402

SHAPEWORLD_TEACHER = str(Path(__file__).resolve().parent.parent / "assets" / "shapeworld-teacher")


@pytest.fixture(autouse=True)
def deterministic_algorithms_restored():
    """Training turns torch's process-wide deterministic mode on (trainer.deterministic); no test leaks it."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A tiny Stable-Diffusion-shaped pipeline saved with save_pretrained; loaded back by the real code."""
    folder = tmp_path_factory.mktemp("tiny-teacher")
    build_tiny_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_v_teacher(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-v-teacher")
    build_tiny_pipeline(prediction_type="v_prediction").save_pretrained(folder)
    return str(folder)


@pytest.fixture
def fast_overrides(tiny_teacher, tmp_path) -> list[str]:
    return overrides_for_fast_runs(tiny_teacher, tmp_path)


def overrides_for_fast_runs(teacher: str, folder) -> list[str]:
    """Overrides of configs/tiny.yaml or configs/shapeworld.yaml that make a run take seconds, writing under ``folder``."""
    return [
        f"teacher.pretrained={teacher}", f"outputs={folder / 'outputs'}",
        "geometry.grid.n_levels=4", "geometry.grid.log2_hashmap_size=12", "geometry.grid.finest_resolution=64",
        "geometry.hidden_dim=16", "render.samples_per_ray=16", "camera.height=16", "camera.width=16",
        "trainer.max_steps=6", "trainer.log_every=2", "trainer.val_every=3", "trainer.checkpoint_every=3",
        "trainer.val_views=2", "trainer.val_resolution=16", "video.frames=4", "video.resolution=32", "export.resolution=32",
        f"guidance.sample_bank.cache_dir={folder / 'sample-bank'}", "guidance.sample_bank.samples_per_view=2",
        "guidance.sample_bank.steps=2", "guidance.discriminator.hidden_channels=8",
        "mesh.grid.resolution=32", "export.texture_size=128",
    ]


def start_demo(folder, *extra_overrides: str, queue_size: int = 4, teacher_dirs: list = ()):
    """The Gradio demo of the embedded default (configs/shapeworld.yaml, the shipped teacher) on a free
    localhost port, with fast-run overrides, served as ``app.main`` serves it; call ``.close()`` after."""
    import app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    overrides = [*overrides_for_fast_runs(SHAPEWORLD_TEACHER, folder), *extra_overrides]
    runner = app.DemoRunner("configs/shapeworld.yaml", overrides, max_waiting=queue_size, teacher_dirs=teacher_dirs)
    demo = app.build_demo(runner)
    demo.queue(default_concurrency_limit=None)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=app.served_folders(runner))
    return demo
