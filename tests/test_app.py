"""The demo's API, driven with gradio_client against a server on localhost."""
import gradio_client
import pytest

from tests.conftest import start_demo


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_teacher):
    demo = start_demo(tiny_teacher, tmp_path_factory.mktemp("app"), "trainer.log_every=1")
    yield gradio_client.Client(demo.local_url, verbose=False)
    demo.close()


def test_a_short_run_returns_a_video_and_meshes(client, tiny_teacher):
    status, preview, video, model, files = client.predict(
        "a red vase", "sds", "fkl", 3, 0, 16, tiny_teacher, api_name="/generate")
    assert status.startswith("Done")
    assert video and model.endswith(".glb")
    assert sorted(str(f).rsplit(".", 1)[-1] for f in files) == ["glb", "obj", "ply"]


@pytest.mark.parametrize("prompt, steps, message", [
    ("", 3, "Type a prompt"), ("x" * 300, 3, "keep it under"), ("a red vase", 0, "Steps must be between"),
])
def test_bad_input_is_refused_in_the_page(client, tiny_teacher, prompt, steps, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, "sds", "fkl", steps, 0, 16, tiny_teacher, api_name="/generate")


def test_stop_ends_the_run_and_keeps_what_was_made(client, tiny_teacher):
    import time

    job = client.submit("a blue cube", "sds", "fkl", 5000, 0, 16, tiny_teacher, api_name="/generate")
    while not job.status().code.name == "ITERATING":  # training has logged its first steps
        time.sleep(0.2)
    client.predict(api_name="/stop")
    status, _, video, model, files = job.result(timeout=120)
    assert status.startswith("Done") and video and model.endswith(".glb")
