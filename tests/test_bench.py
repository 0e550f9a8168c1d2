"""The benchmarks: the occupancy benchmark measures one run at several thresholds; the step breakdown names its parts;
marching tetrahedra meets the true surface; the hash grid's baseline is the same lookup."""
import json
from pathlib import Path

import torch
from torch import nn

from nerf.hashgrid import HashGridEncoding, HashGridSpec
from threed.tools import bench
from threed.tools.bench import bench_occupancy, plain_hash_grid


def test_a_higher_occupancy_threshold_evaluates_fewer_samples_of_the_same_run(fast_overrides):
    result = bench_occupancy("configs/tiny.yaml", [*fast_overrides, "trainer.max_steps=4"], [0.0, 5.0], every=2, views=1)
    assert list(result["steps"]) == ["2", "4"]
    for measured in result["steps"].values():
        assert measured["5.0"]["samples_per_view"] < measured["0.0"]["samples_per_view"]
        assert all(cell["ms_per_view"] > 0 for cell in measured.values())


def test_the_step_breakdown_names_each_part_of_a_training_step(fast_overrides):
    from threed.tools.bench import bench_step

    result = bench_step("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=uni-instruct"], warmup=1, steps=2)
    parts = result["parts_ms"]
    assert {"step.render", "step.guidance", "step.representation.backward", "step.representation.optimizer",
            "step.guidance_update.backward", "guidance.teacher", "guidance.fake_score", "guidance.discriminator",
            "guidance.auxiliary_losses"} <= set(parts)
    assert all(value >= 0 for value in parts.values()) and result["step_ms_median"] > 0
    nested = parts["guidance.teacher"] + parts["guidance.fake_score"] + parts["guidance.auxiliary_losses"]
    assert nested <= 1.05 * parts["step.guidance"]  # the guidance's parts lie inside its step
    assert result["peak_memory_mb"] > 0


def test_tetrahedra_reports_a_closed_surface_near_the_true_one(capsys):
    bench.main(["tetrahedra", "--resolution", "12", "--shapes", "sphere,torus"])
    report = json.loads(capsys.readouterr().out)
    assert report["tets"] == 6 * 12**3
    for shape in ("sphere", "torus"):
        assert report[shape]["watertight"] and report[shape]["faces"] > 0
        assert report[shape]["chamfer"] < 0.1 * (1.0 / 12)  # a tenth of a cell


def test_rasterize_times_the_mesh_against_a_nerf_view(capsys):
    bench.main(["rasterize", "--subdivisions", "2", "--repeats", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["triangles"] == 320
    for resolution in ("res64", "res256"):
        entry = report[resolution]
        assert entry["mesh_ms"] > 0 and entry["nerf_ms"] > 0
        assert abs(entry["mesh_over_nerf"] - entry["mesh_ms"] / entry["nerf_ms"]) < 0.002 + 0.01 * entry["mesh_over_nerf"]


def test_export_times_the_surface_the_unwrap_and_the_bake(fast_overrides, capsys):
    import launch

    assert launch.main(["--config", "configs/tiny.yaml", "--train", *fast_overrides, "trainer.max_steps=2",
                        "export.formats=[ply]"]) == 0
    capsys.readouterr()
    outputs = next(o.split("=", 1)[1] for o in fast_overrides if o.startswith("outputs="))
    run = next(Path(outputs).glob("tiny/*"))
    bench.main(["export", str(run), "--texture-size", "64"])
    result = json.loads(capsys.readouterr().out)
    assert result["faces"] > 0 and result["texture_size"] == 64
    assert all(result[part] >= 0 for part in ("surface_s", "unwrap_s", "bake_s"))


def test_the_plain_loop_baseline_computes_the_hash_grids_lookup():
    """The hashgrid benchmark compares like with like: the plain loop gives the encoding's features."""
    torch.manual_seed(0)
    encoding = HashGridEncoding(HashGridSpec(n_levels=6, log2_hashmap_size=12, base_resolution=4, finest_resolution=256,
                                             backend="torch"))
    nn.init.uniform_(encoding.table, -1, 1)
    points = torch.rand(500, 3)
    torch.testing.assert_close(plain_hash_grid(encoding, points), encoding(points), rtol=1e-5, atol=1e-5)
