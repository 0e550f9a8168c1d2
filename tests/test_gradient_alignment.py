"""threed.tools.gradient_alignment: each estimator's push on a run's renders, against SDS's."""
import json

import pytest

import launch
from tests.conftest import SHAPEWORLD_TEACHER, overrides_for_fast_runs
from threed.tools import gradient_alignment


def test_reports_each_methods_cosine_with_sds_by_timestep(tmp_path, capsys):
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, tmp_path)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", *overrides, "trainer.max_steps=2",
                        "export.formats=[obj]"]) == 0
    run = next((tmp_path / "outputs").glob("shapeworld/*"))
    gradient_alignment.main([str(run), "--methods", "sds,vsd,uni-instruct:rkl", "--timesteps", "300,900",
                             "--samples", "4"])
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 2 and set(report["by_timestep"]) == {"300", "900"}
    for entry in report["by_timestep"].values():
        assert set(entry) == {"sds", "vsd", "uni-instruct:rkl"}
        assert entry["sds"]["cosine_with_sds"] == 1.0 and entry["sds"]["self_cosine"] > 0.0  # its own push, not noise
        assert all(-1.0 <= value["cosine_with_sds"] <= 1.0 and float(value["norm"]) > 0 for value in entry.values())
    # Two steps in, the fake score is still about the teacher's conditional score: VSD keeps only the guidance term.
    assert report["by_timestep"]["900"]["vsd"]["cosine_with_sds"] < 0.99
    with pytest.raises(SystemExit, match="--samples must be at least 2"):
        gradient_alignment.main([str(run), "--samples", "1"])
