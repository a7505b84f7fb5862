"""The one registry of model families: CLI name -> class. A new family is one file in core/models/ and one line here.

The loop (`python -m core.train FAMILY`), the checkpoint loader (config.json's `_class_name`), the apps and the
monitor all read this dict; nothing else names the families.
"""
from __future__ import annotations

from core.checkpoint import CheckpointError
from core.model import TrainableModel
from core.models.classifier import Classifier
from core.models.cyclegan import CycleGAN
from core.models.ddpm import DDPM
from core.models.energy import JEM
from core.models.flow import Flow
from core.models.gan import GAN
from core.models.pix2pix import Pix2Pix
from core.models.pixelcnn import PixelCNN
from core.models.simclr import SimCLR
from core.models.stylegan import StyleGAN
from core.models.vae import VAE
from core.models.vqvae import VQVAE

FAMILIES: dict[str, type[TrainableModel]] = {"classifier": Classifier, "gan": GAN, "ddpm": DDPM, "vae": VAE,
                                             "cyclegan": CycleGAN, "pix2pix": Pix2Pix, "simclr": SimCLR,
                                             "stylegan": StyleGAN, "flow": Flow,
                                             "pixelcnn": PixelCNN, "vqvae": VQVAE, "jem": JEM}


def class_named(class_name: str) -> type[TrainableModel]:
    """The family class that a checkpoint's config.json names in `_class_name`."""
    for cls in FAMILIES.values():
        if cls.__name__ == class_name:
            return cls
    known = sorted(cls.__name__ for cls in FAMILIES.values())
    raise CheckpointError(f"unknown model class {class_name!r}; known: {known}")


def family_of(model: TrainableModel) -> str:
    """The registry name of a model's family ("gan" for a GAN)."""
    return next(name for name, cls in FAMILIES.items() if isinstance(model, cls))
