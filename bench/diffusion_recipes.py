"""Diffusion training recipes compared at equal training compute, and sample quality against sampling steps.

    python bench/diffusion_recipes.py RUN_DIR [RUN_DIR ...] [--n 2000]              # the recipe table
    python bench/diffusion_recipes.py checkpoints/ddpm --steps 1,2,4,10,20,50 [--n 2000]   # the few-step table

A RUN_DIR is a `python -m core.train ddpm ...` run directory (its final `model/` folder, or with --at STEP the
resumable checkpoint of that step) or any DDPM Hub folder. Every run of one table must have trained the same U-Net
for the same steps at the same batch size, so equal steps are equal compute; the minutes column is the run's own
wall clock (one CPU thread per run, two runs side by side).

Recipe table: one row per run and sampler setting (a diffusion model: DPM-Solver++ 20 steps with and without dynamic
thresholding; a flow-matching or EDM model: Euler 20 steps and Heun 10 steps, 19 network passes), with FID, precision,
recall and off-manifold share of n samples (seed 0) on the metric classifier's stage features (core.metrics), plus
conditional accuracy for a class-conditional model. Few-step table: one row per (sampler, steps), DDIM,
DPM-Solver++ (ODE and SDE) and UniPC without thresholding (flow matching and EDM: Euler and Heun; or the --samplers
named), with the seconds to draw 64 images on this machine's threads. A guided model (class-conditional, or autoguided) samples at its own guidance
scale, the config's eval_guidance (2 for a conditional one). The U-Net runs in bf16 autocast unless --fp32.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from core.data import load_dataset
from core.evaluate import metric_yardstick
from core.hub import load_model

COLUMNS = ("fid", "precision", "recall", "off_manifold")


def model_folder(path: Path, at: int | None) -> Path:
    if at is not None:
        return path / "checkpoints" / f"step-{at:07d}"
    return path / "model" if (path / "model" / "config.json").is_file() else path


def recipe(config: dict) -> str:
    if config["prediction_type"] == "flow_prediction":
        return f"flow matching, {config.get('time_sampling', 'uniform')} σ"
    if config["prediction_type"] == "edm":
        return f"EDM, log-normal σ, σ_d {config['sigma_data']:g}"
    snr = f", min-SNR-{config['snr_gamma']:g}" if config.get("snr_gamma") else ""
    zero = ", zero terminal SNR" if config.get("zero_terminal_snr") else ""
    return f"{config['prediction_type']}, {config['beta_schedule']}{zero}{snr}"


def sampler_settings(model) -> list[tuple[str, str, int, dict]]:
    """(label, scheduler, steps, options) of the recipe table's rows for one model, at about 20 network passes."""
    if model.flow:
        return [("Euler 20", "euler", 20, {}), ("Heun 10", "heun", 10, {})]
    if model.edm:
        return [("Heun 10", "edm_heun", 10, {}), ("Euler 20", "edm_euler", 20, {}),
                ("DPM-Solver++ 20", "edm_dpm_solver", 20, {})]
    return [("DPM-Solver++ 20", "dpm_solver", 20, {"thresholding": False}),
            ("DPM-Solver++ 20, thresholding", "dpm_solver", 20, {"thresholding": True})]


def few_step_samplers(model) -> tuple[str, ...]:
    if model.config.consistency:
        return ("lcm",)
    if model.flow:
        return ("euler", "heun")
    if model.edm:
        return ("edm_euler", "edm_heun", "edm_dpm_solver")
    return ("ddim", "dpm_solver", "dpm_solver_sde", "unipc")


def sampler_for(model, scheduler: str, options: dict | None = None):
    """DPM-Solver++ and UniPC without thresholding unless asked: the tables compare the network, not the
    thresholding."""
    x0_solver = scheduler.startswith("dpm_solver") or scheduler == "unipc"
    options = {"thresholding": False, **(options or {})} if x0_solver else (options or {})
    return model.scheduler(scheduler, **options)


def minutes(folder: Path) -> str:
    for candidate in (folder / "training.json", folder.parent.parent / "status.json"):
        if candidate.is_file():
            facts = json.loads(candidate.read_text())
            if "seconds" in facts:
                return f"{facts['seconds'] / 60:.0f}"
    return "?"


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(cells: list) -> str:
    return row(cells) + "\n" + "|---" * len(cells) + "|"


def score_row(model, yardstick, test, n: int, steps: int, scheduler: str, options: dict | None = None) -> list[str]:
    images = model.sample(n, steps, sampler_for(model, scheduler, options), seed=0)          # at its own guidance
    scores = yardstick.score(images, model.labels_for(n, None), data=test)
    cells = [f"{scores[c]:.3f}" if c != "off_manifold" else f"{100 * scores[c]:.1f}%" for c in COLUMNS]
    if model.conditional:
        cells.append(f"{100 * scores['conditional_accuracy']:.1f}%")
    return cells


def seconds_for_64(model, steps: int, scheduler: str) -> float:
    model.sample(64, steps, sampler_for(model, scheduler), seed=1)                  # warm-up
    start = time.perf_counter()
    model.sample(64, steps, sampler_for(model, scheduler), seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--at", type=int, default=None, help="use each run's resumable checkpoint of this step")
    parser.add_argument("--steps", default="", help="comma-separated step counts: the few-step table instead")
    parser.add_argument("--fp32", action="store_true", help="run the U-Net in float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--samplers", default="", help="few-step table: comma-separated scheduler names (default: "
                                                       "the family's, e.g. ddim,dpm_solver,dpm_solver_sde,unipc)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    yardstick, test = metric_yardstick(), load_dataset("fashion-mnist", "test")
    extra = ["conditional accuracy"]
    if args.steps:
        model = load_model(model_folder(args.runs[0], args.at)).set_precision("no" if args.fp32 else "bf16")
        print(f"{args.runs[0]}: {recipe(vars(model.config))}, {args.n} samples, {torch.get_num_threads()} threads")
        print(header(["sampler", "steps", *COLUMNS, *(extra if model.conditional else []), "s / 64 images"]))
        for steps in (int(s) for s in args.steps.split(",")):
            for scheduler in (args.samplers.split(",") if args.samplers else few_step_samplers(model)):
                cells = score_row(model, yardstick, test, args.n, steps, scheduler)
                print(row([scheduler, steps, *cells, f"{seconds_for_64(model, steps, scheduler):.2f}"]), flush=True)
        return
    print(header(["run", "recipe", "training steps", "minutes", "sampler", *COLUMNS, *extra]))
    for run in args.runs:
        folder = model_folder(run, args.at)
        model = load_model(folder).set_precision("no" if args.fp32 else "bf16")
        steps = args.at or json.loads((folder / "training.json").read_text()).get("steps", "?")
        for label, scheduler, sampler_steps, options in sampler_settings(model):
            cells = score_row(model, yardstick, test, args.n, sampler_steps, scheduler, options)
            print(row([run.name, recipe(vars(model.config)), steps, minutes(folder), label, *cells,
                       *([] if model.conditional else ["-"])]), flush=True)


if __name__ == "__main__":
    main()
