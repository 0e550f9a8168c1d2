"""Command line: train, resume, render a turntable, or export meshes.

    python launch.py --config configs/tiny.yaml --train --prompt "a red vase" [key.path=value ...]
    python launch.py --config configs/shapeworld-geometry.yaml --train --from RUN_DIR   # a mesh stage after a NeRF run
    python launch.py --resume RUN_DIR [key.path=value ...]
    python launch.py --test RUN_DIR
    python launch.py --export RUN_DIR --format obj
    python launch.py --compare --config configs/tiny.yaml --prompt "a red vase" --methods uni-instruct:fkl,vsd,sds --seeds 0,1
    python launch.py --batch prompts.txt --config configs/shapeworld.yaml --workers 2   # Ray tasks, one CPU each
    torchrun --nproc-per-node 2 launch.py --config configs/shapeworld.yaml --train   # one run, its views on 2 GPUs
"""
from __future__ import annotations

import argparse
import logging
import sys

from guidance.teacher import TeacherNotFoundError
from threed import distributed
from threed.config import EXPORT_FORMATS, load_config, override
from threed.errors import UserError
from threed.run import Run, stage_overrides
from threed.run_folder import existing_run_folder
from threed.runner import CellRunner
from threed.shapeworld.evaluator import register_evaluator

log = logging.getLogger("launch")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Text-to-3D by score distillation.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="start a new run from --config")
    mode.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    mode.add_argument("--test", metavar="RUN_DIR", help="render the run's turntable video")
    mode.add_argument("--export", metavar="RUN_DIR", help="export the run's mesh")
    mode.add_argument("--compare", action="store_true", help="compare --methods over --seeds on one prompt")
    mode.add_argument("--batch", metavar="FILE", help="train every run FILE lists (one prompt a line, optionally "
                                                      "' | seeds=0,1 | methods=sds,vsd'), then write a summary")
    parser.add_argument("--config", help="YAML config (for --train)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, help="mesh format for --export (default: all of export.formats)")
    parser.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                        help="for a mesh stage's --train: start from this finished run (mesh.start_from=RUN_DIR; "
                             "its prompt unless --prompt is given)")
    parser.add_argument("--then", action="append", default=[], metavar="CONFIG",
                        help="for --train and --compare: then train this mesh stage from each run just finished "
                             "(repeatable, in order, e.g. --then configs/shapeworld-geometry.yaml --then "
                             "configs/shapeworld-texture.yaml); the overrides apply to every stage")
    parser.add_argument("--prompt", help="shorthand for prompt=TEXT")
    parser.add_argument("--seed", type=int, help="shorthand for seed=N")
    parser.add_argument("--outputs", help="shorthand for outputs=DIR (default: outputs)")
    parser.add_argument("--methods", default="uni-instruct:fkl,vsd,sds",
                        help="for --compare: estimators, with a divergence where they use one (uni-instruct:fkl,vsd,sds)")
    parser.add_argument("--seeds", default="0,1,2", help="for --compare: comma-separated seeds")
    runs = parser.add_argument_group("many runs (--compare, --batch)")
    runs.add_argument("--workers", type=int, default=1, help="runs at a time; above 1 they are Ray tasks on a local Ray")
    runs.add_argument("--ray-address", help="run them on this Ray cluster instead (e.g. auto, ray://host:10001)")
    runs.add_argument("--cpus-per-run", type=int, default=1, help="each Ray task's CPUs (and torch threads)")
    runs.add_argument("--gpus-per-run", type=float, default=0.0, help="each Ray task's GPUs (0.5: two runs share one)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    args = parser.parse_args(argv)
    if (args.train or args.compare or args.batch) and not args.config:
        parser.error("--train, --compare and --batch need --config FILE (e.g. configs/tiny.yaml)")
    if args.from_run and not args.train:
        parser.error("--from RUN_DIR starts a mesh stage: use it with --train --config (e.g. configs/shapeworld-geometry.yaml)")
    if args.then and not (args.train or args.compare):
        parser.error("--then chains mesh stages after --train's run or each of --compare's runs")
    if args.workers < 1 or args.cpus_per_run < 1 or args.gpus_per_run < 0:
        parser.error("--workers and --cpus-per-run must be at least 1, --gpus-per-run at least 0")
    return args


def overrides_from(args: argparse.Namespace) -> list[str]:
    shorthands = {"prompt": args.prompt, "seed": args.seed, "outputs": args.outputs}
    if args.from_run:  # a mesh stage: the NeRF run's folder and, unless given, its prompt
        source = existing_run_folder(args.from_run)
        shorthands |= {"mesh.start_from": str(source.root), "prompt": args.prompt or load_config(source.config).prompt}
    return [override(key, value) for key, value in shorthands.items() if value is not None] + args.overrides


def execute(args: argparse.Namespace) -> None:
    runner = CellRunner(args.workers, args.ray_address, args.cpus_per_run, args.gpus_per_run)
    if args.compare:
        from threed.cells import parse_methods, parse_seeds
        from threed.compare import compare

        root = compare(args.config, overrides_from(args), parse_methods(args.methods), parse_seeds(args.seeds), runner,
                       args.then)
        log.info("comparison: %s (grid.mp4, grid.png, table.md, table.csv)", root)
        return
    if args.batch:
        from threed.batch import batch

        root = batch(args.config, overrides_from(args), args.batch, runner)
        log.info("batch: %s (summary.md, summary.csv)", root)
        return
    if args.train:
        train_stages(args)
        return
    run = Run.open(args.resume or args.test or args.export, overrides_from(args))
    log.info("run folder: %s (device: %s)", run.paths.root, run.device)
    if args.resume:
        run.train(run.load_teacher(), resume=True)
    else:
        representation = run.trained_representation()
        if args.test:
            run.write_video(representation)
        if args.export:
            run.write_meshes(representation, [args.format] if args.format else run.config.export.formats)
    log.info("done: %s", run.paths.root)


def train_stages(args: argparse.Namespace) -> None:
    """--train: a new run of --config, then one of each --then stage, started from the run before it."""
    source = None
    for config_file in [args.config, *args.then]:
        carried = stage_overrides(source.paths.root, source.config) if source else []
        run, teacher = Run.start(load_config(config_file, overrides_from(args) + carried))
        log.info("run folder: %s (device: %s)", run.paths.root, run.device)
        try:
            run.train(teacher)
        except BaseException:
            run.discard_if_unstarted()  # a new run that failed before its first checkpoint leaves no folder behind
            raise
        log.info("done: %s", run.paths.root)
        source = run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ranks = distributed.start_from_environment()  # several processes under torchrun
    quiet = not ranks.is_main  # rank 0 speaks for the run
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    register_evaluator()  # ShapeWorld prompts are scored (mesh/shapeworld_score.json)
    try:
        if ranks.world_size > 1 and not (args.train or args.resume):
            raise UserError("under torchrun, launch.py trains one run on several processes: use --train or --resume "
                            "(run --compare, --batch, --test and --export as one process)")
        execute(args)
    except (UserError, TeacherNotFoundError) as error:
        if args.debug:
            raise
        print(f"error{f' (rank {ranks.rank})' if quiet else ''}: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
