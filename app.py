"""Gradio demo: type a prompt, watch a 3D asset appear, download it; and compare methods side by side.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--config configs/shapeworld.yaml]
                  [--teacher-dir FOLDER ...] [--mesh-stage CONFIG ...] [key.path=value ...]

The pipeline runs in this process (a worker thread per run, progress passed through a queue), on
CUDA when present. One run uses the device at a time; up to ``--queue-size`` more wait for it (their
page says so) and further ones are told the demo is busy. The runner keeps this queue itself rather
than through Gradio's ``max_size``, which would refuse the Stop button too while the queue is full.
Each run writes its own run folder under ``<outputs>/app/`` (the prompt only ever becomes a slug of
[a-z0-9_]). What a visitor types is data: it is never interpolated into the config, the teacher is
picked from the server's list (the config's, and the pipeline folders under ``--teacher-dir``), a
visitor's Stop ends only that visitor's run, and the server sends only the files its runs produced
(SECURITY.md).
"""
from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo sends nothing anywhere unless asked to

import gradio as gr

from guidance.divergences import DIVERGENCES
from guidance.registry import ESTIMATORS
from guidance.teacher import DiffusionTeacher, TeacherNotFoundError
from threed.cameras import turntable_cameras
from threed.cells import Method, parse_methods, parse_seeds
from threed.compare import compare
from threed.config import MAX_PROMPT_CHARS, Config, load_config, override
from threed.errors import UserError
from threed.evaluation import evaluator_for
from threed.run import Run, stage_overrides
from threed.shapeworld.evaluator import register_evaluator
from threed.trainer import Trainer

MAX_STEPS = 20000
FINISHED = object()
WAITING = "Waiting for the run ahead of yours to finish…"


