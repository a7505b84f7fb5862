"""What the bench scripts that measure a checkpoint for its card share (flow_quality.py, pixelcnn_quality.py,
vqvae_quality.py): a training run's newest checkpoint written as a Hub folder with its training facts, and the
sampling time. A run that is still training can be
exported: the loop writes each checkpoint whole before latest.json names it."""
import json
import statistics
import time
from pathlib import Path

from core.config import save_json
from core.hub import load_model

START_OPTIONS = ("dataset", "threads", "batch_size", "lr", "warmup_steps", "max_steps", "checkpoint_every",
                 "keep_checkpoints", "log_every")


def flag(name: str, value) -> str:
    return f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float) else f"--{name.replace('_', '-')} {value}"


def started_with(config: dict) -> str:
    """The command that started a run (a resumed run's config.json holds the --resume command instead: rebuilt
    from the saved training and model options)."""
    if "--resume" not in config.get("command", "--resume"):
        return config["command"]
    train, model = config["train"], config["model"]
    options = [flag(k, train[k]) for k in START_OPTIONS] + [flag(k, v) for k, v in model.items()]
    return (f"python -m core.train {config['family']} {' '.join(options)} --runs-dir {train['runs_dir']} "
            f"--run-name {train['run_name']}")


def export(run: Path, folder: Path, step: int | None = None) -> None:
    """The run's newest checkpoint (checkpoints/latest.json), or its kept checkpoint of `step`, as a Hub folder, with
    training.json: steps, training seconds, hardware, median images/s and the command that started the run."""
    root = run / "checkpoints"
    checkpoint = root / (f"step-{step:07d}" if step else json.loads((root / "latest.json").read_text())["folder"])
    if not checkpoint.is_dir():
        raise SystemExit(f"{run} keeps no checkpoint of step {step}: {', '.join(p.name for p in root.glob('step-*'))}")
    state = json.loads((checkpoint / "training_state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    load_model(checkpoint).exported().save_pretrained(folder)         # as the loop exports: no EMA copy, no teacher
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = sorted(r["images_per_s"] for r in records if "images_per_s" in r and r["step"] <= state["step"])
    save_json({"family": config["family"], "dataset": config["train"]["dataset"], "steps": state["step"],
               "seconds": round(state["elapsed"], 1), "hardware": config["hardware"],
               "images_per_s": speeds[len(speeds) // 2], "command": started_with(config),
               "train_config": config["train"]}, folder / "training.json")
    print(f"{folder}: step {state['step']}, {state['elapsed'] / 60:.0f} training minutes, from {checkpoint}")


def sampling_seconds(model, n: int = 64, repeats: int = 3) -> float:
    """Median wall time of drawing n images (after one warm-up draw)."""
    model.sample(n, seed=0)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        model.sample(n, seed=seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
