import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import fields, replace

import numpy as np
import pytest
import safetensors.torch
import torch

import core.resume
from conftest import ROOT, require_fashion
from core.config import TrainConfig
from core.hub import load_model
from core.models.classifier import Classifier, ClassifierConfig
from core.models.gan import GAN, GANConfig
from core.resume import latest_checkpoint
from core.runs import summarize
from core.train import NonFiniteLoss, lr_factor, main, train, write_status


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loop_trains_and_writes_a_run_directory(tiny_config):
    cfg = replace(tiny_config, max_steps=80, log_every=20, eval_every=40, checkpoint_every=40, eval_size=359)
    run_dir = train(Classifier(), cfg, "classifier")
    metrics = read_metrics(run_dir)
    logs = [m for m in metrics if "loss/train" in m]
    evals = [m for m in metrics if "eval/accuracy" in m]
    assert [m["step"] for m in logs] == [20, 40, 60, 80] and [m["step"] for m in evals] == [40, 80]
    for key in ("epoch", "time", "elapsed", "lr", "images_per_s", "data_share", "accuracy/train"):
        assert key in logs[0]
    assert logs[-1]["loss/train"] < logs[0]["loss/train"] - 0.5        # it learns: ~2.2 -> well under 1.7
    assert evals[-1]["eval/accuracy"] > 0.35       # 10 classes: chance is 0.1 (0.48 on an AMD EPYC, 0.5+ elsewhere)
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-0000040.png", "step-0000080.png"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["family"] == "classifier" and saved["train"]["max_steps"] == 80
    model = load_model(run_dir / "model")
    assert isinstance(model, Classifier) and (run_dir / "model" / "README.md").read_text().startswith("---")
    assert json.loads((run_dir / "model" / "eval.json").read_text())["accuracy"] == evals[-1]["eval/accuracy"]


class CrashAt(Classifier):
    """A classifier whose run dies (like a kill) just before the given step."""
    crash_step = 9

    def training_step(self, batch, step):
        if step == self.crash_step:
            raise KeyboardInterrupt("simulated kill")
        return super().training_step(batch, step)


def seeing(model):
    """The model, keeping the images of every batch it trains on in `model.seen` (its class stays a Classifier)."""
    model.seen, step_of = [], model.training_step
    model.training_step = lambda batch, step: model.seen.append(batch.images.clone()) or step_of(batch, step)
    return model


def test_a_background_run_trains_on_perturbed_pixels_the_same_way_every_time(tiny_config):
    """--perturb r (Ren et al. 2019): about r·255/256 of the pixels differ from the clean run's batches, each on one of
    the 256 levels, and a second run with the same seed sees the same batches (resuming does too: the noise is
    seeded by the step)."""
    runs = {}
    for name, rate in (("clean", 0.0), ("background", 0.3), ("again", 0.3)):
        runs[name] = seeing(Classifier())
        train(runs[name], replace(tiny_config, run_name=name, perturb=rate), "classifier")
    clean, background = torch.cat(runs["clean"].seen), torch.cat(runs["background"].seen)
    assert all(torch.equal(a, b) for a, b in zip(runs["background"].seen, runs["again"].seen))
    changed = float((clean != background).float().mean())
    assert abs(changed - 0.3 * 255 / 256) < 0.02
    levels = (background + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)


def test_resumed_run_reaches_the_same_weights(tiny_config, tmp_path):
    straight = Classifier()
    train(straight, replace(tiny_config, run_name="straight"), "classifier")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(CrashAt(), replace(tiny_config, run_name="crashed"), "classifier")
    run_dir = tmp_path / "crashed"
    assert latest_checkpoint(run_dir).name == "step-0000006"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    torch.manual_seed(123)                        # the resumed model's fresh init must not matter
    resumed = Classifier()
    train(resumed, replace(tiny_config, run_name="crashed"), "classifier", resume=run_dir)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [m["step"] for m in read_metrics(run_dir) if "loss/train" in m]
    assert steps == [4, 8, 8, 12]                 # 8 logged before the kill, then again after resuming from 6