class DemoRunner:
    """Turns the page's inputs into runs of the training pipeline, one at a time on the device, with at
    most ``max_waiting`` runs waiting for it."""

    def __init__(self, config_path: str, overrides: list[str], max_waiting: int = 8, teacher_dirs: list[Path] = (),
                 mesh_stages: list[str] | None = None):
        self.config_path, self.overrides, self.max_waiting = config_path, overrides, max_waiting
        # The stage configs "Refine into a mesh" runs, in order.
        self.mesh_stages = default_mesh_stages(config_path) if mesh_stages is None else list(mesh_stages)
        self.default = load_config(config_path, overrides)
        self.teachers = offered_teachers(self.default.teacher.pretrained, teacher_dirs)
        self._stop_events: dict[str, threading.Event] = {}  # the running run's, by the visitor's session
        self.device_lock = threading.Lock()  # held by the run (or comparison) using the device
        self._waiting = 0
        self._waiting_count_lock = threading.Lock()

    def wait_turn(self, waiting_update: tuple):
        """Takes the device for the caller's run: at once when it is free, else after yielding
        ``waiting_update`` (the page's "waiting" outputs) once and waiting for the runs ahead. A
        gr.Error, shown in the page, when ``max_waiting`` runs already wait. Use with ``yield from``, so
        that a page closed while waiting leaves the queue."""
        with self._waiting_count_lock:
            if self.device_lock.acquire(blocking=False):
                return
            if self._waiting >= self.max_waiting:
                raise gr.Error(f"Busy: one run in progress, {self._waiting} waiting. Try again later.")
            self._waiting += 1
        try:
            yield waiting_update
            self.device_lock.acquire()
        finally:
            with self._waiting_count_lock:
                self._waiting -= 1

    def make_config(self, prompt: str, estimator: str, divergence: str, steps: float, seed: float, resolution: float,
                    teacher: str) -> Config:
        """The run's config; a gr.Error (shown in the page, no run started) for bad input. ``teacher`` is a
        name from ``self.teachers`` (empty: the config's)."""
        check_prompt_and_steps(prompt, steps)
        if estimator not in ESTIMATORS:
            raise gr.Error(f"Pick an estimator from the list ({', '.join(ESTIMATORS)}).")
        if teacher and teacher not in self.teachers:
            raise gr.Error(f"Pick a teacher from the list ({', '.join(self.teachers)}).")
        method = Method(estimator, divergence if ESTIMATORS[estimator].uses_divergence else "")
        pretrained = self.teachers[teacher] if teacher else self.default.teacher.pretrained
        overrides = [override("prompt", prompt), *method.overrides(self.default), f"trainer.max_steps={int(steps)}",
                     f"seed={int(seed)}", f"camera.height={int(resolution)}", f"camera.width={int(resolution)}",
                     override("teacher.pretrained", pretrained), "name=app"]
        try:
            return load_config(self.config_path, [*self.overrides, *overrides])
        except UserError as error:
            raise gr.Error(str(error)) from None

    def stage_config(self, stage: str, source: Run) -> Config:
        """A mesh stage's config, started from the visitor's finished run ``source``: its prompt, seed and teacher."""
        carried = [*stage_overrides(source.paths.root, source.config),
                   override("teacher.pretrained", source.config.teacher.pretrained), "name=app"]
        return load_config(stage, [*self.overrides, *carried])

    def generate(self, prompt, estimator, divergence, steps, seed, resolution, teacher, refine=False,
                 request: gr.Request = None):
        """Yields (status, preview, video, model, files) as training goes; the last has the results: the NeRF
        run's, or with ``refine`` the last mesh stage's (``self.mesh_stages``, each started from the run before)."""
        config = self.make_config(prompt, estimator, divergence, steps, seed, resolution, teacher)
        if refine and not self.mesh_stages:
            raise gr.Error("This demo was started without mesh stages (--mesh-stage): untick “Refine into a mesh”.")
        yield from self.wait_turn((WAITING, None, None, None, None))
        try:
            run, teacher_model = Run.start(config)
        except BaseException as error:  # no run started: the device is free again
            self.device_lock.release()
            if isinstance(error, (TeacherNotFoundError, UserError)):
                raise gr.Error(str(error)) from None
            raise
        session, stop_event = visitor(request), threading.Event()
        self._stop_events[session] = stop_event
        updates: queue.Queue = queue.Queue()
        stages = self.mesh_stages if refine else []
        threading.Thread(target=self._work, args=(run, teacher_model, stages, updates, stop_event), daemon=True).start()
        preview = None
        try:
            while (item := updates.get()) is not FINISHED:
                if isinstance(item, Exception):
                    raise gr.Error(f"The run failed: {item}")
                if isinstance(item, Run):  # the next stage started
                    run = item
                    continue
                record, preview = item
                yield status(record, run.config), preview, None, None, None
        except GeneratorExit:  # the page was closed: end the run rather than train for nobody
            stop_event.set()
            raise
        finally:
            if self._stop_events.get(session) is stop_event:
                del self._stop_events[session]
        paths = run.paths
        files = [str(path) for path in paths.mesh_files()]
        yield f"Done: {paths.root.name}", preview, str(paths.video), str(paths.mesh("glb")), files

    def _work(self, run: Run, teacher: DiffusionTeacher, stages: list[str], updates: queue.Queue,
              stop_event: threading.Event) -> None:
        """Trains and exports the run, then each of ``stages`` from the run before (a stopped run ends the
        chain), in its own thread, passing each new stage's Run to ``updates``; gives the device back when
        done, whatever happened."""
        try:
            cameras = turntable_cameras(run.config.video, 1, 128, run.device)

            def on_log(record: dict, trainer: Trainer) -> None:
                updates.put((record, trainer.output_representation().render_images(cameras)[0]))

            for stage in [None, *stages]:
                if stage is not None:
                    if stop_event.is_set():
                        break
                    run, teacher = Run.start(self.stage_config(stage, run))
                    updates.put(run)
                run.train(teacher, stop_requested=stop_event.is_set, on_log=on_log,
                          formats=sorted(set(run.config.export.formats) | {"glb"}))
            updates.put(FINISHED)
        except Exception as error:  # reported in the page
            run.discard_if_unstarted()
            updates.put(error)
        finally:
            self.device_lock.release()

    def stop(self, request: gr.Request = None) -> str:
        """Ends the calling visitor's own run (never another's) after its current step."""
        stop_event = self._stop_events.get(visitor(request))
        if stop_event is None:
            return "Nothing of yours is running."
        stop_event.set()
        return "Stopping after this step; the video and meshes of what was made so far follow."

    def compare(self, prompt, methods, seeds, steps):
        """Runs the comparison (cells already made are reused); yields (grid image, grid video, table),
        the last with the results."""
        check_prompt_and_steps(prompt, steps)
        yield from self.wait_turn((None, None, WAITING))
        try:
            # One comparison folder per step count: cells made with other steps are another config's.
            overrides = [*self.overrides, override("prompt", prompt), f"trainer.max_steps={int(steps)}",
                         f"name=app-{int(steps)}-steps"]
            root = compare(self.config_path, overrides, parse_methods(methods), parse_seeds(seeds))
        except UserError as error:
            raise gr.Error(str(error)) from None
        finally:
            self.device_lock.release()
        yield str(root / "grid.png"), str(root / "grid.mp4"), (root / "table.md").read_text()


