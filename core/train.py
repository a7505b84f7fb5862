"""The one training loop. Every family trains here through the contract of core.model; the loop knows no paper.

A model brings `configure_optimizers`, `training_step(batch, step) -> {name: loss}` (it does its own forward passes
and optimizer steps, since a GAN has two), and optionally `evaluate(data, yardstick)` and `eval_images(data)`. The
loop finds the family's class in core.families and brings everything else: the precision (`--mixed-precision`, set
on the model and entered around every training step), devices and processes (Hugging Face Accelerate), data order,
learning-rate schedule, logging to metrics.jsonl, image grids, atomic resumable checkpoints, and the final Hub-layout
model folder.

Several processes (`accelerate launch --num_processes 2 -m core.train ...`) are plain data parallelism: each process
draws its own 1/P of every batch, and `optimizer_step` averages the gradients over processes before each optimizer
step, so all copies stay equal. The averaging is explicit rather than a DistributedDataParallel wrapper because a family may
own several networks and several optimizers per step (G and D); only process 0 writes files.

Run directory:  config.json  metrics.jsonl  status.json  samples/step-*.png
                checkpoints/step-*/ (+ latest.json)      model/  (the final Hub folder with its model card)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor
from tqdm.auto import tqdm

from core.cards import write_model_card
from core.checkpoint import read_class_name
from core.config import TrainConfig, add_options, from_json, pick_options, save_json, to_json
from core.data import Batch, ImageData, load_dataset, perturbed
from core.families import FAMILIES
from core.hub import metric_yardstick
from core.images import save_grid
from core.model import TrainableModel
from core.resume import latest_checkpoint, load_checkpoint, save_checkpoint
from core.runs import METRICS_FILE, RUN_CONFIG, SAMPLES, STATUS_FILE


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf: the run stops before any checkpoint of poisoned weights is written."""


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then constant, cosine decay to 0 (Loshchilov & Hutter 2017, without restarts), or linear."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "linear":         # Zhu et al. 2017, Sec. 7: constant, then linear decay to 0
        return min(1.0, 2.0 * (1.0 - progress))
    return 1.0


