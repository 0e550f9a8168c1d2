"""launch.py --batch: every listed run, here as Ray tasks on a local Ray of two CPU workers; a summary;
finished runs skipped on a second call; bad lines refused before anything trains."""
import csv
import json
from pathlib import Path

import pytest

import launch
from threed.batch import parse_batch_file


def outputs_of(overrides: list[str]) -> Path:
    return Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("outputs=")))


def test_a_batch_runs_every_line_on_two_ray_workers_and_skips_finished_runs(fast_overrides, tmp_path, caplog):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts, one with two methods\na red cube\na blue vase | methods=sds,vsd\n")
    args = ["--batch", str(prompts), "--config", "configs/tiny.yaml", "--workers", "2", *fast_overrides,
            "trainer.max_steps=2", "export.formats=[ply]", "video.frames=2"]
    assert launch.main(args) == 0
    rows = list(csv.DictReader(open(outputs_of(fast_overrides) / "batch" / "prompts" / "summary.csv")))
    assert [(r["prompt"], r["method"], r["status"]) for r in rows] == [
        ("a red cube", "uni-instruct:fkl", "finished"), ("a blue vase", "sds", "finished"),
        ("a blue vase", "vsd", "finished")]  # the config's own method where the line names none
    for row in rows:  # each ran in its own Ray worker, with the one thread its task asked for
        record = json.loads((Path(row["run_folder"]) / "cell.json").read_text())
        assert record["threads"] == 1 and float(row["wall_time_s"]) > 0
        assert (Path(row["run_folder"]) / "mesh" / "model.ply").is_file()
    caplog.clear()
    with caplog.at_level("INFO"):
        assert launch.main(args) == 0  # nothing left to train: no Ray is even started
    assert caplog.text.count("finished, skipped") == 3 and "submitted to Ray" not in caplog.text


@pytest.mark.parametrize("line, message", [
    ("a red cube | seed=1", "is not seeds=0,1 or methods="), ("a red cube | methods=magic", "unknown estimator"),
    (" | seeds=1", "has no prompt"), ("a red cube | seeds=x", "not a comma-separated list"),
])
def test_a_bad_line_is_named(tmp_path, line, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a red vase\n{line}\n")
    with pytest.raises(Exception, match=message) as caught:
        parse_batch_file(prompts)
    assert f"{prompts}:2" in str(caught.value)


def test_parsed_lines_default_to_the_config(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red vase\na green cube | seeds=0,1 | methods=uni-instruct:fkl\n")
    first, second = parse_batch_file(prompts)
    assert (first.prompt, first.seeds, first.methods) == ("a red vase", None, None)
    assert second.seeds == [0, 1] and [m.label for m in second.methods] == ["uni-instruct:fkl"]


def test_runs_that_keep_failing_are_reported_and_the_summary_still_written(fast_overrides, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    overrides = [o for o in fast_overrides if not o.startswith("teacher.pretrained")]
    args = ["--batch", str(prompts), "--config", "configs/tiny.yaml", "--workers", "2", *overrides,
            f"teacher.pretrained={tmp_path / 'gone'}"]  # every attempt (first and retries) fails to load it
    assert launch.main(args) == 2
    assert "1 of 1 runs failed: 'a red cube' uni-instruct:fkl seed 0" in capsys.readouterr().err
    rows = list(csv.DictReader(open(outputs_of(fast_overrides) / "batch" / "prompts" / "summary.csv")))
    assert [row["status"] for row in rows] == ["not finished"]


def test_in_one_process_a_failing_run_does_not_stop_the_others(fast_overrides, tmp_path, capsys, monkeypatch):
    from threed import runner
    from threed.errors import NonFiniteLossError

    def run_cell_failing_seed0(cell):
        if cell.seed == 0:
            raise NonFiniteLossError("the loss became NaN")
        real_run_cell(cell)

    real_run_cell = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", run_cell_failing_seed0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube | seeds=0,1\n")
    args = ["--batch", str(prompts), "--config", "configs/tiny.yaml", *fast_overrides, "trainer.max_steps=2",
            "video.frames=2", "export.formats=[ply]"]
    assert launch.main(args) == 2
    assert "1 of 2 runs failed: 'a red cube' uni-instruct:fkl seed 0: the loss became NaN" in capsys.readouterr().err
    rows = list(csv.DictReader(open(outputs_of(fast_overrides) / "batch" / "prompts" / "summary.csv")))
    assert [row["status"] for row in rows] == ["not finished", "finished"]
