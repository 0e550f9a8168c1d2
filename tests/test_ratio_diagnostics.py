"""The density ratio's diagnostics: where it sits at its clamps, and h per band of t."""
import math

import torch

from guidance.divergences import get_divergence
from guidance.estimators import RatioSpec, at_clamps, divergence_weights
from guidance.ratio_diagnostics import RatioMonitor, RatioReading, RunningMeans, band_edges, t_bands


def test_clamps_are_found_on_the_logit_and_on_the_ratio():
    spec = RatioSpec(logit_clamp=[-10.0, 10.0], ratio_clamp=[0.1, 20.0])
    logit = torch.tensor([-12.0, math.log(0.1) - 0.01, 0.0, math.log(20.0) + 0.01, 11.0])
    low, high = at_clamps(logit, spec)
    assert low.tolist() == [True, True, False, False, False]
    assert high.tolist() == [False, False, False, True, True]
    unclamped = at_clamps(logit, RatioSpec(logit_clamp=None, ratio_clamp=None))
    assert not unclamped[0].any() and not unclamped[1].any()


def test_the_monitor_sums_up_the_views_since_its_last_summary():
    monitor = RatioMonitor(num_train_timesteps=1000, bands=4)
    assert monitor.summary() is None
    monitor.add(RatioReading(t=torch.tensor([10, 300]), h=torch.tensor([1.0, 3.0]),
                             at_low_clamp=torch.tensor([True, False]), at_high_clamp=torch.tensor([False, False])))
    monitor.add(None)  # a step without a discriminator
    monitor.add(RatioReading(t=torch.tensor([20, 999]), h=torch.tensor([2.0, 5.0]),
                             at_low_clamp=torch.tensor([False, False]), at_high_clamp=torch.tensor([False, True])))
    summary = monitor.summary()
    assert summary["views"] == 4
    assert summary["at_low_clamp"] == summary["at_high_clamp"] == 0.25 and summary["off_clamps"] == 0.5
    assert summary["h_by_t"] == {"0-249": {"views": 2, "mean": 1.5, "std": 0.5},
                                 "250-499": {"views": 1, "mean": 3.0, "std": 0.0},
                                 "750-999": {"views": 1, "mean": 5.0, "std": 0.0}}
    assert monitor.summary() is None  # forgotten once summed up


def test_the_demo_status_shows_how_often_the_ratio_is_off_its_clamps():
    from types import SimpleNamespace

    import app

    config = SimpleNamespace(trainer=SimpleNamespace(max_steps=10))
    record = {"step": 2, "loss": 1.0, "it_per_s": 1.0}
    assert "clamps" not in app.status(record, config)
    assert "off its clamps in 75% of views" in app.status({**record, "ratio": {"off_clamps": 0.75}}, config)


def test_running_means_start_at_a_bands_first_views_then_decay_toward_each_steps_mean():
    means = RunningMeans(num_train_timesteps=1000, bands=2, decay=0.5)
    scale = means.update(torch.tensor([100, 200]), torch.tensor([2.0, 4.0]))  # both in band 0
    assert scale.tolist() == [3.0, 3.0] and means.means.tolist() == [3.0, 1.0] and means.seen.tolist() == [True, False]
    scale = means.update(torch.tensor([300, 900]), torch.tensor([5.0, 7.0]))
    assert scale.tolist() == [4.0, 7.0]  # band 0: 0.5 * 3 + 0.5 * 5; band 1 seen for the first time


def test_h_divided_by_given_scales_keeps_the_weights_ratio():
    ratio = torch.tensor([0.5, 2.0])
    fkl = get_divergence("fkl")
    h, r_dh = divergence_weights(fkl, ratio, RatioSpec())
    scaled_h, scaled_r_dh = divergence_weights(fkl, ratio, RatioSpec(), h_scale=torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(scaled_h, h / torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(scaled_r_dh, r_dh / torch.tensor([2.0, 4.0]))


def test_band_edges_hold_exactly_the_timesteps_each_band_is_assigned():
    assert band_edges(1000, 4) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    for n, bands in ((1000, 3), (7, 4)):  # bands that do not divide the range evenly
        t = torch.arange(n)
        for index, (low, high) in enumerate(band_edges(n, bands)):
            assert torch.equal(t_bands(t, n, bands) == index, (t >= low) & (t < high))
