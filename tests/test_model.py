"""core.model: the contract every family follows. The precision the loop sets is the one every forward pass of every
family runs in, with no family left to remember it."""
import pytest
import torch

from core.config import TrainConfig
from core.families import FAMILIES, class_named, family_of
from core.models.classifier import ClassifierConfig
from core.models.cyclegan import CycleGANConfig
from core.models.ddpm import DDPMConfig
from core.models.gan import ARCHITECTURES, GANConfig
from core.models.pix2pix import Pix2PixConfig
from core.models.simclr import SimCLRConfig
from core.models.stylegan import StyleGANConfig
from core.models.vae import VAEConfig
from core.train import train

# one tiny configuration (or several) of every registered family, on the 8x8 digits
TINY = {"classifier": [ClassifierConfig(width=4, hidden=8)],
        "gan": [GANConfig(architecture=a, image_size=8, feature_maps=4, latent_dim=8) for a in ARCHITECTURES],
        "vae": [VAEConfig(image_size=8, width=4, hidden=16, latent_dim=2)],
        "ddpm": [DDPMConfig(image_size=8, widths="8,16", eval_steps=2),
                 DDPMConfig(image_size=8, widths="8,16", eval_steps=2, prediction_type="flow_prediction")],
        "cyclegan": [CycleGANConfig(width=4, residual_blocks=1, domain_a=0, domain_b=1)],
        "pix2pix": [Pix2PixConfig(image_size=8, width=4)],
        "simclr": [SimCLRConfig(image_size=8, width=4, projection_dim=8)],
        "stylegan": [StyleGANConfig(image_size=8, width=2, latent_dim=8, mapping_layers=2)]}
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
