"""A consistency student (core/models/consistency.py) against its teacher: quality and time at few steps.

    python bench/consistency_quality.py STUDENT [STUDENT ...] --teacher checkpoints/ddpm [--steps 1,2,4] [--n 10000]
                                        [--threads 2] [--write]

A STUDENT is a Hub folder or RUN_DIR@STEP, a training run's kept checkpoint of that step (the pilots at equal
minutes). Rows: each student with consistency sampling (LCM) at each of --steps, then the teacher at its own
sampler and steps (its card's setting: DPM-Solver++ SDE 40 for `ddpm`) and with DPM-Solver++ (ODE) at the
students' step counts, all in one process: FID, precision, recall and off-manifold share of n samples (seed 0) on
the metric classifier's features (core.metrics), FID relative to the teacher's own row, and the median wall time
of 64 images (bf16 autocast where the CPU has it, as the sampler app runs) with its ratio to the teacher's.
--write (one Hub folder student): the table into its eval.json and card.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import save_json  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.evaluate import metric_yardstick  # noqa: E402
from core.hub import load_model, write_model_card  # noqa: E402
from core.model import fast_precision  # noqa: E402
from core.schedulers import SCHEDULER_LABELS  # noqa: E402

COLUMNS = ("fid", "precision", "recall", "off_manifold")


def student_folder(spec: str) -> tuple[str, Path]:
    """(label, folder) of a Hub folder or RUN_DIR@STEP."""
    if "@" in spec:
        run, step = spec.rsplit("@", 1)
        return f"{Path(run).name} @ {int(step)}", Path(run) / "checkpoints" / f"step-{int(step):07d}"
    return Path(spec).name, Path(spec)


def seconds_for_64(model, steps: int, scheduler: str) -> float:
    model.sample(64, steps, scheduler, seed=1)                                      # warm-up
    times = []
    for seed in range(3):
        start = time.perf_counter()
        model.sample(64, steps, scheduler, seed=seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, steps: int, scheduler: str, n: int, yardstick, test) -> dict:
    scores = yardstick.score(model.sample(n, steps, scheduler, seed=0), data=test)
    return {**{c: scores[c] for c in COLUMNS}, "seconds_64": seconds_for_64(model, steps, scheduler)}


def row(label: str, scheduler: str, steps: int, m: dict, teacher: dict) -> str:
    return (f"| {label} | {SCHEDULER_LABELS[scheduler]} | {steps} | {m['fid']:.3f} | {m['fid'] / teacher['fid']:.2f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {100 * m['off_manifold']:.2f}% | {m['seconds_64']:.2f} | "
            f"{m['seconds_64'] / teacher['seconds_64']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("students", nargs="+")
    parser.add_argument("--teacher", default="checkpoints/ddpm")
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    yardstick, test = metric_yardstick(), load_dataset("fashion-mnist", "test")
    teacher = load_model(args.teacher).set_precision(fast_precision())
    own = measure(teacher, teacher.config.eval_steps, teacher.default_sampler, args.n, yardstick, test)
    lines = ["| model | sampler | steps | FID | FID / teacher's | precision | recall | off-manifold | s / 64 images "
             "| time / teacher's |", "|---" * 10 + "|",
             row(f"{Path(args.teacher).name} (teacher)", teacher.default_sampler, teacher.config.eval_steps, own, own)]
    print(lines[0], lines[1], lines[2], sep="\n", flush=True)
    for k in steps:
        lines.append(row(f"{Path(args.teacher).name} (teacher)", "dpm_solver", k,
                         measure(teacher, k, "dpm_solver", args.n, yardstick, test), own))
        print(lines[-1], flush=True)
    for spec in args.students:
        label, folder = student_folder(spec)
        student = load_model(folder).set_precision(fast_precision())
        for k in steps:
            lines.append(row(label, "lcm", k, measure(student, k, "lcm", args.n, yardstick, test), own))
            print(lines[-1], flush=True)
    title = (f"Few steps against the teacher ({args.n} samples per row, seed 0; seconds for 64 images on "
             f"{torch.get_num_threads()} CPU threads, {fast_precision()} networks): `python "
             f"bench/consistency_quality.py {' '.join(args.students)} --teacher {args.teacher} --steps {args.steps} "
             f"--n {args.n}`")
    if args.write:
        folder = Path(args.students[0])
        previous = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        save_json({**previous, "tables": {**previous.get("tables", {}), title: "\n".join(lines)}}, folder / "eval.json")
        write_model_card(folder)


if __name__ == "__main__":
    main()