def test_a_crash_during_a_checkpoint_write_keeps_the_previous_one(tiny_config, tmp_path, monkeypatch):
    real_save = safetensors.torch.save_file
    calls = []

    def dying_save(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:            # calls: step 6 weights, step 6 state, step 12 weights: dies mid-write
            real_save(tensors, path, *args, **kwargs)
            with open(path, "r+b") as f:
                f.truncate(100)
            raise KeyboardInterrupt("killed while writing")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(core.resume.safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(Classifier(), tiny_config, "classifier")
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert latest_checkpoint(run_dir).name == "step-0000006"
    assert (run_dir / "checkpoints" / ".tmp-step-0000012").exists()        # the half-written one, never renamed
    assert isinstance(load_model(latest_checkpoint(run_dir)), Classifier)
    train(Classifier(), tiny_config, "classifier", resume=run_dir)         # and the run can go on from it
    assert latest_checkpoint(run_dir).name == "step-0000012"


def test_non_finite_loss_stops_before_a_checkpoint(tiny_config, tmp_path):
    cfg = replace(tiny_config, lr=1e30)          # Adam moves every weight by ~1e30: the logits overflow
    with pytest.raises(NonFiniteLoss, match=r"loss/train is (nan|inf) at step 4"):
        train(Classifier(), cfg, "classifier")
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))
    assert "NonFiniteLoss" in json.loads((tmp_path / "run" / "status.json").read_text())["error"]


def test_status_names_the_training_process_and_its_host(tmp_path):
    write_status(tmp_path, "running", 3, total_steps=10)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "running" and (status["pid"], status["host"]) == (os.getpid(), socket.gethostname())


def test_a_run_killed_with_sigkill_reads_as_stopped_at_once(tmp_path):
    """kill -9 leaves status.json saying "running"; the monitor sees its process is gone (no 5-minute wait)."""
    run = tmp_path / "killed"
    command = ["classifier", "--dataset", "digits", "--max-steps", "100000", "--checkpoint-every", "5", "--runs-dir",
               str(tmp_path), "--run-name", "killed", "--cpu", "--threads", "1"]
    process = subprocess.Popen([sys.executable, "-m", "core.train", *command], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "latest.json").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert summarize(run, []).status == "running"
    finally:
        process.kill()
        process.wait()
    summary = summarize(run, [])
    assert summary.status == "stopped" and f"--resume {run}" in summary.error


def test_learning_rate_schedule():
    cfg = TrainConfig(lr_schedule="cosine", warmup_steps=10)
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1) and lr_factor(cfg, 9, 110) == 1.0
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.5) and lr_factor(cfg, 110, 110) == pytest.approx(0.0)
    assert lr_factor(TrainConfig(), 500, 1000) == 1.0


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["classifier", "--help"])
    text = capsys.readouterr().out
    for cls in (TrainConfig, ClassifierConfig):
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert re.search(rf"{flag}\b.*\n?.*\S", text), flag
            assert f.metadata["help"].split("(")[0].strip()[:30] in " ".join(text.split())


def test_cli_trains_and_resumes_with_overrides(tmp_path, capsys):
    base = ["classifier", "--dataset", "digits", "--batch-size", "32", "--runs-dir", str(tmp_path), "--run-name", "cli",
            "--log-every", "2", "--eval-size", "32", "--width", "8", "--cpu"]
    run_dir = main(base + ["--max-steps", "4"])
    assert json.loads((run_dir / "config.json").read_text())["model"]["width"] == 8
    main(["classifier", "--resume", str(run_dir), "--max-steps", "6"])
    assert [m["step"] for m in read_metrics(run_dir) if "loss/train" in m] == [2, 4, 6]
    exported = (run_dir / "model" / "model.safetensors").stat().st_mtime_ns
    main(["classifier", "--resume", str(run_dir)])           # finished: said, and nothing written again
    assert "has finished: step 6 of 6" in capsys.readouterr().err
    assert (run_dir / "model" / "model.safetensors").stat().st_mtime_ns == exported
    assert [m["step"] for m in read_metrics(run_dir) if "loss/train" in m] == [2, 4, 6]
    with pytest.raises(SystemExit):
        main(["classifier", "--dataset", "imagenet", "--max-steps", "1", "--runs-dir", str(tmp_path)])


