"""The GAN tab: samples, latent interpolation and the conditional GAN's class grid (core/models/gan.py)."""
from __future__ import annotations

import torch
from PIL import Image

from core.requests import MAX_SEED, RequestError, shown, whole_number
from core.services.base import (CLASS_CHOICES, MAX_IMAGES, MAX_PATH, Choice, Endpoint, Flag, ModelChoice, Number,
                                Output, Service, class_picker, count_input, label_or_none, model_config, path_input,
                                seed_input)
from core.services.pictures import grid_image, side_by_side, single_image

MAX_PER_CLASS = 10             # samples per class in a class grid
MODEL = ModelChoice("model", "model", "dcgan", "gan")
LABEL = Choice("label", "class (conditional GAN only)", -1, CLASS_CHOICES)
SEED = seed_input()


class GANService(Service):
    family, tab = "gan", "GAN"
    about = r"""**GAN** (Goodfellow et al. 2014): a generator $G(z)$, $z\sim\mathcal N(0, I)$, against a
discriminator $D$. Non-saturating loss: $L_D = -\mathbb E[\log D(x)] - \mathbb E[\log(1 - D(G(z)))]$,
$L_G = -\mathbb E[\log D(G(z))]$. The cgan sees the label in both networks (Mirza & Osindero 2014) and is trained
with R3GAN's relativistic loss $f(D(G(z)) - D(x))$ plus R1 and R2 penalties. Interpolation follows the great circle
(slerp): $z_t = \frac{\sin((1-t)\theta)}{\sin\theta} z_A + \frac{\sin(t\theta)}{\sin\theta} z_B$."""
    endpoints = (
        Endpoint("gan_sample", "sample", (MODEL, count_input(64), SEED, LABEL), (Output("samples"),), "Sample"),
        Endpoint("gan_interpolate", "interpolate",
                 (MODEL, seed_input("seed_a", "seed A", 1), seed_input("seed_b", "seed B", 2), path_input(),
                  Flag("spherical", "spherical (slerp)", True), LABEL),
                 (Output("latent path"), Output("animation", "animation")), "Interpolate"),
        Endpoint("gan_class_grid", "class_grid",
                 (ModelChoice("model", "conditional model", "cgan", "gan", widget="grid_model"),
                  Number("per_class", "samples per class", 10, 1, MAX_PER_CLASS), SEED),
                 (Output("row k: class k"),), "Class x sample grid"),
    )

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        try:
            return class_picker(model_config(spec, cls.family))
        except RequestError:
            return class_picker({})

    def sample(self, n, seed, label=-1) -> Image.Image:
        n, seed = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else None
        return grid_image(self.model.sample(n, seed, labels))

    def interpolate(self, seed_a, seed_b, steps, spherical=True, label=-1) -> tuple[Image.Image, list[Image.Image]]:
        """The images along a slerp (or lerp) path between two seeds' latent points: (a strip, its frames)."""
        seed_a, seed_b = whole_number(seed_a, "seed_a", 0, MAX_SEED), whole_number(seed_b, "seed_b", 0, MAX_SEED)
        steps, label = whole_number(steps, "steps", 2, MAX_PATH), label_or_none(label, self.model)
        if not isinstance(spherical, bool):
            raise RequestError(f"spherical must be true or false, got {shown(spherical)}")
        if self.model.conditional and label is None:
            label = 0
        frames = [single_image(image) for image in self.model.interpolate(seed_a, seed_b, steps, spherical, label)]
        return side_by_side(frames), frames

    def class_grid(self, per_class, seed) -> Image.Image:
        if not self.model.conditional:
            raise RequestError(f"{self.name!r} is unconditional: the class grid needs a conditional GAN such as cgan")
        per_class, seed = whole_number(per_class, "per_class", 1, MAX_PER_CLASS), whole_number(seed, "seed", 0, MAX_SEED)
        return grid_image(self.model.class_grid(per_class, seed), per_class)
