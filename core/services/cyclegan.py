"""The CycleGAN tab: an uploaded image translated to the other domain and back (core/models/cyclegan.py)."""
from __future__ import annotations

import torch
from PIL import Image

from core.models.cyclegan import CycleGANConfig, domain_name
from core.requests import RequestError, one_of, read_image, to_model_input
from core.services.base import Choice, Endpoint, ModelChoice, Output, Service, Upload, model_config
from core.services.classifier import AttackService
from core.services.pictures import single_image

DIRECTIONS = ("a2b", "b2a")
INVERTED = "The upload had a light background and was inverted: the model knows light objects on black."
JUDGE = "classifier"           # the shipped classifier names what the upload looks like


def direction_choices(domain_a: int, domain_b: int) -> tuple:
    a, b = domain_name(domain_a), domain_name(domain_b)
    return ((f"{a} -> {b} (A -> B)", "a2b"), (f"{b} -> {a} (B -> A)", "b2a"))


class CycleGANService(Service):
    family, tab = "cyclegan", "CycleGAN"
    about = r"""**CycleGAN** (Zhu et al. 2017): two generators $G: A\to B$, $F: B\to A$ trained without pairs by
least-squares adversarial losses and the cycle loss
$\mathbb E_a\|F(G(a)) - a\|_1 + \mathbb E_b\|G(F(b)) - b\|_1$ (weight 10), plus an identity loss."""
    endpoints = (
        Endpoint("cyclegan_translate", "translate",
                 (ModelChoice("model", "model", "cyclegan", "cyclegan"),
                  Upload("image", "image (any size; converted to 28x28 grey)", "7-sneaker.png"),
                  Choice("direction", "direction", "a2b",
                         direction_choices(CycleGANConfig.domain_a, CycleGANConfig.domain_b))),
                 (Output("what the model saw", height=130), Output("translation", height=130),
                  Output("cycle reconstruction", height=130), Output("", "text")), "Translate"),
    )

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """The direction picker names the model's two domains."""
        try:
            config = model_config(spec, cls.family)
        except RequestError:
            return {}
        domains = config.get("domain_a", CycleGANConfig.domain_a), config.get("domain_b", CycleGANConfig.domain_b)
        return {"direction": {"choices": direction_choices(*domains)}}

    def translate(self, upload, direction) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        """(what the model saw, translation, cycle reconstruction, a note if the upload was inverted)."""
        direction = one_of(direction, "direction", DIRECTIONS)
        x, inverted = to_model_input(read_image(upload))
        translated, reconstructed = self.model.translate(x, direction)
        note = " ".join(filter(None, (INVERTED if inverted else "", self.verdict(x, direction))))
        return single_image(x), single_image(translated), single_image(reconstructed), note

    def verdict(self, x: torch.Tensor, direction: str) -> str:
        """What the shipped classifier sees in the input, and a warning when that is not the direction's source:
        a CycleGAN has only ever seen its two domains."""
        config = self.model.config
        source, other = (config.domain_a, config.domain_b) if direction == "a2b" else (config.domain_b, config.domain_a)
        with torch.no_grad():
            probabilities = AttackService.load(JUDGE).model(x[None] if x.dim() == 3 else x).softmax(-1)[0]
        seen = int(probabilities.argmax())
        said = f"The classifier sees: {domain_name(seen)} ({float(probabilities[seen]):.0%})."
        if seen == source:
            return said
        hint = "pick the other direction" if seen == other else f"upload a {domain_name(source)}"
        return (f"{said} This direction learned from {domain_name(source)} images only, so its output here means "
                f"little: {hint}.")
