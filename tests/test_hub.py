import json

import pytest
import torch
import yaml

from core.hub import CheckpointError, load_model, write_model_card
from core.models.classifier import Classifier, ClassifierConfig


def test_save_and_load_round_trip(tmp_path):
    model = Classifier(ClassifierConfig(width=8, hidden=16))
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_class_name"] == "Classifier" and config["width"] == 8
    loaded = load_model(tmp_path / "m")
    assert loaded.config == ClassifierConfig(width=8, hidden=16) and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    direct = Classifier.from_pretrained(tmp_path / "m")                # the mixin's own entry point
    assert direct.config.hidden == 16


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    model = Classifier(ClassifierConfig(width=8))
    (folder / "config.json").write_text(json.dumps({"_class_name": "Classifier", "width": 8}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="not a weight file"):
        load_model(folder / "pytorch_model.bin")


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    Classifier(ClassifierConfig(width=8)).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "m")
    weights.write_bytes(good)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "width": 16}))
    with pytest.raises(CheckpointError, match="does not match Classifier"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a genlab config"):
        load_model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_model(tmp_path / "nowhere" / "at" / "all")


def test_model_card_has_hub_metadata_and_figures(tmp_path):
    folder = tmp_path / "classifier"
    Classifier(ClassifierConfig(width=8)).save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"family": "classifier", "dataset": "fashion-mnist",
                                                      "steps": 10, "command": "python -m core.train classifier"}))
    (folder / "eval.json").write_text(json.dumps({"accuracy": 0.9312, "tables": {"Robustness": "| a |\n|---|"}}))
    text = write_model_card(folder, repo_id="someone/classifier").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "genlab" and header["pipeline_tag"] == "image-classification"
    assert header["datasets"] == ["fashion-mnist"]
    metric = header["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "accuracy" and metric["value"] == pytest.approx(0.9312)
    assert "| accuracy | 0.9312 |" in text and "### Robustness" in text and "python -m core.train classifier" in text


def test_an_unreachable_hub_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="could not fetch someone/no-such-model@main from the Hugging Face Hub; tried"):
        load_model("someone/no-such-model")


def test_the_guide_command_ships_a_model_and_its_guide_as_one_checkpoint(tmp_path, capsys):
    from core.hub import main
    from core.models.ddpm import DDPM, DDPMConfig
    torch.manual_seed(0)
    for name, widths in (("model", "16,32"), ("guide", "8,16")):
        net = DDPM(DDPMConfig(image_size=8, widths=widths, prediction_type="edm", ema_decay=0.0))
        torch.nn.init.normal_(net.unet.conv_out.weight, std=0.05)
        net.save_pretrained(tmp_path / name)
    main(["guide", str(tmp_path / "model"), str(tmp_path / "guide"), str(tmp_path / "out"), "--scale", "1.25",
          "--sampler", "edm_heun"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    guided = load_model(tmp_path / "out")
    assert guided.config.guide_widths == "8,16" and guided.config.eval_guidance == 1.25
    assert guided.default_sampler == "edm_heun"
    assert torch.equal(guided.guide.conv_out.weight, load_model(tmp_path / "guide").unet.conv_out.weight)
    assert (tmp_path / "out" / "scheduler_config.json").is_file()
    Classifier(ClassifierConfig(width=8, hidden=16)).save_pretrained(tmp_path / "classifier")
    for model, guide, message in ((tmp_path / "classifier", tmp_path / "guide", "pairs two diffusion models"),
                                  (tmp_path / "model", tmp_path / "nothing", "nothing")):
        with pytest.raises(SystemExit, match=message):
            main(["guide", str(model), str(guide), str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="scale must lie in"):
        main(["guide", str(tmp_path / "model"), str(tmp_path / "guide"), str(tmp_path / "bad"), "--scale", "-1"])
    with pytest.raises(SystemExit, match="eval_sampler must be one of"):
        main(["guide", str(tmp_path / "model"), str(tmp_path / "guide"), str(tmp_path / "bad"), "--sampler", "ddim"])
    assert not (tmp_path / "bad").exists()
