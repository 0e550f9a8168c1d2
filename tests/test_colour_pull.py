"""threed.tools.colour_pull: which way a run's distillation pulls the colour, read from its checkpoints."""
import pytest

import launch
from tests.conftest import SHAPEWORLD_TEACHER, overrides_for_fast_runs
from threed.errors import RunDirError
from threed.tools.colour_pull import colour_pull_report


def test_reports_the_pull_at_each_checkpointed_step(tmp_path):
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, tmp_path)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", *overrides, "trainer.max_steps=3",
                        "trainer.checkpoint_every=1", "trainer.keep_checkpoints=3", "export.formats=[obj]"]) == 0
    run = next((tmp_path / "outputs").glob("shapeworld/*"))
    report = colour_pull_report(str(run), [1, 3], views=2, seed=0)
    assert set(report["steps"]) == {"1", "3"}
    for entry in report["steps"].values():
        assert set(entry) == {"render", "teacher_x0", "fake_x0", "descent_direction", "coverage"}
        assert 0.5 < entry["coverage"] < 2.0  # the initial blob is about the size of the true vase
        assert all(0.0 <= value <= 1.0 for value in entry["render"])
        assert max(abs(value) for value in entry["descent_direction"]) == pytest.approx(1.0)
    assert report["steps"]["1"]["render"] != report["steps"]["3"]["render"]  # each step's own field
    with pytest.raises(RunDirError, match="no checkpoint of step 5"):
        colour_pull_report(str(run), [5], views=1, seed=0)
