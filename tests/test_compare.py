"""The divergence comparison: 2 methods x 2 seeds, its grids and tables, the skip on a second call, and
the refusal of cells made with another config."""
import csv
import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

import launch
from threed.cells import Method, parse_methods, parse_seeds
from threed.config import load_config
from threed.errors import ConfigError
from threed.export import load_mesh


def test_comparison_writes_grids_and_tables_and_skips_finished_cells(fast_overrides, caplog, capsys):
    out = Path(next(o.split("=", 1)[1] for o in fast_overrides if o.startswith("outputs=")))
    args = ["--compare", "--config", "configs/tiny.yaml", "--prompt", "a red cube", "--methods", "uni-instruct:fkl,sds",
            "--seeds", "0,1", *fast_overrides, "trainer.max_steps=2", "export.formats=[glb]", "video.frames=3"]
    assert launch.main(args) == 0
    root = out / "compare" / "tiny" / "a_red_cube"
    grid = imageio.imread(root / "grid.png")
    assert grid.shape[0] == 16 + 2 * 32 and grid.shape[1] > 2 * 32  # header row of seeds, header column of methods
    assert (grid[16:, -64:] < 250).any()  # the renders themselves, not just white
    assert len(imageio.mimread(root / "grid.mp4")) == 3
    rows = list(csv.DictReader(open(root / "table.csv")))
    assert [r["method"] for r in rows] == ["uni-instruct:fkl", "sds"]
    assert {"wall_time_s", "chamfer", "iou", "color_error", "diversity"} <= set(rows[0])
    assert float(rows[0]["diversity"]) > 0 and float(rows[0]["wall_time_s"]) > 0
    from threed.shapeworld.evaluator import evaluate_mesh  # the table's numbers: the evaluator's seed means

    scores_by_method = []
    for row, label in zip(rows, ("uni-instruct-fkl", "sds")):
        scores = [evaluate_mesh(load_mesh(root / label / f"seed{seed}" / "mesh" / "model.glb"),
                                "a red cube") for seed in (0, 1)]
        scores_by_method.append(scores)
        for key in ("chamfer", "iou", "color_error"):
            assert float(row[key]) == pytest.approx(np.mean([score[key] for score in scores]), rel=1e-9), key
    table = (root / "table.md").read_text()
    assert "| uni-instruct:fkl |" in table and "means over the seeds" in table
    chamfer_differences = [b["chamfer"] - a["chamfer"] for a, b in zip(*scores_by_method)]  # sds - fkl, seed by seed
    assert f"{np.mean(chamfer_differences):+.4f} ± {np.std(chamfer_differences, ddof=1) / np.sqrt(2):.4f}" in table
    assert "paired differences from uni-instruct:fkl" in table

    caplog.clear()
    with caplog.at_level("INFO"):
        assert launch.main(args) == 0
    assert caplog.text.count("finished, skipped") == 4

    # A cell interrupted after its last checkpoint: its wall time counts the training before the interruption.
    cell = root / "sds" / "seed1"
    checkpoint = cell / "checkpoints" / "step0000002.pt"
    torch.save({**torch.load(checkpoint, weights_only=True), "training_s": 1000.0}, checkpoint)
    (cell / "cell.json").unlink()
    assert launch.main(args) == 0
    assert 1000 < json.loads((cell / "cell.json").read_text())["wall_time_s"] < 1100

    assert launch.main([*args, "trainer.max_steps=3"]) == 2  # the finished cells are not this config's
    assert "was run with another config (trainer.max_steps: 2 -> 3)" in capsys.readouterr().err


