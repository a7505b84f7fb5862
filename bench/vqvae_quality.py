"""The figures of a VQ-VAE checkpoint (core/models/vqvae.py) for its model card: test reconstruction MSE, codebook
perplexity and use, the prior's test bits per code, sampling time, and FID / precision / recall / off-manifold share /
classes of --samples samples on genlab's metric classifier.

    python bench/vqvae_quality.py checkpoints/vqvae --from-run ~/genlab-runs/vqvae/prior --samples 2000 --write

--from-run first writes the run's newest checkpoint into the folder as a Hub folder (bench/run_export.py: the prior's
steps, seconds, hardware, images/s and command), the notes of its training.json naming the autoencoder's run, read
from the folder the prior run started from with --init-from. A run still training can be exported.
Without --write the figures are printed and the grids (samples, reconstructions, worst and best samples) go to
--out; with it they go into the folder with eval.json, and the card is rewritten.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_export import export as run_export, sampling_seconds  # noqa: E402
from core.config import save_json  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.evaluate import extremes  # noqa: E402
from core.hub import load_model, metric_yardstick, write_model_card  # noqa: E402
from core.images import save_grid  # noqa: E402


def autoencoder_notes(command: str) -> str | None:
    """Where the frozen autoencoder came from: the stage-1 folder named by the prior run's --init-from (a run's
    model folder, or one of its checkpoints)."""
    words = command.split()
    if "--init-from" not in words:
        return None
    folder = Path(words[words.index("--init-from") + 1]).expanduser()
    if (folder / "training_state.json").is_file():                    # RUN/checkpoints/step-N
        state, run = json.loads((folder / "training_state.json").read_text()), folder.parent.parent
        facts = {"steps": state["step"], "seconds": state["elapsed"]}
        facts["command"] = json.loads((run / "config.json").read_text())["command"]
    elif (folder / "training.json").is_file():                        # RUN/model
        facts = json.loads((folder / "training.json").read_text())
    else:
        return f"The autoencoder (stage 1) is {folder}."
    return (f"Stage 1, the autoencoder: {facts['steps']:,} steps, {facts['seconds'] / 60:.0f} training minutes, "
            f"`{facts['command']}`. Stage 2, the prior, is the run described above (autoencoder frozen).")


def export(run: Path, folder: Path) -> None:
    """bench/run_export.py's Hub folder of the run's newest checkpoint, with the autoencoder's facts as notes."""
    run_export(run, folder)
    training = json.loads((folder / "training.json").read_text())
    command = json.loads((run / "config.json").read_text())["command"] or ""
    save_json({**training, "notes": autoencoder_notes(command)}, folder / "training.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--from-run", type=Path, help="first export this run's newest checkpoint into the folder")
    parser.add_argument("--samples", type=int, default=10_000, help="samples scored by the yardstick")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vqvae-quality"), help="grids, without --write")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_run:
        export(args.from_run, args.checkpoint)
    model, test = load_model(args.checkpoint).eval(), load_dataset("fashion-mnist", "test")
    figures = model.test_codes(test)
    print(", ".join(f"{k} {v:.4f}" for k, v in figures.items()), f"({len(test):,} test images)", flush=True)
    figures["sampling_seconds_64"] = sampling_seconds(model)
    print(f"64 samples in {figures['sampling_seconds_64']:.2f} s ({args.threads} thread)", flush=True)
    yardstick = metric_yardstick()
    samples, labels = model.evaluation_samples(args.samples)
    scores = yardstick.score(samples, labels, data=test)
    print(", ".join(f"{k} {v:.4g}" for k, v in scores.items() if isinstance(v, (int, float))),
          f"({args.samples:,} samples, seed 0)", flush=True)
    folder = args.checkpoint if args.write else args.out
    folder.mkdir(parents=True, exist_ok=True)
    save_grid(model.eval_images(test), folder / "samples.png", nrow=8, scale=2)
    save_grid(model.reconstruct_pairs(test.batch(torch.arange(32)).images), folder / "reconstructions.png", nrow=8,
              scale=2)
    extremes(yardstick, samples, test, 64, folder)
    print(f"grids in {folder}")
    if not args.write:
        return
    captions = {"reconstructions.png": "The first 32 test images, each row followed by its reconstruction D(z_q(x))",
                "worst.png": f"The 64 least realistic of the {args.samples:,} samples (realism, core.metrics; least "
                             "first): what the off-manifold share counts",
                "best.png": f"The 64 most realistic of the {args.samples:,} samples"}
    path = folder / "eval.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    save_json({**previous, **figures, **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
               "samples": args.samples, "figures": {**previous.get("figures", {}), **captions}}, path)
    write_model_card(folder)


if __name__ == "__main__":
    main()
