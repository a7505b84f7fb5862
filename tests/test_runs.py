"""core.runs: reading run directories while the loop writes them."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def gan_eval(step: int, fid: float) -> dict:
    """One evaluation line of a GAN run: the yardstick's 15 figures (core.metrics.sample_quality)."""
    figures = {"fid": fid, "kid": fid / 1000, "kid_std": 1e-4, "precision": 0.6, "recall": 0.4, "fid_penultimate": fid,
               "kid_penultimate": 0.01, "kid_std_penultimate": 1e-4, "precision_penultimate": 0.7,
               "recall_penultimate": 0.3, "off_manifold": 0.02, "realism_median": 1.1, "copies": 0.0,
               "nearest_train_rms_median": 0.3, "classes_covered": 10, "smallest_class_share": 0.08,
               "kl_to_uniform": 0.01}
    return {"step": step, "time": step, **{f"eval/{k}": v for k, v in figures.items()}}


def train_line(step: int) -> dict:
    return {"step": step, "time": step, "elapsed": step, "lr": 2e-4, "images_per_s": 900.0, "data_share": 0.01,
            "loss/discriminator": 1.0, "loss/generator": 2.0}


def test_a_fresh_run_s_one_point_figures_are_a_table_not_charts():
    df = R.frame([train_line(10), train_line(20), gan_eval(20, 40.0)])
    plan = R.chart_plan({"fresh": df})
    assert plan.training == {"losses": ["loss/discriminator", "loss/generator"], "lr": ["lr"],
                             "images_per_s": ["images_per_s"]}
    assert plan.evaluation == {}                                         # 15 one-point charts before
    assert list(plan.single.columns) == ["name", "value", "step"] and len(plan.single) == 15
    fid = plan.single.set_index("name").loc["eval/fid"]
    assert (fid["value"], fid["step"]) == (40.0, 20)
    assert not {"eval/kid_std", "eval/kid_std_penultimate"} & set(plan.single["name"])   # KID's spread, not a figure


def test_evaluation_charts_are_grouped_by_unit():
    df = R.frame([train_line(10), gan_eval(10, 40.0), train_line(20), gan_eval(20, 30.0)])
    plan = R.chart_plan({"run": df})
    assert plan.single.empty
    assert plan.evaluation == {
        "FID": ["eval/fid", "eval/fid_penultimate"], "KID": ["eval/kid", "eval/kid_penultimate"],
        "shares (0 to 1)": ["eval/precision", "eval/recall", "eval/precision_penultimate", "eval/recall_penultimate",
                            "eval/off_manifold", "eval/copies", "eval/smallest_class_share"],
        "eval/realism_median": ["eval/realism_median"],
        "eval/nearest_train_rms_median": ["eval/nearest_train_rms_median"],
        "classes": ["eval/classes_covered"], "KL to uniform": ["eval/kl_to_uniform"]}
    assert R.eval_chart("eval/a2b_fid") == "FID" and R.eval_chart("eval/fgsm_accuracy_eps0.1") == "shares (0 to 1)"


def test_a_figure_with_two_points_in_one_of_the_overlaid_runs_is_charted():
    fresh = R.frame([train_line(10), gan_eval(10, 40.0)])              # one evaluation, one training line
    longer = R.frame([train_line(10), gan_eval(10, 40.0), train_line(20), gan_eval(20, 30.0)])
    plan = R.chart_plan({"fresh": fresh, "longer": longer})
    assert plan.evaluation["FID"] == ["eval/fid", "eval/fid_penultimate"] and plan.single.empty
    plan = R.chart_plan({"fresh": fresh, "also-fresh": fresh})
    assert list(plan.single.columns) == ["run", "name", "value", "step"]
    assert len(plan.single) == 2 * (15 + 4)                              # + lr, images/s and two losses


def status_run(tmp_path, **status) -> Path:
    run = tmp_path / "r"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps({"family": "gan", "train": {"dataset": "digits"}}))
    (run / "status.json").write_text(json.dumps({"status": "running", "step": 30, "total_steps": 100, **status}))
    return run


def test_a_running_status_whose_process_is_gone_is_stopped_at_once(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                                         # ended and reaped: its pid names no one
    run = status_run(tmp_path, pid=child.pid, host=socket.gethostname())
    summary = R.summarize(run, [{"step": 30, "time": time.time(), "images_per_s": 1.0}])
    assert summary.status == "stopped" and "step 30 of 100" in summary.error
    assert "saved no checkpoint" in summary.error and "--resume" not in summary.error
    assert ("error", f"stopped: {summary.error}") in R.health(R.frame([]), summary)
    (run / "checkpoints" / "step-0000020").mkdir(parents=True)
    (run / "checkpoints" / "step-0000020" / "training_state.json").write_text("{}")
    summary = R.summarize(run, [])
    assert f"checkpoint (step-0000020) with: python -m core.train gan --resume {run}" in summary.error


def test_a_live_process_or_one_on_another_host_keeps_the_quiet_time_rule(tmp_path):
    run = status_run(tmp_path, pid=os.getpid(), host=socket.gethostname())
    assert R.summarize(run, []).status == "running"
    assert R.summarize(run, [], now=time.time() + 3600).status == "stalled"     # alive but silent: hung
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    for other in ({"pid": child.pid, "host": socket.gethostname() + "-elsewhere"}, {}):   # no pid: an older run
        run = status_run(tmp_path, **other)
        assert R.summarize(run, []).status == "running"
        assert R.summarize(run, [], now=time.time() + 3600).status == "stalled"


def test_an_unreaped_killed_child_counts_as_gone(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        deadline = time.time() + 10                # killed, not yet waited for: a zombie that signal 0 still finds
        while not R.process_gone({"pid": child.pid, "host": socket.gethostname()}) and time.time() < deadline:
            time.sleep(0.05)
        assert R.process_gone({"pid": child.pid, "host": socket.gethostname()})
    finally:
        child.wait()


def test_sample_grids_are_enlarged_by_a_whole_factor_with_nearest_neighbour(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "step-0000010.png")
    shown = R.grid_for_display(tmp_path / "step-0000010.png", width=400)
    factor = 13                                                          # round(400 / 30)
    assert shown.size == (30 * factor, 20 * factor)
    np.testing.assert_array_equal(np.asarray(shown), np.kron(pixels, np.ones((factor, factor), dtype=np.uint8)))
    Image.fromarray(np.zeros((10, 900), np.uint8)).save(tmp_path / "wide.png")
    assert R.grid_for_display(tmp_path / "wide.png").size == (900, 10)   # never shrunk
    (tmp_path / "half.png").write_bytes(b"\x89PNG half a file")
    with pytest.raises(OSError):
        R.grid_for_display(tmp_path / "half.png")
