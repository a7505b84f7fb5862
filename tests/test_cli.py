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