def test_cli_fine_tunes_from_a_saved_model(tmp_path):
    """--init-from starts a new run from a saved model's weights and options (at lr 0 they stay as saved); it
    refuses another family's folder, a missing one, and --resume beside it."""
    base = ["--dataset", "digits", "--batch-size", "32", "--runs-dir", str(tmp_path), "--eval-size", "32", "--cpu"]
    saved = main(["classifier", *base, "--run-name", "first", "--width", "8", "--max-steps", "3"]) / "model"
    tuned = main(["classifier", *base, "--run-name", "tuned", "--init-from", str(saved), "--max-steps", "2",
                  "--lr", "0"])
    assert json.loads((tuned / "config.json").read_text())["model"]["width"] == 8     # the saved model's options
    first, second = (dict(load_model(folder).named_parameters()) for folder in (saved, tuned / "model"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)   # (not the
                                                                        # batch-norm statistics, which training moves)
    for wrong in (["gan", "--init-from", str(saved)],
                  ["classifier", "--init-from", str(saved), "--resume", str(tuned)]):
        with pytest.raises(SystemExit, match="2"):
            main(wrong + ["--max-steps", "1"])
    with pytest.raises(FileNotFoundError):
        main(["classifier", "--init-from", str(tmp_path / "missing"), "--max-steps", "1"])


def test_two_processes_with_accelerate_keep_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with socket.socket() as probe:                     # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                             str(ROOT / "tests" / "dist_worker.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(re.findall(r"rank (\d) of (\d) checksum ([-+.\de]+)\n", result.stdout))
    assert [(r, n) for r, n, _ in lines] == [("0", "2"), ("1", "2")], result.stdout
    assert lines[0][2] == lines[1][2]                  # gradients were averaged: both copies stayed equal
    run_dir = tmp_path / "dist"
    assert json.loads((run_dir / "config.json").read_text())["num_processes"] == 2
    assert [m["step"] for m in read_metrics(run_dir) if "loss/train" in m] == [4, 8]     # rank 0 alone wrote


def test_two_nodes_with_torchrun_equal_one_process_on_the_doubled_batch(tmp_path):
    """Two nodes (torchrun --nnodes 2, one process each, gloo over 127.0.0.1) train an R3GAN, whose R1/R2 penalties
    need a double backward, through the real loop; the weights equal one process trained on both nodes' shards."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = [str(ROOT / "tests" / "multinode_worker.py"), str(tmp_path)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *worker, "nodes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=ROOT) for rank in (0, 1)]
    single = subprocess.run([sys.executable, *worker, "single"], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [(node.returncode, err[-1500:]) for node, (_, err) in zip(nodes, outputs)]
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads((tmp_path / "nodes" / "config.json").read_text())["num_processes"] == 2
    two = safetensors.torch.load_file(str(tmp_path / "nodes" / "model" / "model.safetensors"))
    one = safetensors.torch.load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.manual_seed(0)                                  # the worker's initial weights: training moved them
    initial = GAN(GANConfig(architecture="mlp", loss="r3gan", image_size=8, latent_dim=16)).state_dict()
    assert not torch.allclose(one["generator.net.0.weight"], initial["generator.net.0.weight"])


# ----------------------------------------------------------------------------------- every family on every dataset
SMALL = {"classifier": ["--width", "4", "--hidden", "8"],
         "gan-mlp": ["--architecture", "mlp", "--latent-dim", "8"],
         "gan-dcgan": ["--architecture", "dcgan", "--feature-maps", "4", "--latent-dim", "8"],
         "vae": ["--width", "4", "--hidden", "16", "--latent-dim", "2"],
         "ddpm": ["--widths", "8,16", "--eval-steps", "2"],
         "cyclegan": ["--width", "4", "--residual-blocks", "1"],   # its default domains 7 and 9 (a folder: 0, 1)
         "pix2pix": ["--width", "4"],
         "simclr": ["--width", "4", "--projection-dim", "8"],
         "stylegan": ["--width", "2", "--latent-dim", "8", "--mapping-layers", "2"]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, list[str]]:
    """digits (8x8), Fashion-MNIST (28x28), MNIST from IDX files our writer made, and a folder of RGB images of
    several sizes (as a folder pair: trainA/ trainB/ testA/ testB/, resized to 20x20)."""
    from PIL import Image
    from core.data import write_idx
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    for split, count in (("train", 200), ("t10k", 40)):
        write_idx(root / "mnist" / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), np.uint8))
        write_idx(root / "mnist" / f"{split}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))
    for split in ("train", "test"):
        for domain in "AB":
            (root / "pair" / f"{split}{domain}").mkdir(parents=True)
            for i in range(24):
                size = (30 + 7 * i, 25 + 3 * i)
                Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), np.uint8)).save(
                    root / "pair" / f"{split}{domain}" / f"{i}.png")
    require_fashion()
    return {"digits": ["--dataset", "digits"], "fashion-mnist": ["--dataset", "fashion-mnist"],
            "mnist": ["--dataset", "mnist", "--data-dir", str(root / "mnist")],
            "folder": ["--dataset", "folder", "--data-dir", str(root / "pair"), "--folder-image-size", "20",
                       "--folder-channels", "3"]}


@pytest.mark.parametrize("dataset", ["digits", "fashion-mnist", "mnist", "folder"])
@pytest.mark.parametrize("family", SMALL)
def test_every_family_trains_on_every_dataset(family, dataset, datasets, tmp_path):
    """The model takes its image size and channels from the data; CycleGAN refuses images under 16x16 before any
    step, naming the option, and trains once padded."""
    args = [family.split("-")[0], *datasets[dataset], *SMALL[family], "--max-steps", "2", "--batch-size", "16",
            "--eval-size", "16", "--log-every", "1", "--runs-dir", str(tmp_path), "--run-name", "run", "--cpu"]
    if family == "cyclegan" and dataset == "digits":
        with pytest.raises(ValueError, match="--pad-to 16"):
            main(args)
        args += ["--pad-to", "16", "--run-name", "padded"]
    if family == "cyclegan" and dataset == "folder":
        with pytest.raises(ValueError, match="--domain-a 0 --domain-b 1"):
            main(args)
        args += ["--domain-a", "0", "--domain-b", "1", "--run-name", "pair"]
    run_dir = main(args)
    status = json.loads((run_dir / "status.json").read_text())
    channels = 3 if dataset == "folder" else 1
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert status["status"] == "finished" and status["step"] == 2 and model["channels"] == channels
    assert load_model(run_dir / "model") is not None


def test_cyclegan_trains_with_its_defaults_on_its_two_classes(tmp_path):
    """`python -m core.train cyclegan` needs no --classes: it takes the rows of its two domains (sneakers and ankle
    boots) from the training and the test set, and refuses a --classes that leaves one of them out."""
    args = ["cyclegan", "--width", "4", "--residual-blocks", "1", "--max-steps", "1", "--batch-size", "8",
            "--eval-size", "40", "--runs-dir", str(tmp_path), "--cpu"]
    run = main(args + ["--run-name", "defaults"])
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    evaluated = json.loads((run / "model" / "eval.json").read_text())
    assert evaluated["a2b_domain_accuracy"] >= 0
    with pytest.raises(ValueError, match=r"holds labels \[1, 2\]"):
        main(args + ["--classes", "1,2", "--run-name", "wrong"])


def test_a_model_built_for_other_images_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"1x8x8 but this GAN is built for 1x28x\.\.\.: pass --image-size 8"):
        main(["gan", "--dataset", "digits", "--image-size", "28", "--max-steps", "1", "--runs-dir", str(tmp_path)])
