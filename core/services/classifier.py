"""The FGSM tab: adversarial examples against the shipped classifiers, FGSM (Goodfellow et al. 2015) and PGD (Madry
et al. 2018), with the perturbation shown, and the test accuracy under attack from the model cards."""
from __future__ import annotations

import torch
from PIL import Image

from core.attacks import MAX_EPS, fgsm, pgd
from core.data import FASHION_CLASSES
from core.requests import class_index, one_of, read_image, real_number, to_model_input, whole_number
from core.services.base import Choice, Endpoint, ModelChoice, Number, Output, Service, Upload, card_figures
from core.services.pictures import single_image

ATTACKS = ("fgsm", "fgsm_targeted", "pgd")
TARGETS = tuple((name, k) for k, name in enumerate(FASHION_CLASSES))


def top_classes(logits: torch.Tensor, k: int = 3) -> dict[str, float]:
    probabilities = logits.softmax(-1)
    values, index = probabilities.topk(k)
    return {FASHION_CLASSES[i]: float(v) for v, i in zip(values, index)}


class AttackService(Service):
    """Adversarial examples against a classifier (core/attacks.py), and its robustness curve from its card."""
    family, tab = "classifier", "FGSM"
    about = r"""**FGSM** (Goodfellow et al. 2015): $x_{adv} = \operatorname{clip}(x + \varepsilon\,
\operatorname{sign}\nabla_x J(\theta, x, y))$; targeted toward class $t$: $x - \varepsilon\,\operatorname{sign}
\nabla_x J(\theta, x, t)$. **PGD** (Madry et al. 2018) repeats the step 10 times with projection onto the
$\varepsilon$-ball. `classifier-adv` was trained on FGSM examples (with a random start) at $\varepsilon = 0.1$."""
    endpoints = (
        Endpoint("fgsm_attack", "attack",
                 (ModelChoice("model", "classifier", "classifier", "classifier"),
                  Upload("image", "image", "0-t-shirt-top.png"),
                  Choice("attack", "attack", "fgsm", (("FGSM", "fgsm"), ("targeted FGSM", "fgsm_targeted"),
                                                       ("PGD, 10 steps", "pgd"))),
                  Number("eps", "ε (fraction of the pixel range)", 0.05, 0, MAX_EPS, step=0.01),
                  Choice("target", "target class (targeted FGSM)", 8, TARGETS)),
                 (Output("image", height=130), Output("perturbation (±ε shown as black/white)", height=130),
                  Output("adversarial image", height=130), Output("top-3 before", "scores"),
                  Output("top-3 after", "scores")), "Attack"),
    )

    @classmethod
    def chart(cls) -> dict:
        return {"rows": robustness_table(cls.model_names()), "x": "eps", "y": "accuracy", "colour": "model",
                "title": "Test accuracy under FGSM vs ε (10,000 test images, from the model cards)"}

    def attack(self, upload, attack, eps, target=0) -> tuple[Image.Image, Image.Image, Image.Image, dict, dict]:
        """(image, perturbation amplified to the full grey range, adversarial image, top-3 before, top-3 after).
        Untargeted attacks push away from the classifier's own prediction; targeted FGSM pulls toward `target`."""
        classifier = self.model
        attack, eps = one_of(attack, "attack", ATTACKS), real_number(eps, "eps", 0.0, MAX_EPS)
        target = whole_number(class_index(target), "target", 0, len(FASHION_CLASSES) - 1)
        x = to_model_input(read_image(upload))[0][None]
        with torch.no_grad():
            before = classifier(x)[0]
        with torch.enable_grad():
            if attack == "fgsm_targeted":
                adversarial = fgsm(classifier, x, torch.tensor([target]), eps, targeted=True)
            elif attack == "fgsm":
                adversarial = fgsm(classifier, x, before.argmax()[None], eps)
            else:
                adversarial = pgd(classifier, x, before.argmax()[None], eps, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            after = classifier(adversarial)[0]
        delta = adversarial[0] - x[0]
        amplified = (delta / (2 * eps)).clamp(-1, 1) if eps > 0 else delta     # ±ε -> black / white, 0 -> grey
        return (single_image(x[0]), single_image(amplified), single_image(adversarial[0]), top_classes(before),
                top_classes(after))


def robustness_table(specs: list[str]) -> list[dict]:
    """Rows (model, eps, accuracy) of each classifier's FGSM curve on the test set, from its model card."""
    rows = []
    for spec in specs:
        scores = card_figures(spec)
        points = {0.0: scores.get("accuracy")} | {float(key.rsplit("eps", 1)[1]): value for key, value in scores.items()
                                                  if key.startswith("fgsm_accuracy_eps")}
        rows += [{"model": spec, "eps": eps, "accuracy": acc} for eps, acc in sorted(points.items()) if acc is not None]
    return rows
