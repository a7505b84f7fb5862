"""core.model: the contract every family follows. The precision the loop sets is the one every forward pass of every
family runs in, with no family left to remember it."""
import json
from dataclasses import replace

import pytest
import torch

from core.config import TrainConfig
from core.families import FAMILIES, class_named, family_of
from core.models.classifier import ClassifierConfig
from core.models.cyclegan import CycleGANConfig
from core.models.ddpm import DDPMConfig
from core.models.energy import JEMConfig
from core.models.flow import FlowConfig
from core.models.gan import ARCHITECTURES, GANConfig
from core.models.pix2pix import Pix2PixConfig
from core.models.pixelcnn import PixelCNNConfig
from core.models.simclr import SimCLRConfig
from core.models.stylegan import StyleGANConfig
from core.models.vae import VAEConfig
from core.models.vqvae import VQVAEConfig
from core.train import train

# one tiny configuration (or several) of every registered family, on the 8x8 digits
TINY = {"classifier": [ClassifierConfig(width=4, hidden=8)],
        "gan": [GANConfig(architecture=a, image_size=8, feature_maps=4, latent_dim=8) for a in ARCHITECTURES],
        "vae": [VAEConfig(image_size=8, width=4, hidden=16, latent_dim=2)],
        "ddpm": [DDPMConfig(image_size=8, widths="8,16", eval_steps=2),
                 DDPMConfig(image_size=8, widths="8,16", eval_steps=2, prediction_type="flow_prediction"),
                 DDPMConfig(image_size=8, widths="8,16", eval_steps=2, prediction_type="edm"),
                 DDPMConfig(image_size=8, widths="8,16", eval_steps=2, prediction_type="v_prediction",
                            consistency="trajectory", teacher_widths="8,16", eval_sampler="lcm")],
        "cyclegan": [CycleGANConfig(width=4, residual_blocks=1, domain_a=0, domain_b=1)],
        "pix2pix": [Pix2PixConfig(image_size=8, width=4)],
        "simclr": [SimCLRConfig(image_size=8, width=4, projection_dim=8)],
        "stylegan": [StyleGANConfig(image_size=8, width=2, latent_dim=8, mapping_layers=2)],
        "flow": [FlowConfig(image_size=8, steps=1, hidden=4),
                 FlowConfig(image_size=8, steps=1, hidden=4, kind="realnvp", dequantization="variational",
                            dequant_hidden=4, num_classes=10)],
        "pixelcnn": [PixelCNNConfig(image_size=8, hidden=4, layers=2, num_classes=10),
                     PixelCNNConfig(image_size=8, hidden=4, layers=2, kind="plain")],
        "vqvae": [VQVAEConfig(image_size=8, codes=8, code_dim=4, width=4, prior_hidden=4, prior_layers=2),
                  VQVAEConfig(image_size=8, codes=8, code_dim=4, width=4, prior_hidden=4, prior_layers=2,
                              stage="prior")],
        "jem": [JEMConfig(image_size=8, width=4, hidden=8, buffer_size=32, sgld_steps=2, sample_steps=2)]}
CASES = [(family, config) for family, configs in TINY.items() for config in configs]


def test_every_registered_family_is_covered_here():
    assert set(TINY) == set(FAMILIES)


def test_the_registry_names_each_class_once():
    assert len({cls.__name__ for cls in FAMILIES.values()}) == len(FAMILIES)
    for family, cls in FAMILIES.items():
        assert class_named(cls.__name__) is cls and family_of(cls(TINY[family][0])) == family
    with pytest.raises(ValueError, match="unknown model class 'Pickle'"):
        class_named("Pickle")


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("family, config", CASES, ids=[f"{f}-{getattr(c, 'architecture', '')}" for f, c in CASES])
def test_every_training_forward_pass_runs_in_the_runs_precision(family, config, precision, tmp_path):
    """Every module's forward pass during training (not evaluation) sees autocast on under bf16, off under fp32."""
    model = FAMILIES[family](config)
    seen = []
    record = lambda module, args: seen.append(torch.is_autocast_enabled("cpu")) if module.training else None
    for module in model.modules():
        if not list(module.children()):                       # every leaf: conv, linear, norm, activation, ...
            module.register_forward_pre_hook(record)
    cfg = TrainConfig(dataset="digits", batch_size=64, max_steps=2, log_every=1, eval_size=32, checkpoint_every=0,
                      runs_dir=str(tmp_path), run_name="run", cpu=True, mixed_precision=precision,
                      classes="0,1" if family == "cyclegan" else None,
                      pad_to=16 if family == "cyclegan" else None)        # the PatchGAN needs at least 16x16
    train(model, cfg, family)
    assert len(seen) > 4 and set(seen) == {precision == "bf16"}


def channels_last_weights(model: torch.nn.Module) -> list[bool]:
    """For each 4-D weight whose memory formats differ (more than one input channel, a kernel over 1x1): NHWC or not."""
    return [w.is_contiguous(memory_format=torch.channels_last) for w in model.parameters()
            if w.ndim == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1]


FAST_IN_NHWC = [(f, c) for f, c in CASES if FAMILIES[f].channels_last and channels_last_weights(FAMILIES[f](c))]


@pytest.mark.parametrize("family, config", FAST_IN_NHWC,
                         ids=[f"{f}-{getattr(c, 'architecture', '')}" for f, c in FAST_IN_NHWC])
def test_channels_last_families_train_in_it_with_the_same_losses_and_save_as_usual(family, config, tmp_path):
    """The loop puts a `channels_last` family's weights in NHWC while it trains and back in NCHW when it returns;
    the first losses are NCHW's up to float rounding (dropout off: a mask is drawn in memory order, so it differs
    between the formats); the exported folder loads back with the trained weights."""
    first_losses = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = FAMILIES[family](replace(config, dropout=0.0) if hasattr(config, "dropout") else config)
        model.channels_last = channels_last
        seen = []
        record = lambda module, args: seen.extend(channels_last_weights(module)) if module.training else None
        for module in model.modules():
            if not list(module.children()) and channels_last_weights(module):
                module.register_forward_pre_hook(record)
        cfg = TrainConfig(dataset="digits", batch_size=32, max_steps=1, log_every=1, eval_size=32, checkpoint_every=0,
                          runs_dir=str(tmp_path), run_name=f"nhwc-{channels_last}", cpu=True)
        run_dir = train(model, cfg, family)
        assert len(seen) > 2 and set(seen) == {channels_last}
        assert set(channels_last_weights(model)) == {False}          # handed back in the usual layout
        record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        first_losses[channels_last] = {k: v for k, v in record.items() if k.startswith("loss")}
        reloaded = FAMILIES[family].from_pretrained(run_dir / "model")
        for name, tensor in model.exported().state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert first_losses[True] == pytest.approx(first_losses[False], rel=1e-4, abs=1e-6)


def test_backward_and_optimizer_step_leave_autocast(tmp_path):
    """optimizer_step runs outside autocast: gradients and weights stay float32 under bf16."""
    model = FAMILIES["gan"](TINY["gan"][1]).set_precision("bf16")
    model.configure_optimizers(TrainConfig(lr=1e-3))
    states = []
    step = model.generator_optimizer.step
    model.generator_optimizer.step = lambda *a, **k: (states.append(torch.is_autocast_enabled("cpu")), step(*a, **k))
    from core.data import Batch
    model.run_training_step(Batch(torch.rand(8, 1, 8, 8) * 2 - 1, torch.zeros(8, dtype=torch.long)), 0)
    assert states == [False]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.generator.parameters())


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        FAMILIES["gan"](TINY["gan"][0]).set_precision("fp8")