# ------------------------------------------------------------------------------------------- resumable checkpoints
# ------------------------------------------------------------------------------------------------------ the loop
class LogWindow:
    """Losses and throughput since the last metrics.jsonl line. Sums stay tensors until a line is written, so the
    loop never waits on .item() between steps; evaluation and checkpoint time is paused out of images/s."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.started, self.data_seconds, self.images, self.paused = time.perf_counter(), 0.0, 0, 0.0

    def add(self, losses: dict[str, Tensor], images: int) -> None:
        for name, value in losses.items():               # a GAN's generator may skip steps: count per name
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
        self.images += images

    def check_finite(self, step: int) -> None:
        for name, total in self.sums.items():
            if not math.isfinite(float(total)):
                raise NonFiniteLoss(f"{name} is {float(total)} at step {step}: stopping without writing a checkpoint. "
                                    "Try a lower --lr; resume from the last good checkpoint with --resume.")

    def record(self, step: int, epoch: int, elapsed: float, lr: float) -> dict:
        """Mean losses, images/s and the share of time spent fetching data; then a fresh window."""
        self.check_finite(step)
        seconds = time.perf_counter() - self.started - self.paused
        record = {"step": step, "epoch": epoch, "time": time.time(), "elapsed": round(elapsed, 3), "lr": lr,
                  "images_per_s": round(self.images / seconds, 1), "data_share": round(self.data_seconds / seconds, 4),
                  **{name: float(total) / self.counts[name] for name, total in self.sums.items()}}
        self.reset()
        return record


def set_learning_rates(optimizers: dict, factor: float) -> None:
    """Each param group keeps its own peak (a GAN's discriminator lr ratio) and follows the schedule's factor."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def train(model: TrainableModel, cfg: TrainConfig, family: str, resume: Path | None = None,
          data: ImageData | None = None, eval_data: ImageData | None = None, command: str | None = None) -> Path:
    """Train `model` with `cfg`; returns the run directory. `resume` continues a run from its last checkpoint."""
    accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())   # cpu=True: gloo across processes
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed + accelerator.process_index)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    data, eval_data = training_data(cfg, data, eval_data, model.training_subset)
    model.check_data(data)
    per_process, steps_per_epoch, total = schedule(cfg, len(data), world)
    run_dir = Path(resume) if resume else Path(cfg.runs_dir) / (cfg.run_name or f"{family}-{time.strftime('%Y%m%d-%H%M%S')}")
    optimizers = place(model, cfg, accelerator)
    step, elapsed_before = load_checkpoint(latest_checkpoint(run_dir), model, optimizers, accelerator) if resume else (0, 0.0)
    if resume and has_finished(run_dir, step, total, main):
        return run_dir
    if main:
        (run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
        save_json({"family": family, "model": model.config_dict(), "train": to_json(cfg), "num_processes": world,
                   "command": command, "hardware": hardware(accelerator)}, run_dir / RUN_CONFIG)
        write_status(run_dir, "running", step, total_steps=total)
    log = (run_dir / METRICS_FILE).open("a") if main else None
    start = time.perf_counter() - elapsed_before
    window = LogWindow()
    bar = tqdm(total=total, initial=step, disable=not main, desc=run_dir.name, dynamic_ncols=True)
    try:
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            batches = data.batches(per_process, cfg.seed, epoch, rank, world, start=skip)
            for batch in timed(batches, window, accelerator.device):
                set_learning_rates(optimizers, lr_factor(cfg, step, total))
                model.train()
                window.add(model.run_training_step(perturbed_batch(batch, cfg, step), step), len(batch.images) * world)
                step += 1
                bar.update(1)
                last = step == total
                if step % cfg.log_every == 0 or last:
                    record = window.record(step, epoch, time.perf_counter() - start,
                                           cfg.lr * lr_factor(cfg, step - 1, total))
                    write_log(log, bar, record)
                pause = time.perf_counter()
                if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                    evaluate_and_log(model, eval_data, run_dir, step, log, accelerator)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last:
                    window.check_finite(step)
                    save_checkpoint(run_dir, model, optimizers, step, time.perf_counter() - start, accelerator,
                                    cfg.keep_checkpoints)
                window.paused += time.perf_counter() - pause
                if last:
                    break
        if main:
            export_model(model, run_dir, family, cfg, step, time.perf_counter() - start, accelerator, command)
            write_status(run_dir, "finished", step, total_steps=total)
    except BaseException as exc:
        if main:
            write_status(run_dir, "failed", step, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        close_run(model, bar, log, accelerator)
    return run_dir


def has_finished(run_dir: Path, step: int, total: int, main: bool) -> bool:
    """A resumed run that has trained all its steps and exported its model: said, and left as it is."""
    if step < total or not (run_dir / "model").is_dir():
        return False
    if main:
        print(f"{run_dir} has finished: step {step} of {total}, its model is in {run_dir / 'model'}. Nothing to "
              "train; to go on, resume with a larger --max-steps or --epochs.", file=sys.stderr)
    return True


def place(model: TrainableModel, cfg: TrainConfig, accelerator: Accelerator) -> dict:
    """The model on the run's device, in its memory format and precision; returns its optimizers."""
    model.to(accelerator.device, memory_format=torch.channels_last if model.channels_last else torch.contiguous_format)
    model.accelerator = accelerator
    model.set_precision(cfg.mixed_precision)       # (not Accelerator's option: its state is process-global)
    return model.configure_optimizers(cfg)


def perturbed_batch(batch: Batch, cfg: TrainConfig, step: int) -> Batch:
    """The batch as trained on: with --perturb, its pixels perturbed (core.data.perturbed) by noise seeded by the
    step, so that a resumed run sees the same batches."""
    if not cfg.perturb:
        return batch
    noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return Batch(perturbed(batch.images, cfg.perturb, noise), batch.labels, batch.inputs)


def timed(batches, window: LogWindow, device) -> Iterator[Batch]:
    """The batches moved to `device`, the time spent fetching each added to the window's data time."""
    while True:
        fetch = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        batch = batch.to(device)
        window.data_seconds += time.perf_counter() - fetch
        yield batch


def write_status(run_dir: Path, status: str, step: int, **details) -> None:
    """status.json: running, finished or failed, at which step, and the process writing it (pid and host): a run
    killed before it could write "failed" (kill -9, out of memory) still says "running", and the monitor
    (core.runs.process_gone) sees at once that its process is gone."""
    save_json({"status": status, "step": step, **details, "pid": os.getpid(), "host": socket.gethostname(),
               "time": time.time()}, run_dir / STATUS_FILE)


def close_run(model: TrainableModel, bar, log, accelerator: Accelerator) -> None:
    bar.close()
    model.to(memory_format=torch.contiguous_format)     # back to the layout a loaded model has (dropout masks and
                                                        # noise are drawn in memory order)
    if log:
        log.close()
    accelerator.wait_for_everyone()


def schedule(cfg: TrainConfig, images: int, world: int) -> tuple[int, int, int]:
    """(images per process per step, steps per epoch, steps in all) of a run over `images` on `world` processes."""
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    per_process = cfg.batch_size // world
    steps_per_epoch = images // world // per_process
    if steps_per_epoch == 0:
        raise ValueError(f"{images} training images are fewer than one batch of {cfg.batch_size}")
    return per_process, steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch


def training_data(cfg: TrainConfig, data: ImageData | None, eval_data: ImageData | None,
                  subset=lambda data: data) -> tuple[ImageData, ImageData]:
    """The training set and the first eval_size test images (of the model's `subset`), unless given."""
    classes = [int(c) if c.isdigit() else c for c in cfg.classes.split(",")] if cfg.classes else None
    folder = {"size": cfg.folder_image_size, "channels": cfg.folder_channels}
    data = data or load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.pad_to, classes, **folder)
    eval_data = subset(eval_data or load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.pad_to, classes, **folder))
    return subset(data), eval_data.select(torch.arange(min(cfg.eval_size, len(eval_data))))


