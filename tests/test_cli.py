"""The command-line entry points, run as a user would (python -m ...), on the shipped checkpoints."""
import subprocess
import sys

import pytest

from conftest import ROOT, require_fashion


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_evaluate_prints_the_accuracy_vs_epsilon_table():
    require_fashion()
    result = run("core.evaluate", "checkpoints/classifier", "--limit", "300", "--epsilons", "0,0.1,0.3")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "0.1", "0.3"]
    clean, strong = (float(r.split("|")[2].strip(" %")) for r in (rows[0], rows[2]))
    assert clean > 85 and strong < clean


@pytest.mark.parametrize("args, message", [
    (["checkpoints/classifier", "--epsilons", "0,2"], "fractions of the pixel range"),
    (["checkpoints/classifier", "--epsilons", "a"], "must be numbers"),
    (["checkpoints/classifier", "--attacks", "cw"], "--attacks must come from"),
    (["checkpoints/nothing-here"], "not a checkpoint folder"),
])
def test_evaluate_rejects_bad_input_clearly(args, message):
    result = run("core.evaluate", *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_sample_explains_that_a_classifier_cannot_sample(tmp_path):
    result = run("core.sample", "checkpoints/classifier", "--out", str(tmp_path / "x.png"))
    assert result.returncode == 1 and "not a generative model" in result.stderr
    result = run("core.sample", "checkpoints/classifier", "--n", "0")
    assert result.returncode == 2 and "argument --n: must be from 1 to 1024, got 0" in result.stderr


def test_every_command_takes_threads_and_lists_its_choices_and_bounds():
    """core.evaluate and core.sample take --threads like core.train (refused below 0); core.train's --help lists a
    choice option's values and a number's bounds (the GAN's losses were once shown as a bare STR)."""
    for module in ("core.evaluate", "core.sample"):
        result = run(module, "checkpoints/classifier", "--threads", "-1")
        assert result.returncode == 2 and "argument --threads: must be at least 0, got -1" in result.stderr
    shown = " ".join(run("core.train", "gan", "--help").stdout.split())
    assert "--loss {bce,wgan-gp,r3gan,hinge}" in shown and "(default: 128; at least 1)" in shown


def test_evaluate_measures_a_checkpoint_on_the_data_it_was_trained_on(tmp_path, capsys):
    """Without --dataset, the checkpoint's own (its training.json); a different one is refused with the reason (a
    digits GAN once died on Fashion-MNIST in a matrix product, a digits classifier scored 16.5% there). In-process:
    the same main() functions the commands run."""
    from core import evaluate, train
    train.main(["classifier", "--dataset", "digits", "--max-steps", "30", "--batch-size", "64", "--eval-size", "100",
                "--runs-dir", str(tmp_path), "--run-name", "digits", "--cpu"])
    folder = tmp_path / "digits" / "model"                  # the exported Hub folder, with its training.json
    capsys.readouterr()
    evaluate.main([str(folder), "--limit", "200", "--epsilons", "0"])
    assert ", digits\n" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        evaluate.main([str(folder), "--dataset", "fashion-mnist"])
    assert "was trained on digits" in str(refused.value.code)


def test_evaluate_nll_prints_and_writes_the_models_own_bits_per_dim(tmp_path, capsys):
    """--nll: the mean of the model's own bits_per_dim over the test images (noise from one seeded generator) with
    its standard error and kind, printed as "N.NNN bits/dim" and, with --write, in eval.json and the card; a model
    with no likelihood of 8-bit images is refused with the reason."""
    import json
    import shutil

    import torch

    from core import evaluate
    from core.data import load_dataset
    from core.hub import load_model
    require_fashion()
    folder = tmp_path / "glow"
    shutil.copytree(ROOT / "checkpoints" / "glow", folder)
    capsys.readouterr()
    result = evaluate.main([str(folder), "--nll", "--limit", "40", "--write", "--threads", "1"])
    images = load_dataset("fashion-mnist", "test").batch(slice(0, 40)).images
    with torch.no_grad():
        bits = load_model(folder).bits_per_dim(images, generator=torch.Generator().manual_seed(0)).double()
    assert result["bits_per_dim"] == pytest.approx(float(bits.mean()), abs=1e-6)
    assert result["bits_per_dim_stderr"] == pytest.approx(float(bits.std() / 40 ** 0.5), abs=1e-6)
    assert f"{float(bits.mean()):.3f} bits/dim ± " in capsys.readouterr().out and result["bits_per_dim_kind"] == "bound"
    written = json.loads((folder / "eval.json").read_text())
    assert written["bits_per_dim"] == result["bits_per_dim"] and "fid" in written      # the other figures are kept
    for name, reason in (("vae", "not 'bernoulli'"), ("ddpm", "bench/likelihood_table.py")):
        with pytest.raises(SystemExit) as refused:
            evaluate.main([f"checkpoints/{name}", "--nll", "--limit", "4"])
        assert "--nll needs a flow, a PixelCNN or a VAE with a logistic decoder" in str(refused.value.code)
        assert reason in str(refused.value.code)