def test_odd_sized_frames_still_make_a_video(tmp_path):
    from threed.video import write_mp4

    frames = [np.full((33, 47, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    write_mp4(tmp_path / "odd.mp4", frames, fps=10)
    assert np.asarray(imageio.mimread(tmp_path / "odd.mp4")).shape == (3, 34, 48, 3)


def test_method_and_seed_lists_are_checked():
    assert [m.label for m in parse_methods("uni-instruct:jkl, vsd ,sid")] == ["uni-instruct:jkl", "vsd", "sid"]
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad, message in (("magic", "unknown estimator"), ("uni-instruct", "needs a divergence"), ("sds:fkl", "takes no divergence")):
        with pytest.raises(ConfigError, match=message):
            parse_methods(bad)
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_seeds("0,x")


@pytest.mark.slow
def test_each_method_runs_as_itself_and_the_configs_estimator_keeps_its_warm_start():
    base = load_config("configs/shapeworld.yaml", [])  # VSD, then Uni-Instruct forward KL from guidance.switch.step
    final = base.trainer.max_steps

    def run_of(method: Method):
        guidance = load_config("configs/shapeworld.yaml", method.overrides(base)).guidance
        return [(guidance.estimator_at(step), guidance.divergence_at(step)) for step in (0, final)]

    assert run_of(Method("uni-instruct", "fkl")) == [("vsd", "fkl"), ("uni-instruct", "fkl")]
    assert run_of(Method("uni-instruct", "jkl")) == [("vsd", "jkl"), ("uni-instruct", "jkl")]  # the same warm start
    assert run_of(Method("uni-instruct", "rkl")) == [("vsd", "rkl"), ("uni-instruct", "rkl")]
    assert run_of(Method("f-distill", "fkl")) == [("f-distill", "fkl")] * 2  # another estimator: alone
    assert [estimator for estimator, _ in run_of(Method("vsd"))] == ["vsd", "vsd"]
    # A base whose switch names the final divergence (reverse KL, then forward KL): the switch's is replaced.
    reverse_first = load_config("configs/uni-instruct-rkl-to-fkl.yaml", ["prompt=a vase"])
    jkl = load_config("configs/uni-instruct-rkl-to-fkl.yaml", ["prompt=a vase",
                                                              *Method("uni-instruct", "jkl").overrides(reverse_first)])
    assert [jkl.guidance.divergence_at(step) for step in (0, jkl.trainer.max_steps)] == ["rkl", "jkl"]


def test_quality_table_scores_every_prompt_method_and_seed_and_reuses_runs(fast_overrides, tmp_path, capsys, caplog):
    from threed.tools import quality_table

    table = tmp_path / "quality.md"
    args = ["--config", "configs/tiny.yaml", "--methods", "sds", "--prompts", "a red cube; an orange vase",
            "--seeds", "0,1", "--out", str(table), *fast_overrides, "trainer.max_steps=2", "export.formats=[ply]",
            "video.frames=2"]
    quality_table.main(args)
    lines = table.read_text().splitlines()
    runs = [line for line in lines if line.startswith("| a")]
    assert [line.split(" | ")[:3] for line in runs] == [["| a red cube", "sds", "0"], ["| a red cube", "sds", "1"],
                                                         ["| an orange vase", "sds", "0"], ["| an orange vase", "sds", "1"]]
    cell_mesh = next(Path(o.split("=", 1)[1]) for o in fast_overrides if o.startswith("outputs=")) / "compare" / \
        "tiny" / "a_red_cube" / "sds" / "seed1" / "mesh" / "model.ply"
    from threed.shapeworld.evaluator import evaluate_mesh

    chamfer, initial_chamfer, gain, iou = (float(value) for value in runs[1].split(" | ")[3:7])
    assert iou == pytest.approx(evaluate_mesh(load_mesh(cell_mesh), "a red cube")["iou"], abs=5e-4)
    assert gain == pytest.approx(1 - chamfer / initial_chamfer, abs=0.01) and initial_chamfer > 0
    assert all(line.split(" | ")[-1] == f"{torch.get_num_threads()} |" for line in runs)  # the cells' own threads
    from threed.compare import diversity

    cube_meshes = [load_mesh(cell_mesh.parents[2] / f"seed{seed}" / "mesh" / "model.ply") for seed in (0, 1)]
    [diversities] = [line.split(" | ") for line in lines if line.startswith("| sds | ") and " ± " in line
                     and " / " not in line and line.count(" | ") == 4]  # sds, the two prompts, the mean, no difference
    assert float(diversities[1]) == pytest.approx(diversity(cube_meshes), abs=5e-5)
    cube_gains = [float(line.split(" | ")[5]) for line in runs[:2]]
    [per_shape] = [line for line in lines if line.startswith("| sds |") and " / " in line]
    assert float(per_shape.split(" | ")[1].split(" / ")[0]) == pytest.approx(np.mean(cube_gains), abs=0.006)  # two seeds' median

    caplog.clear()
    with caplog.at_level("INFO"):
        quality_table.main(args)
    assert caplog.text.count("finished, skipped") == 4


def test_quality_table_medians_per_method_and_shape():
    from threed.tools.quality_table import markdown

    rows = [{"prompt": f"a red {shape}", "shape": shape, "method": method, "seed": seed, "chamfer": chamfer,
             "initial_chamfer": 0.1, "shape_gain": 1 - chamfer / 0.1, "iou": 0.5, "color_error": 0.05,
             "wall_time_s": 60.0, "threads": 1}
            for method, offset in (("sds", 0.0), ("vsd", 0.01)) for shape in ("cube", "cone")
            for seed, chamfer in zip(range(3), (0.02 + offset, 0.09, 0.03 + offset if shape == "cube" else 0.05))]
    lines = markdown(rows, "header").splitlines()
    overall = {line.split(" | ")[1]: line.split(" | ")[3] for line in lines if line.startswith("| **median**")}
    assert overall == {"**sds**": "0.0400", "**vsd**": "0.0450"}  # over all six runs of each method
    per_shape = {line.split(" | ")[0]: line.split(" | ")[1:] for line in lines
                 if line.startswith(("| sds", "| vsd")) and " / " in line}
    assert per_shape["| sds"] == ["0.70 / 0.0300", "0.50 / 0.0500", "0.0400 |"]
    assert per_shape["| vsd"] == ["0.60 / 0.0400", "0.50 / 0.0500", "0.0450 |"]


def test_quality_table_compares_the_diversity_of_methods_prompt_by_prompt():
    from threed.tools.quality_table import markdown

    rows = [{"prompt": f"a red {shape}", "shape": shape, "method": method, "seed": 0, "chamfer": 0.03,
             "initial_chamfer": 0.1, "shape_gain": 0.7, "iou": 0.5, "color_error": 0.05, "wall_time_s": 60.0,
             "threads": 1} for method in ("uni-instruct:fkl", "uni-instruct:rkl") for shape in ("cube", "cone")]
    diversities = [{"prompt": "a red cube", "method": "uni-instruct:fkl", "diversity": 0.010},
                   {"prompt": "a red cone", "method": "uni-instruct:fkl", "diversity": 0.030},
                   {"prompt": "a red cube", "method": "uni-instruct:rkl", "diversity": 0.016},
                   {"prompt": "a red cone", "method": "uni-instruct:rkl", "diversity": 0.028}]
    lines = markdown(rows, "header", diversities).splitlines()
    [fkl] = [line.split(" | ") for line in lines if line.startswith("| uni-instruct:fkl | 0.0100 |")]
    [rkl] = [line.split(" | ") for line in lines if line.startswith("| uni-instruct:rkl | 0.0160 |")]
    assert fkl[1:] == ["0.0100", "0.0300", "0.0200 ± 0.0100", " |"]  # no difference from itself
    assert rkl[1:] == ["0.0160", "0.0280", "0.0220 ± 0.0060", "+0.0020 ± 0.0040, median +0.0020 (1/2) |"]  # +0.006 and -0.002


def test_quality_table_checks_the_prompts_before_training(capsys):
    from threed.tools import quality_table

    with pytest.raises(SystemExit, match="not a ShapeWorld prompt"):
        quality_table.main(["--prompts", "a red cube;a hamburger"])


def test_quality_table_with_mesh_stages_scores_the_last_stage_beside_stage_one(tmp_path, caplog):
    from tests.conftest import SHAPEWORLD_TEACHER, overrides_for_fast_runs
    from threed.tools import quality_table

    table = tmp_path / "stages.md"
    args = ["--methods", "uni-instruct:fkl", "--prompts", "a green cube", "--seeds", "0", "--out", str(table),
            "--then", "configs/shapeworld-geometry.yaml", "--then", "configs/shapeworld-texture.yaml",
            *overrides_for_fast_runs(SHAPEWORLD_TEACHER, tmp_path), "trainer.max_steps=2", "guidance.switch.step=1",
            "export.formats=[glb]", "video.frames=2"]
    quality_table.main(args)
    cells = tmp_path / "outputs" / "compare" / "shapeworld" / "a_green_cube" / "uni-instruct-fkl"
    assert sorted(p.name for p in cells.iterdir()) == ["seed0", "seed0.shapeworld-geometry", "seed0.shapeworld-texture"]
    scores = {name: json.loads((cells / name / "mesh" / "shapeworld_score.json").read_text())
              for name in ("seed0", "seed0.shapeworld-texture")}
    lines = table.read_text().splitlines()
    [run] = [line for line in lines if line.startswith("| a green cube")]
    assert float(run.split(" | ")[3]) == pytest.approx(scores["seed0.shapeworld-texture"]["chamfer"], abs=5e-5)
    assert float(run.split(" | ")[4]) == pytest.approx(scores["seed0"]["initial"]["chamfer"], abs=5e-5)
    stage_one, mesh_stages = (line.split(" | ") for line in lines
                              if line.startswith(("| uni-instruct:fkl | stage 1 |", "| uni-instruct:fkl | mesh stages |")))
    assert float(stage_one[2].split(" / ")[0]) == pytest.approx(scores["seed0"]["chamfer"], abs=5e-5)
    assert float(mesh_stages[2].split(" / ")[0]) == pytest.approx(scores["seed0.shapeworld-texture"]["chamfer"], abs=5e-5)
    caplog.clear()
    with caplog.at_level("INFO"):
        quality_table.main(args)
    assert caplog.text.count("finished, skipped") == 1


def test_a_paired_difference_gives_its_mean_error_median_and_wins():
    from threed.paired_statistics import paired_difference

    # mean +0.001 (one large loss), median -0.001: two of three pairs are won when lower is better
    assert paired_difference([0.006, -0.002, -0.001], better=-1) == "+0.0010 ± 0.0025, median -0.0010 (2/3)"
    assert paired_difference([0.006, -0.002, -0.001], better=1).endswith("(1/3)")


def test_one_value_has_no_standard_error_to_print():
    from threed.paired_statistics import mean_with_error, paired_difference

    assert mean_with_error([0.0206]) == "0.0206"  # one prompt: no "± nan"
    assert mean_with_error([0.0195, 0.0217]) == "0.0206 ± 0.0011"
    assert paired_difference([0.0038], better=-1) == "+0.0038, median +0.0038 (0/1)"


def test_quality_table_pairs_the_methods_on_the_same_prompts_and_seeds():
    from threed.tools.quality_table import markdown

    rows = [{"prompt": f"a red {shape}", "shape": shape, "method": method, "seed": seed,
             "chamfer": 0.03 + 0.01 * seed + (0.002 if method == "sds" else 0.0), "initial_chamfer": 0.1,
             "shape_gain": 0.5, "iou": 0.5, "color_error": 0.05, "wall_time_s": 60.0, "threads": 1}
            for method in ("uni-instruct:fkl", "sds") for shape in ("cube", "cone") for seed in range(3)]
    lines = markdown(rows, "header").splitlines()
    [fkl] = [line.split(" | ") for line in lines if line.startswith("| uni-instruct:fkl | 6 |")]
    [sds] = [line.split(" | ") for line in lines if line.startswith("| sds | 6 |")]
    assert fkl[2] == "0.0400 ± 0.0037"  # seeds 0.03, 0.04, 0.05 on each shape: sd 0.00894 over six runs
    # The seeds differ by far more than the methods, yet every pair says sds is 0.002 worse.
    assert sds[5] == "+0.0020 ± 0.0000, median +0.0020 (0/6)" and sds[6] == "+0.0000 ± 0.0000, median +0.0000 (0/6)"
