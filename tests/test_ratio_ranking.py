"""The ratio-ranking command: AUCs per band of t and kind of wrongness, from a run's checkpoints."""
import json

import pytest
import torch

from tests.conftest import overrides_for_fast_runs
from threed.tools.ratio_ranking import main, ranking_auc, wrong_objects


def test_the_auc_counts_the_pairs_the_truth_wins_and_ties_as_half():
    true_scores = torch.tensor([1.0, 0.0])
    wrong_scores = torch.tensor([[0.0, 0.0], [2.0, -1.0]])  # view 0: beats, loses; view 1: tie, beats
    assert ranking_auc(true_scores, wrong_scores) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_wrong_objects_differ_from_the_truth_in_one_way_each():
    wrong = wrong_objects("vase", "red")
    assert len(wrong["shape"]) == 5 and all(colour == "red" for _, colour in wrong["shape"])
    assert len(wrong["colour"]) == 5 and "red" not in [colour for _, colour in wrong["colour"]]
    points = torch.tensor([[0.0, 0.0, 0.0]])
    smaller, larger = (distance(points) for distance, _ in wrong["size"])
    assert smaller > larger  # the centre lies deeper inside the larger vase


def test_the_command_reports_an_auc_per_band_and_kind_for_each_step(tiny_teacher, tmp_path, capsys):
    import launch

    overrides = overrides_for_fast_runs(tiny_teacher, tmp_path)
    assert launch.main(["--config", "configs/tiny.yaml", "--train", "--prompt", "a red vase", *overrides]) == 0
    [run] = (tmp_path / "outputs" / "tiny").iterdir()
    main([str(run), "--steps", "3,6", "--views", "2", "--bands", "2"])
    report = json.loads(capsys.readouterr().out)
    assert list(report["steps"]) == ["3", "6"]
    for bands in report["steps"].values():
        assert list(bands) == ["0-499", "500-999"]
        for aucs in bands.values():
            assert set(aucs) == {"shape", "colour", "size"} and all(0 <= auc <= 1 for auc in aucs.values())
    [(estimator, clamps)] = report["off_clamps_by_estimator"].items()  # the tiny config's one estimator, 6 steps
    assert estimator == "uni-instruct" and clamps["views"] > 0 and 0 <= clamps["off_clamps"] <= 1
    main([str(run)])  # without steps: only what the run's metrics say
    assert json.loads(capsys.readouterr().out).keys() == {"run", "prompt", "off_clamps_by_estimator"}


def test_a_run_without_a_discriminator_is_refused(tiny_teacher, tmp_path, capsys):
    import launch

    overrides = overrides_for_fast_runs(tiny_teacher, tmp_path)
    assert launch.main(["--config", "configs/tiny.yaml", "--train", "--prompt", "a red vase", *overrides,
                        "guidance.estimator=sds", "trainer.max_steps=3"]) == 0
    [run] = (tmp_path / "outputs" / "tiny").iterdir()
    with pytest.raises(SystemExit) as exit_code:
        main([str(run), "--steps", "3"])
    assert exit_code.value.code == 2 and "without a discriminator" in capsys.readouterr().err


def test_the_clamp_summary_weighs_each_record_by_its_views_within_each_estimator_phase(tmp_path):
    from types import SimpleNamespace

    from guidance.distillation import GuidanceSpec
    from guidance.schedules import SwitchSpec
    from threed.tools.ratio_ranking import clamp_summary

    records = [{"step": 10, "ratio": {"views": 20, "off_clamps": 0.5}}, {"step": 15},  # a record without a discriminator
               {"step": 20, "ratio": {"views": 10, "off_clamps": 1.0}}, {"step": 30, "ratio": {"views": 20, "off_clamps": 0.25}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    run = SimpleNamespace(paths=SimpleNamespace(metrics=tmp_path / "metrics.jsonl"), config=SimpleNamespace(
        guidance=GuidanceSpec(estimator="vsd", switch=SwitchSpec(step=20, estimator="uni-instruct"))))
    assert clamp_summary(run) == {"vsd": {"views": 30, "off_clamps": round(20 / 30, 4)},
                                  "uni-instruct": {"views": 20, "off_clamps": 0.25}}
