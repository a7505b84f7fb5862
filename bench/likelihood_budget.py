"""What a fixed CPU budget buys a likelihood model (a normalizing flow, a PixelCNN): for each run, the training bits/dim after equal training minutes
(from its metrics.jsonl), and the test bits/dim of the checkpoints it keeps with the run's size and training minutes.

    python bench/likelihood_budget.py ~/genlab-runs/flow/glow-k4-h64 ~/genlab-runs/flow/glow-k8-h128 [--eval-size 10000]
    python bench/likelihood_budget.py ~/genlab-runs/pixelcnn/h64-l8 ~/genlab-runs/pixelcnn/h32-l12

Runs are started with `python -m core.train FAMILY --threads 1 ...` (the model cards list the commands); this script
only reads their files, so it can run while they train. Bits/dim: the family's `test_bits_per_dim` (a flow: one
seeded draw of the dequantization noise per test image; a conditional PixelCNN: exact, given each image's label). A run keeps only its last checkpoints, so the figures at
equal minutes are the training loss itself (bits/dim of the training batches, the mean over the --window minutes
before each mark), which the test figures of the kept checkpoints calibrate (a loss spike shows in both).
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import load_dataset  # noqa: E402
from core.hub import load_model  # noqa: E402


SIZE_OPTIONS = ("kind", "dequantization", "steps", "hidden", "layers", "kernel", "num_classes")


def kept(run: Path) -> list[Path]:
    """The checkpoints a run still keeps (--keep-checkpoints: the newest few), oldest first."""
    return sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "training_state.json").is_file())


def measure(folder: Path, test) -> dict:
    run = folder.parents[1]
    state = json.loads((folder / "training_state.json").read_text())
    model = load_model(folder).eval()
    c = model.config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recent = [r["loss/bits_per_dim"] for r in records if state["step"] - 250 < r.get("step", -1) <= state["step"]
              and "loss/bits_per_dim" in r]
    size = {k: v for k, v in dataclasses.asdict(c).items() if k in SIZE_OPTIONS}
    return {"run": run.name, **size,
            "parameters": sum(p.numel() for p in model.parameters()), "steps": state["step"],
            "minutes": round(state["elapsed"] / 60, 1),
            "train_bpd_last_250_steps": round(sum(recent) / len(recent), 3) if recent else "-",
            "test_bpd": round(model.test_bits_per_dim(test), 3)}


def at_minutes(run: Path, minutes: list[float], window: float) -> dict[str, str]:
    """Steps and mean training bits/dim over the `window` minutes before each mark ("-" once past the run's end)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss/bits_per_dim" in r]
    cells = {}
    for mark in minutes:
        recent = [r for r in records if (mark - window) * 60 < r["elapsed"] <= mark * 60]
        done = records and records[-1]["elapsed"] >= mark * 60 - 60
        bpd = sum(r["loss/bits_per_dim"] for r in recent) / len(recent) if recent and done else None
        cells[f"{mark:g} min"] = f"{bpd:.3f} ({recent[-1]['step']:,} steps)" if bpd is not None else "-"
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eval-size", type=int, default=10_000)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", default="30,60,90,120,143", help="comma-separated training minutes to compare at")
    parser.add_argument("--window", type=float, default=10.0, help="minutes of training loss averaged at each mark")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes = [float(m) for m in args.minutes.split(",")]
    curves = [{"run": run.name, **at_minutes(run, minutes, args.window)} for run in args.runs]
    print(f"Training bits/dim (mean over the {args.window:g} minutes before each mark) after equal training minutes")
    print("| " + " | ".join(curves[0]) + " |\n" + "|---" * len(curves[0]) + "|")
    for row in curves:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print("\nTest bits/dim of each checkpoint a run keeps")
    test = load_dataset(args.dataset, "test")
    test = test.select(torch.arange(min(args.eval_size, len(test))))
    rows = [measure(folder, test) for run in args.runs for folder in kept(run)]
    print("| " + " | ".join(rows[0]) + " |\n" + "|---" * len(rows[0]) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