def visitor(request: gr.Request | None) -> str:
    """The visitor's session (one browser page or API client); "" for calls from Python."""
    return request.session_hash if request is not None and request.session_hash else ""


def offered_teachers(default: str, teacher_dirs: list[Path]) -> dict[str, str]:
    """The teachers a visitor may pick, by name: the config's (named by its folder or hub id), and every
    diffusers pipeline folder (one with a model_index.json) that is, or is directly inside, a ``teacher_dirs`` folder."""
    teachers = {Path(default).name or default: default}
    for folder in map(Path, teacher_dirs):
        for candidate in [folder, *(sorted(folder.iterdir()) if folder.is_dir() else [])]:
            if (candidate / "model_index.json").is_file():
                teachers.setdefault(candidate.name, str(candidate.resolve()))
    return teachers


def default_mesh_stages(config_path: str) -> list[str]:
    """The mesh stages of a config by the project's naming: ``NAME-geometry.yaml`` then ``NAME-texture.yaml``
    beside ``NAME.yaml``, those that exist."""
    config = Path(config_path)
    stages = (config.with_name(f"{config.stem}-{stage}.yaml") for stage in ("geometry", "texture"))
    return [str(stage) for stage in stages if stage.is_file()]


def served_folders(runner: DemoRunner) -> list[str]:
    """What Gradio may serve besides the files the demo returns (which it copies into its own cache):
    nothing, unless the runs' folder lies outside the current folder and the temporary folder, from
    where Gradio would not copy them; then that folder of the demo's own runs alone."""
    runs = (Path(runner.default.outputs) / "app").resolve()
    inside = any(runs.is_relative_to(Path(root).resolve()) for root in (Path.cwd(), tempfile.gettempdir()))
    return [] if inside else [str(runs)]


def check_prompt_and_steps(prompt: str, steps: float) -> None:
    """A gr.Error, shown in the page before any run starts, for an empty or over-long prompt or steps out of range."""
    if not prompt or not prompt.strip():
        raise gr.Error("Type a prompt first, e.g. “a red vase”.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt has {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}.")
    if not 1 <= steps <= MAX_STEPS:
        raise gr.Error(f"Steps must be between 1 and {MAX_STEPS}.")


def status(record: dict, config: Config) -> str:
    done, total = record["step"], config.trainer.max_steps
    remaining = (total - done) / max(record["it_per_s"], 1e-9)
    ratio = f" · density ratio off its clamps in {record['ratio']['off_clamps']:.0%} of views" if "ratio" in record else ""
    return (f"Step {done} / {total} · loss {record['loss']:.4g} · {record['it_per_s']:.2f} it/s{ratio} · "
            f"about {remaining:.0f} s left")


