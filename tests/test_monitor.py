"""The Streamlit monitor (apps/monitor.py) on generated run directories, through streamlit's AppTest."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from test_runs import gan_eval

APP = str(ROOT / "apps" / "monitor.py")


def make_run(root: Path, name: str, steps: int = 10, status: str | None = "running", family: str = "gan",
             coverage: list[int] | None = None, grids: int = 2, every: int = 100, age: float = 0.0) -> Path:
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"family": family, "model": {"loss": name},
                                                 "train": {"dataset": "fashion-mnist", "lr": 2e-4}}))
    now = time.time() - age
    lines = []
    for i in range(1, steps + 1):
        lines.append({"step": i * every, "epoch": 0, "time": now - (steps - i), "elapsed": float(i), "lr": 2e-4,
                      "images_per_s": 1000.0 + i, "loss/discriminator": 1.0 / i, "loss/generator": 1.0 + i / 10})
    for k, covered in enumerate(coverage or []):
        lines.append({"step": (k + 1) * every, "time": now, "eval/fid": 50.0 / (k + 1), "eval/classes_covered": covered})
    (run / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    if status:
        (run / "status.json").write_text(json.dumps({"status": status, "step": steps * every,
                                                     "total_steps": 2 * steps * every, "error": "NonFiniteLoss: x"}))
    for g in range(grids):
        Image.new("L", (20, 20), 40 * g).save(run / "samples" / f"step-{(g + 1) * every:07d}.png")
    if age:
        for f in run.iterdir():
            os.utime(f, (now, now))
    return run


def app(runs_dir: Path) -> AppTest:
    os.environ["GENLAB_RUNS"] = str(runs_dir)          # what `-- --runs DIR` sets on the command line
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(autouse=True)
def _no_runs_env():
    yield
    os.environ.pop("GENLAB_RUNS", None)


@pytest.fixture
def runs_dir(tmp_path):
    make_run(tmp_path, "collapse-bce", coverage=[9, 10, 8, 7])
    make_run(tmp_path, "r3gan", coverage=[9, 10, 10], status="finished")
    make_run(tmp_path, "crashed", status="failed")
    make_run(tmp_path, "stalled", age=3600)
    return tmp_path


def test_runs_table_shows_every_run_with_its_status(runs_dir):
    at = app(runs_dir)
    table = at.dataframe[0].value
    status = dict(zip(table["run"], table["status"]))
    assert status == {"collapse-bce": "running", "r3gan": "finished", "crashed": "crashed", "stalled": "stalled"}
    assert dict(zip(table["run"], table["best"]))["collapse-bce"] == "fid 12.5 @ 400"


def test_curves_health_and_samples_for_a_collapsing_run(runs_dir):
    at = app(runs_dir)
    at.multiselect[0].set_value(["collapse-bce"]).run()
    assert not at.exception
    assert len(at.get("vega_lite_chart")) >= 5          # losses, lr, images/s, fid, classes covered (+ health)
    warnings = [w.value for w in at.warning]
    assert any("mode collapse: class coverage fell from 10 to 7" in w for w in warnings)
    assert any("D vs G balance" in i.value for i in at.info)
    assert len(at.get("image")) == 1 and at.select_slider[0].options == ["100", "200"]
    assert any("step **1000**" in m.value for m in at.markdown)


def test_several_runs_overlay_and_their_config_differences_are_marked(runs_dir):
    at = app(runs_dir)
    at.multiselect[0].set_value(["collapse-bce", "r3gan"]).run()
    configs = at.dataframe[1].value
    assert bool(configs.loc["model.loss", "differs"]) and not bool(configs.loc["train.lr", "differs"])
    assert any("crashed" not in m.value for m in at.markdown)


def test_crash_and_stall_warnings(runs_dir):
    at = app(runs_dir)
    at.multiselect[0].set_value(["crashed", "stalled"]).run()
    assert any("the run crashed: NonFiniteLoss" in e.value for e in at.error)
    assert any("stalled: nothing written for" in w.value for w in at.warning)


def test_missing_and_empty_runs_directories_give_messages(tmp_path):
    at = app(tmp_path / "nowhere")
    assert "does not exist" in at.error[0].value
    at = app(tmp_path)
    assert "No runs in" in at.warning[0].value


def test_a_run_with_no_metrics_no_images_and_a_corrupt_png(tmp_path):
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"family": "vae", "train": {"dataset": "digits"}}))
    broken = make_run(tmp_path, "broken", grids=1)
    (broken / "samples" / "step-0000100.png").write_bytes(b"\x89PNG half a file")
    at = app(tmp_path)
    at.multiselect[0].set_value(["fresh", "broken"]).run()
    assert not at.exception
    messages = [m.value for m in at.info] + [w.value for w in at.warning]
    assert any("No metrics logged yet" in m or "no sample grids yet" in m for m in messages)
    assert any("step-0000100.png could not be read" in m for m in messages)


def test_launching_is_off_by_default_and_can_start_and_stop_a_run(tmp_path, monkeypatch):
    make_run(tmp_path, "existing")
    at = app(tmp_path)
    assert any("off" in c.value for c in at.caption)
    monkeypatch.setenv("GENLAB_MONITOR_LAUNCH", "1")
    at = app(tmp_path)
    form_inputs = {w.label: w for w in at.text_input}
    form_inputs["run name"].set_value("launched")
    at.number_input[0].set_value(5)
    at.button[0].click().run()                            # the form's submit button: starts python -m core.train
    assert not at.exception
    assert any("`launched`: running" in m.value for m in at.markdown)
    stop = [b for b in at.button if b.label == "stop"][0]
    stop.click().run()
    assert any("`launched`: exited" in m.value for m in at.markdown)


def test_a_run_with_one_evaluation_shows_its_figures_as_a_table_not_15_charts(tmp_path):
    run = make_run(tmp_path, "one-eval", steps=10, grids=1)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(gan_eval(1000, 40.0)) + "\n")
    at = app(tmp_path)
    assert not at.exception
    assert len(at.get("vega_lite_chart")) == 4       # losses, lr, images/s; the health tab's coverage (19 before)
    single = [d.value for d in at.dataframe if "name" in d.value.columns][0]
    assert len(single) == 15 and dict(zip(single["name"], single["value"]))["eval/fid"] == 40.0
    assert at.get("image")[0].proto.imgs[0].url.endswith(".png")     # lossless: JPEG would blur the pixel blocks


def test_a_killed_run_shows_stopped_with_how_to_resume(tmp_path):
    run = make_run(tmp_path, "killed")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "pid": child.pid, "host": socket.gethostname()}))
    (run / "checkpoints" / "step-0000500").mkdir(parents=True)
    (run / "checkpoints" / "step-0000500" / "training_state.json").write_text("{}")
    at = app(tmp_path)
    assert dict(zip(at.dataframe[0].value["run"], at.dataframe[0].value["status"])) == {"killed": "stopped"}
    assert any(f"python -m core.train gan --resume {run}" in e.value for e in at.error)
