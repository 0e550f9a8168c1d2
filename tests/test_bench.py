"""The occupancy benchmark measures one run at several thresholds."""
from threed.tools.bench import bench_occupancy


def test_a_higher_occupancy_threshold_evaluates_fewer_samples_of_the_same_run(fast_overrides):
    result = bench_occupancy("configs/tiny.yaml", [*fast_overrides, "trainer.max_steps=4"], [0.0, 5.0], every=2, views=1)
    assert list(result["steps"]) == ["2", "4"]
    for measured in result["steps"].values():
        assert measured["5.0"]["samples_per_view"] < measured["0.0"]["samples_per_view"]
        assert all(cell["ms_per_view"] > 0 for cell in measured.values())