def build_demo(runner: DemoRunner) -> gr.Blocks:
    default = runner.default
    with gr.Blocks(title="Uni-Instruct 3D") as demo:
        gr.Markdown("# Uni-Instruct 3D\nType a prompt; a 3D asset is distilled from the teacher.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", value=default.prompt, max_lines=2)
                    evaluator = evaluator_for(default.prompt)  # a toy world's teacher knows its own prompts only
                    if evaluator is not None and evaluator.example_prompts:
                        gr.Examples([[p] for p in evaluator.example_prompts], inputs=prompt, label="Example prompts")
                    with gr.Row():
                        final_step = default.trainer.max_steps  # the method the config ends on, after any warm start
                        estimator = gr.Dropdown(list(ESTIMATORS), value=default.guidance.estimator_at(final_step), label="Estimator")
                        divergence = gr.Dropdown(list(DIVERGENCES), value=default.guidance.divergence_at(final_step), label="Divergence")
                    with gr.Row():
                        steps = gr.Number(value=default.trainer.max_steps, precision=0, label="Steps")
                        seed = gr.Number(value=default.seed, precision=0, label="Seed")
                        resolution = gr.Dropdown(sorted({16, 32, 64, 128, 256, default.camera.height}), value=default.camera.height,
                                                 label="Render resolution")
                    teacher = gr.Dropdown(list(runner.teachers), value=next(iter(runner.teachers)), label="Teacher")
                    refine = gr.Checkbox(value=False, label="Refine into a mesh (the DMTet geometry and texture stages)",
                                         interactive=bool(runner.mesh_stages))
                    with gr.Row():
                        run = gr.Button("Generate", variant="primary")
                        stop = gr.Button("Stop")
                    state = gr.Markdown()
                with gr.Column():
                    preview = gr.Image(label="Preview", type="numpy")
                    video = gr.Video(label="Turntable")
                    model = gr.Model3D(label="Mesh")
                    files = gr.File(label="Download", file_count="multiple")
            run.click(runner.generate, [prompt, estimator, divergence, steps, seed, resolution, teacher, refine],
                      [state, preview, video, model, files], api_name="generate")
            stop.click(runner.stop, None, state, api_name="stop", queue=False)
        with gr.Tab("Compare"):
            compare_prompt = gr.Textbox(label="Prompt", value=default.prompt)
            methods = gr.Textbox(label="Methods", value="uni-instruct:fkl,vsd,sds")
            seeds = gr.Textbox(label="Seeds", value="0,1")
            compare_steps = gr.Number(value=default.trainer.max_steps, precision=0, label="Steps")
            compare_button = gr.Button("Compare", variant="primary")
            grid_image, grid_video, table = gr.Image(label="Grid"), gr.Video(label="Grid turntable"), gr.Markdown()
            compare_button.click(runner.compare, [compare_prompt, methods, seeds, compare_steps],
                                 [grid_image, grid_video, table], api_name="compare")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (off unless asked for)")
    parser.add_argument("--config", default="configs/shapeworld.yaml")
    parser.add_argument("--queue-size", type=int, default=8, help="runs that may wait for the device; more are told to try later")
    parser.add_argument("--teacher-dir", type=Path, action="append", default=[],
                        help="offer the teacher pipeline folders in (or at) FOLDER besides the config's (repeatable)")
    parser.add_argument("--mesh-stage", action="append", metavar="CONFIG",
                        help="a stage config that 'Refine into a mesh' runs after the NeRF, in order (repeatable; "
                             "default: the config's NAME-geometry.yaml and NAME-texture.yaml where they exist)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = parser.parse_args(argv)
    register_evaluator()  # ShapeWorld prompts get example buttons and are scored
    runner = DemoRunner(args.config, args.overrides, max_waiting=args.queue_size, teacher_dirs=args.teacher_dir,
                        mesh_stages=args.mesh_stage)
    demo = build_demo(runner)
    demo.queue(default_concurrency_limit=None)  # the runner queues runs for the device itself
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=served_folders(runner))


if __name__ == "__main__":
    main()
