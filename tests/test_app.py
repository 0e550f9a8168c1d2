"""The demo's API, driven with gradio_client against a server on localhost running the embedded
default (the shipped ShapeWorld teacher) with fast-run overrides."""
import time
import urllib.error
import urllib.request
from pathlib import Path

import gradio_client
import pytest
import trimesh

from tests.conftest import start_demo

EMBEDDED = "shapeworld-teacher"  # the config's teacher, offered by its folder's name


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def demo(demo_folder):
    broken = demo_folder / "teachers" / "broken"  # a pipeline folder with nothing in it but its index
    broken.mkdir(parents=True)
    (broken / "model_index.json").write_text('{"_class_name": "PixelDiffusionPipeline"}')
    demo = start_demo(demo_folder, "trainer.log_every=1", teacher_dirs=[demo_folder / "teachers"])
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(demo):
    return gradio_client.Client(demo.local_url, verbose=False)


def wait_for(job, *states: str) -> None:
    while job.status().code.name not in states:
        time.sleep(0.2)


def test_a_short_run_on_the_embedded_teacher_returns_a_video_and_meshes(client):
    status, preview, video, model, files = client.predict(
        "a red vase", "uni-instruct", "fkl", 3, 0, 16, EMBEDDED, False, api_name="/generate")
    assert status.startswith("Done")
    assert video and model.endswith(".glb")
    assert sorted(str(f).rsplit(".", 1)[-1] for f in files) == ["glb", "mtl", "obj", "ply", "png"]  # the OBJ's MTL, texture


def test_refining_into_a_mesh_runs_the_stages_and_returns_the_textured_mesh(client, demo_folder):
    status, _, video, model, _ = client.predict(
        "a green cube", "uni-instruct", "fkl", 3, 1, 16, EMBEDDED, True, api_name="/generate")
    assert status.startswith("Done")
    texture_runs = list((demo_folder / "outputs" / "app").glob("a_green_cube@*/"))
    assert len(texture_runs) == 3  # the NeRF, the geometry stage and the texture stage, each a run folder
    last = max(texture_runs, key=lambda run: run.name)
    assert "representation: texture" in (last / "config.yaml").read_text()
    assert Path(model).name == "model.glb" and video
    mesh = trimesh.load(model, force="mesh")
    assert mesh.visual.kind == "texture"


@pytest.mark.parametrize("prompt, steps, message", [
    ("", 3, "Type a prompt"), ("x" * 301, 3, "keep it under"), ("a red vase", 0, "Steps must be between"),
])
def test_bad_input_is_refused_in_the_page(client, prompt, steps, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, "sds", "fkl", steps, 0, 16, EMBEDDED, False, api_name="/generate")


def test_only_the_offered_teachers_can_be_picked(client, tmp_path):
    with pytest.raises(Exception, match="not in the list of choices|Pick a teacher"):
        client.predict("a red vase", "sds", "fkl", 1, 0, 16, str(tmp_path), api_name="/generate")


def test_a_broken_teacher_is_refused_and_frees_the_device(client):
    with pytest.raises(Exception, match="cannot load teacher"):
        client.predict("a red vase", "sds", "fkl", 1, 0, 16, "broken", api_name="/generate")
    next_run = client.submit("a red vase", "sds", "fkl", 1, 0, 16, EMBEDDED, api_name="/generate")
    assert next_run.result(timeout=120)[0].startswith("Done")  # a device left locked would keep it waiting


def test_stop_ends_the_run_and_keeps_what_was_made(client):
    job = client.submit("a blue cube", "sds", "fkl", 5000, 0, 16, EMBEDDED, api_name="/generate")
    while not job.status().code.name == "ITERATING":  # training has logged its first steps
        time.sleep(0.2)
    client.predict(api_name="/stop")
    status, _, video, model, files = job.result(timeout=120)
    assert status.startswith("Done") and video and model.endswith(".glb")



