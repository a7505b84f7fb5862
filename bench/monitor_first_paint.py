"""First paint and refresh of the monitor for a 100k-step run (issue: monitor robustness).

    python bench/monitor_first_paint.py [--steps 100000]

Writes a synthetic GAN run with --steps logged lines (losses, lr, images/s) and an evaluation every 1000 steps,
then times streamlit's AppTest: the first script run (read + parse all lines, thin to 2000 points, build the
charts) and a refresh after 100 more lines are appended (the incremental reader parses only those).
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "monitor.py")


def write_run(root: Path, steps: int) -> Path:
    run = root / "big-run"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"family": "gan", "model": {}, "train": {"dataset": "fashion-mnist"}}))
    now = time.time()
    with (run / "metrics.jsonl").open("w") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "epoch": step // 1000, "time": now - steps + step,
                                     "elapsed": float(step), "lr": 2e-4, "images_per_s": 1000.0,
                                     "loss/discriminator": 1 + 0.1 * (step % 13), "loss/generator": 2.0}) + "\n")
            if step % 1000 == 0:
                handle.write(json.dumps({"step": step, "time": now, "eval/fid": 1e4 / step,
                                         "eval/classes_covered": 10}) + "\n")
    (run / "status.json").write_text(json.dumps({"status": "running", "step": steps, "total_steps": 2 * steps}))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), args.steps)
        os.environ["GENLAB_RUNS"] = tmp
        at = AppTest.from_file(APP, default_timeout=120)
        start = time.perf_counter()
        at.run()
        first = time.perf_counter() - start
        assert not at.exception, at.exception
        charts = len(at.get("vega_lite_chart"))
        with (run / "metrics.jsonl").open("a") as handle:
            for step in range(args.steps + 1, args.steps + 101):
                handle.write(json.dumps({"step": step, "time": time.time(), "loss/discriminator": 1.0}) + "\n")
        start = time.perf_counter()
        at.run()
        refresh = time.perf_counter() - start
    print(f"{args.steps} logged steps: first paint (script run) {first:.2f} s with {charts} charts; "
          f"refresh after 100 appended lines {refresh:.2f} s")


if __name__ == "__main__":
    main()