def write_log(log, bar, record: dict) -> None:
    if log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss")})


def evaluate_and_log(model: TrainableModel, data: ImageData, run_dir: Path, step: int, log, accelerator: Accelerator) -> dict:
    """Process 0 evaluates (with the metric classifier's yardstick, for the families that score images) and writes;
    the others wait for it."""
    metrics = {}
    if accelerator.is_main_process:
        model.eval()
        yardstick = metric_yardstick() if model.uses_yardstick else None
        if yardstick is not None and not yardstick.fits(data.image_shape):
            yardstick = None                               # e.g. RGB images: no sample-quality figures
        with torch.no_grad(), torch.random.fork_rng():     # evaluation must not shift the training RNG stream
            metrics = model.evaluate(data, yardstick)
            images = model.eval_images(data)
        if images is not None:
            save_grid(images, run_dir / SAMPLES / f"step-{step:07d}.png", nrow=getattr(model, "grid_columns", None))
        log.write(json.dumps({"step": step, "time": time.time(), **{f"eval/{k}": v for k, v in metrics.items()}}) + "\n")
        log.flush()
    accelerator.wait_for_everyone()
    return metrics


def hardware(accelerator: Accelerator) -> str:
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    return f"{accelerator.num_processes} x {name}, {torch.get_num_threads()} threads/process"


def export_model(model: TrainableModel, run_dir: Path, family: str, cfg: TrainConfig, step: int, seconds: float,
                 accelerator: Accelerator, command: str | None) -> Path:
    """The final model as a Hub folder: weights, config, training facts, evaluation, sample grid, model card."""
    folder = run_dir / "model"
    model.exported().save_pretrained(folder)
    metrics = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    throughput = sorted(m["images_per_s"] for m in metrics if "images_per_s" in m)
    save_json({"family": family, "dataset": cfg.dataset, "steps": step, "seconds": round(seconds, 1),
               "hardware": hardware(accelerator), "images_per_s": throughput[len(throughput) // 2] if throughput else None,   # median
               "command": command,
               "train_config": to_json(cfg)}, folder / "training.json")
    evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
    if evals:
        save_json({k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")}, folder / "eval.json")
    grids = sorted((run_dir / SAMPLES).glob("step-*.png"))
    if grids:
        shutil.copy(grids[-1], folder / "samples.png")
    write_model_card(folder)
    return folder


# ------------------------------------------------------------------------------------------------------ the CLI
def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m core.train", description="Train a genlab model family.")
    sub = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in FAMILIES:
        cls = FAMILIES[family]
        family_parser = sub.add_parser(family, help=(cls.__doc__ or "").strip().splitlines()[0],
                                       description=sys.modules[cls.__module__].__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        family_parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                                   help="continue RUN_DIR from its last checkpoint; given options override its config")
        family_parser.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                                   help="fine-tune: start from the weights of a saved model of this family (a Hub "
                                        "folder, e.g. checkpoints/ddpm); its options are the defaults")
        add_options(family_parser, TrainConfig, "training options")
        add_options(family_parser, cls.config_class, f"{family} options")
    args = parser.parse_args(argv)
    cls = FAMILIES[args.family]
    train_base = model_base = None
    if args.resume:
        saved = json.loads((args.resume / RUN_CONFIG).read_text())
        if saved["family"] != args.family:
            parser.error(f"{args.resume} is a {saved['family']} run, not {args.family}")
        train_base = from_json(TrainConfig, saved["train"])
        model_base = from_json(cls.config_class, saved["model"])
    start = None
    if args.init_from:
        if args.resume:
            parser.error("--init-from starts a new run; --resume continues one: give one of them")
        if read_class_name(args.init_from) != cls.__name__:
            parser.error(f"{args.init_from} holds a {read_class_name(args.init_from)}, not a {cls.__name__}")
        start = cls.from_pretrained(args.init_from)
        model_base = start.fine_tuning_config()
    cfg = pick_options(args, TrainConfig, train_base)
    data, _ = training_data(cfg, None, None)            # the shape for the model; train() selects the test images
    model_cfg = pick_options(args, cls.config_class, model_base or shaped_like(cls.config_class, data.image_shape))
    torch.manual_seed(cfg.seed)
    model = cls(model_cfg)
    if start is not None:
        model.init_from(start)
    return train(model, cfg, args.family, resume=args.resume, data=data,
                 command="python -m core.train " + " ".join(argv))


def shaped_like(config_class, shape: tuple[int, int, int]):
    """The family's default config with `channels` and a square `image_size` taken from the data's (C, H, W)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    sizes = {"channels": shape[0]} if "channels" in fields else {}
    if "image_size" in fields and shape[1] == shape[2]:
        sizes["image_size"] = shape[1]
    return config_class(**sizes)


if __name__ == "__main__":
    try:
        print(main())
    except (NonFiniteLoss, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
