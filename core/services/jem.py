"""The JEM tab: Langevin dynamics turning noise into a garment, frame by frame, and an upload's class probabilities,
energy among the test images' energies and out-of-distribution verdict (core/models/energy.py).

SGLD is sequential: every step is a forward and a backward pass of the network for every image, so a request costs
images x steps and is checked before it is queued (admission). The chains run in a worker thread that reports every
step (the picture is refreshed a few dozen times), and stop when the client leaves or the run passes JEM_BUDGET_S.
An upload's verdict needs no sampling, and has no admission.
"""
from __future__ import annotations

import time
from typing import Iterator

import torch
from PIL import Image

from core.data import FASHION_CLASSES
from core.images import histogram_plot
from core.requests import MAX_SEED, RequestError, read_image, to_model_input, whole_number
from core.services.base import (MAX_IMAGES, Choice, Endpoint, ModelChoice, Number, Output, Service, Upload,
                                checked_spec, count_input, label_or_none, seed_input)
from core.services.classifier import top_classes
from core.services.pictures import grid_image, single_image
from core.services.streaming import streamed

MAX_STEPS = 400                # SGLD steps of one request
MAX_WORK = 16 * 200            # images x steps: 3,200 forward-and-backward passes, 5 to 10 s on one thread with the
                               # shipped network (1.6 ms per image and step on a quiet core, 3 ms in the app beside
                               # other work: 16 x 100 in 4.8 s)
JEM_BUDGET_S = 60.0            # wall time one request may take
FRAMES = 40                    # pictures streamed along a chain
OOD_PERCENTILE = 5             # an energy above the test images' 95th percentile is flagged (5% false alarms)
MODEL = ModelChoice("model", "model", "jem", "jem")
ANY_CLASS = "any: p(x), E(x) = −logsumexp f(x)"
LABEL = Choice("label", "class: SGLD on E(x, y) = −f(x)[y]", 0,
               ((ANY_CLASS, -1), *((name, k) for k, name in enumerate(FASHION_CLASSES))))
STEPS = Number("steps", "SGLD steps", 100, 1, MAX_STEPS)
SEED = seed_input()


def cost(n, steps, seed) -> int:
    """The checked cost of a request: images x SGLD steps."""
    n, steps = whole_number(n, "n", 1, MAX_IMAGES), whole_number(steps, "steps", 1, MAX_STEPS)
    whole_number(seed, "seed", 0, MAX_SEED)
    if n * steps > MAX_WORK:
        raise RequestError(f"images x steps must be at most {MAX_WORK:,} (each step is a forward and a backward "
                           f"pass per image), got {n} x {steps} = {n * steps:,}", "n")
    return n * steps


class JEMService(Service):
    family, tab = "jem", "JEM"
    about = r"""**JEM** (Grathwohl et al. 2019): a classifier's logits $f(x) \in \mathbb R^{10}$ define an energy
$E(x, y) = -f(x)[y]$ and with it $p(x, y) = e^{-E(x, y)}/Z$. Summing over $y$ gives $p(x) = e^{-E(x)}/Z$ with
$E(x) = -\log\sum_y e^{f(x)[y]}$, and dividing gives back the classifier, $p(y \mid x) = \mathrm{softmax}(f(x))_y$:
$Z$ cancels. Training maximises $\log p(y \mid x) + \log p(x)$; the gradient of $\log p(x)$ is
$-\nabla_\theta E(x) + \mathbb E_{x' \sim p}[\nabla_\theta E(x')]$, with samples $x'$ from **stochastic gradient
Langevin dynamics** (Welling & Teh 2011): $x_{k+1} = x_k - \tfrac{\alpha}{2}\nabla_x E(x_k) + \sigma\varepsilon$.
JEM takes $\alpha/2 = 1$, $\sigma = 0.01$ (exact Langevin would need $\sigma = \sqrt\alpha$) and starts its chains from
a replay buffer of past samples. Here the chains start from uniform noise and follow $E(x, y)$ for the chosen class,
or $E(x)$. An upload's $E(x)$ is compared with the test images' energies: higher than 95% of them means the model
finds it unlike Fashion-MNIST (its $\log p(x) = -E(x) - \log Z$ is low)."""
    endpoints = (
        Endpoint("jem_sgld", "sgld", (MODEL, count_input(16), STEPS, SEED, LABEL),
                 (Output("", "text"), Output("SGLD chains from noise")), "Run Langevin dynamics", stream=True,
                 cost="work", queue="jem"),
        Endpoint("jem_judge", "judge", (MODEL, Upload("image", "image", "7-sneaker.png")),
                 (Output("", "text"), Output("p(y | x), top 3", "scores"),
                  Output("the image, and its energy (red) among the energies of the test images")), "Classify and score"),
    )

    @classmethod
    def work(cls, model, n, steps, seed, label=0) -> int:
        """jem_sgld's admission: the model named, and the request's cost. Loads nothing."""
        checked_spec(model, cls.family)
        return cost(n, steps, seed)

    def sgld(self, n, steps, seed, label=0) -> Iterator[tuple[float, tuple[str, Image.Image]]]:
        """Yield (fraction done, (status, grid of the chains)) every few steps, then the final chains."""
        cost(n, steps, seed)
        n, steps, seed = int(n), int(steps), int(seed)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else None
        what = f"E(x, {FASHION_CLASSES[label]})" if label is not None else "E(x)"
        every, start = max(1, steps // FRAMES), time.monotonic()

        def run(on_step):
            shown = lambda k, x: on_step(k, x) if k % every == 0 and k < steps else None
            return self.model.sample(n, seed, labels, steps, on_step=shown)

        for step, x in streamed(run, JEM_BUDGET_S):
            seconds = time.monotonic() - start
            if step is None:
                yield 1.0, (f"{n} chain{'s' * (n > 1)} on {what}, {steps} steps in {seconds:.1f} s", grid_image(x))
            else:
                yield step / steps, (f"step {step}/{steps} on {what} · {seconds:.1f} s", grid_image(x.clamp(-1, 1)))

    def judge(self, upload) -> tuple[str, dict, Image.Image]:
        """(verdict, top-3 p(y | x), the image beside the histogram of test energies with the image's marked)."""
        x = to_model_input(read_image(upload), self.model.config.image_size)[0][None]
        with torch.no_grad():
            logits = self.model(x)[0]
        energy = float(-logits.logsumexp(0))
        reference = self.model.test_energy.cpu()
        if not reference.any():
            raise RequestError("this model keeps no test-set energies (it was never evaluated): no verdict", "model")
        share = float((reference < energy).float().mean())     # the share of test percentiles below E(x)
        unusual = share > 1 - OOD_PERCENTILE / 100
        verdict = (f"**E(x) = {energy:.2f}**, above about {100 * share:.0f}% of test images' energies: "
                   + ("**unlike Fashion-MNIST** (flagged above the 95th percentile)" if unusual else
                      "typical of Fashion-MNIST"))
        plot = histogram_plot(reference, energy, "E(x) of Fashion-MNIST test images (lower: more typical)")
        picture = single_image(x[0]).convert("RGB").resize((plot.height, plot.height), Image.NEAREST)
        both = Image.new("RGB", (picture.width + plot.width, plot.height), "white")
        both.paste(picture, (0, 0))
        both.paste(plot, (picture.width, 0))
        return verdict, top_classes(logits), both
