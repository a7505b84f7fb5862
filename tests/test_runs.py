"""core.runs: reading run directories while the loop writes them."""
import json

import pytest

from core import runs as R


def test_metrics_reader_keeps_a_half_written_line_for_later(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss/x": 1.0}\n{"step": 2, "lo')
    reader = R.MetricsReader(path)
    assert [r["step"] for r in reader.read()] == [1]
    with path.open("a") as handle:
        handle.write('ss/x": 0.5}\nnot json\n')
    assert [r["step"] for r in reader.read()] == [1, 2] and reader.skipped == 1
    assert reader.read() == reader.records                     # nothing new: nothing parsed again


def test_a_100k_step_run_is_thinned_for_drawing(tmp_path):
    records = [{"step": i, "loss/g": float(i % 7)} for i in range(1, 100_001)]
    part = R.series(R.frame(records), "loss/g", smoothing=0.9, max_points=2000)
    assert len(part) <= 2001 and part["step"].iloc[-1] == 100_000


def test_paths_from_the_ui_stay_in_the_runs_directory(tmp_path):
    assert R.inside(tmp_path, "run-1") == (tmp_path / "run-1").resolve()
    for bad in ("../etc", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="outside the runs directory"):
            R.inside(tmp_path, bad)


def test_summary_reads_status_steps_and_the_best_metric(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "gan", "train": {"dataset": "digits"}}))
    (run / "status.json").write_text(json.dumps({"status": "finished", "step": 20, "total_steps": 20}))
    records = [{"step": 10, "eval/fid": 30.0}, {"step": 20, "eval/fid": 12.5}, {"step": 20, "loss/g": 1.0}]
    summary = R.summarize(run, records)
    assert (summary.status, summary.step, summary.family, summary.best) == ("finished", 20, "gan", "fid 12.5 @ 20")
    assert R.best_metric(records) == ("fid", 12.5, 20)
    assert R.discover(tmp_path) == [run]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.discover(tmp_path / "missing")