def test_a_visitor_stops_only_their_own_run(demo):
    owner, other = (gradio_client.Client(demo.local_url, verbose=False) for _ in range(2))
    job = owner.submit("a blue cube", "sds", "fkl", 5000, 0, 16, EMBEDDED, api_name="/generate")
    wait_for(job, "ITERATING")
    assert other.predict(api_name="/stop") == "Nothing of yours is running."
    logged = len(job.outputs())
    while len(job.outputs()) < logged + 2:  # it trains on
        assert not job.done()
        time.sleep(0.2)
    assert owner.predict(api_name="/stop").startswith("Stopping")
    assert job.result(timeout=120)[0].startswith("Done")


def test_the_server_sends_only_the_files_its_runs_produced(demo, client, demo_folder):
    _, _, video, model, files = client.predict("a red vase", "sds", "fkl", 2, 0, 16, EMBEDDED, api_name="/generate")
    run_configs = list((demo_folder / "outputs" / "app").glob("*/config.yaml"))
    assert run_configs
    for private in (Path(".git/config").resolve(), Path("configs/shapeworld.yaml").resolve(), run_configs[0]):
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(f"{demo.local_url}gradio_api/file={private}")
    assert urllib.request.urlopen(f"{demo.local_url}gradio_api/file={model}").status == 200  # what it returned


def test_the_compare_tab_shows_the_grid_and_table_and_reuses_its_cells(client, demo_folder):
    image, video, table = client.predict("a green cube", "uni-instruct:fkl,sds", "0", 2, api_name="/compare")
    assert image.endswith(".png") and video
    assert "| uni-instruct:fkl |" in table and "| sds |" in table
    # Other steps make another comparison (not a refusal of the cells above); the same steps reuse them.
    assert "| sds |" in client.predict("a green cube", "sds", "0", 3, api_name="/compare")[2]
    record = demo_folder / "outputs" / "compare" / "app-2-steps" / "a_green_cube" / "sds" / "seed0" / "cell.json"
    finished_at = record.stat().st_mtime_ns
    assert "| sds |" in client.predict("a green cube", "sds", "0", 2, api_name="/compare")[2]
    assert record.stat().st_mtime_ns == finished_at  # not trained again
    with pytest.raises(Exception, match="Type a prompt"):
        client.predict(" ", "sds", "0", 2, api_name="/compare")


def test_a_full_queue_is_told_to_try_later(tmp_path):
    demo = start_demo(tmp_path, queue_size=1)
    client = gradio_client.Client(demo.local_url, verbose=False)
    try:
        running = client.submit("a blue cube", "sds", "fkl", 5000, 0, 16, EMBEDDED, api_name="/generate")
        wait_for(running, "ITERATING")  # left the queue: the device is busy
        waiting = client.submit("a red vase", "sds", "fkl", 3, 0, 16, EMBEDDED, api_name="/generate")
        wait_for(waiting, "ITERATING")  # the one place in the queue is taken
        assert waiting.outputs()[-1][0].startswith("Waiting for the run ahead")
        with pytest.raises(Exception, match="Busy: one run in progress, 1 waiting. Try again later"):
            client.predict("a red cone", "sds", "fkl", 3, 0, 16, EMBEDDED, api_name="/generate")
        with pytest.raises(Exception, match="Busy"):  # comparisons share the device's queue
            client.predict("a red cone", "sds", "0", 2, api_name="/compare")
        client.predict(api_name="/stop")
        assert running.result(timeout=120)[0].startswith("Done")
        assert waiting.result(timeout=120)[0].startswith("Done")  # the queued run was kept and ran
    finally:
        demo.close()


def test_a_run_waiting_for_the_device_leaves_the_queue_when_its_page_closes():
    import gradio as gr

    import app

    runner = app.DemoRunner("configs/shapeworld.yaml", [], max_waiting=1)
    assert list(runner.wait_turn("waiting")) == []  # the device was free: taken without waiting
    waiting = runner.wait_turn("waiting")
    assert next(waiting) == "waiting"
    with pytest.raises(gr.Error, match="Busy"):
        next(runner.wait_turn("waiting"))  # the one place is taken
    waiting.close()  # the page was closed
    assert runner._waiting == 0
    runner.device_lock.release()
    assert list(runner.wait_turn("waiting")) == []  # the queue is empty and the device free again
