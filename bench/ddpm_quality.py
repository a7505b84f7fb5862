"""Sample quality of a DDPM checkpoint per sampler and guidance scale, for its model card.

    python bench/ddpm_quality.py checkpoints/ddpm [--n 10000] [--write]
    python bench/ddpm_quality.py checkpoints/ddpm-cond [--n 5000] [--n-other 2000] [--write]

Unconditional model: FID/KID, precision/recall, off-manifold share and class coverage of n samples for DDIM and DDPM
50 steps and DPM-Solver++ (ODE and SDE) 10 and 20 steps (a flow-matching model: Euler 10, Heun 10, Euler 20; an EDM
model: Euler 20, Heun 10 and 20, DPM-Solver++ 10 and 20; the model's own sampler with 20 steps is the headline),
against the Fashion-MNIST test set on the features of checkpoints/classifier (the figures of core.metrics).
Conditional model: the same for the default sampler with 20 steps at guidance scales 1, 2 and 4, plus conditional
accuracy (the classifier's agreement with the requested class; labels cycle 0..9). Autoguided model (a guide attached,
`python -m core.hub guide`): the unconditional rows at its own guidance scale, after its default sampler's 20 steps at
scales 1, 1.25, 1.5 and 2. Sampling runs the U-Net in bf16 autocast unless --fp32 (the scheduler arithmetic stays
float32). --write puts the rows into the checkpoint's eval.json (headline scalars: the default sampler's 20-step row
at the model's own guidance scale, eval_guidance for a guided model) and rewrites its card.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from core.config import save_json
from core.data import load_dataset
from core.evaluate import metric_yardstick
from core.hub import load_model, write_model_card
from core.schedulers import SCHEDULER_LABELS

COLUMNS = ("fid", "kid", "precision", "recall", "off_manifold", "classes_covered", "kl_to_uniform")
PERCENT = ("off_manifold", "conditional_accuracy")
ROWS = {"diffusion": [("ddim", 50), ("ddpm", 50), ("dpm_solver", 10), ("dpm_solver", 20), ("dpm_solver_sde", 10),
                      ("dpm_solver_sde", 20)],                      # (scheduler, steps); the model's own sampler
        "flow": [("euler", 10), ("heun", 10), ("euler", 20)],       # with 20 steps is the headline
        "edm": [("edm_euler", 20), ("edm_heun", 10), ("edm_heun", 20), ("edm_dpm_solver", 10),
                ("edm_dpm_solver", 20)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=10_000, help="samples for the headline row (default sampler, 20 steps)")
    parser.add_argument("--n-other", type=int, default=0, help="samples for the other rows (default: --n)")
    parser.add_argument("--fp32", action="store_true", help="run the U-Net in float32")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model = load_model(args.checkpoint).set_precision("no" if args.fp32 else "bf16")
    yardstick = metric_yardstick()
    test = load_dataset("fashion-mnist", "test")
    conditional = model.conditional
    kind = "flow" if model.flow else "edm" if model.edm else "diffusion"
    own = model.guidance_scale                                                  # the headline's guidance scale
    if conditional:
        rows = [(model.default_sampler, 20, w) for w in (1.0, 2.0, 4.0)]
    else:                  # an autoguided model: also its default sampler without guidance and at other scales
        scales = (1.0, 1.25, 1.5, 2.0) if model.guided else ()
        rows = ([(model.default_sampler, 20, w) for w in scales if w != own]
                + [(name, steps, own) for name, steps in ROWS[kind]])
    columns = COLUMNS + (("conditional_accuracy",) if conditional else ())
    lines = ["| sampler | steps | guidance | samples | " + " | ".join(columns) + " | seconds |",
             "|---" * (len(columns) + 5) + "|"]
    headline = {}
    for scheduler, steps, guidance in rows:
        name = SCHEDULER_LABELS[scheduler]
        is_headline = scheduler == model.default_sampler and steps == 20 and guidance == own
        n = args.n if is_headline or not args.n_other else args.n_other
        start = time.perf_counter()
        images = model.sample(n, steps, scheduler, seed=0, guidance_scale=guidance)
        seconds = time.perf_counter() - start
        scores = yardstick.score(images, model.labels_for(n, None), data=test)
        cells = [f"{100 * scores[c]:.2f}%" if c in PERCENT else f"{scores[c]:.4g}" for c in columns]
        lines.append(f"| {name} | {steps} | {guidance:g} | {n} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        print(lines[-1], flush=True)
        if is_headline:
            headline = {**scores, "samples": n, "sampler": f"{name} 20 steps", "guidance_scale": guidance}
    title = (f"Sample quality by sampler (U-Net in {'float32' if args.fp32 else 'bf16 autocast'}; seconds on "
             f"{torch.get_num_threads()} CPU thread(s))")
    table = "\n".join(lines)
    print(f"\n{title}\n{table}")
    if args.write:
        folder = Path(args.checkpoint)
        previous = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        save_json({**headline, "tables": {**previous.get("tables", {}), title: table}}, folder / "eval.json")
        write_model_card(folder)


if __name__ == "__main__":
    main()
