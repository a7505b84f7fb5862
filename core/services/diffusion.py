"""The Diffusion tab: the reverse process streamed step by step, x_t beside the network's x̂_0, for every diffusion
objective (DDPM ε/x_0/v, flow matching, EDM), guided or not (core/models/ddpm.py, core/schedulers/).

A denoising request costs images x steps x network passes; it is checked and refused before it is queued
(`work`, the endpoint's admission cost), a large one runs only while no other large one does, and every run stops
after DIFFUSION_BUDGET_S seconds.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator

import torch
from PIL import Image

from core.model import fast_precision
from core.models import ddpm as diffusion
from core.requests import MAX_SEED, RequestError, one_of, real_number, whole_number
from core.schedulers import SCHEDULER_LABELS, SCHEDULERS
from core.services.base import (CLASS_CHOICES, MAX_IMAGES, Choice, Endpoint, ModelChoice, Number, Output, Service,
                                checked_spec, class_picker, count_input, label_or_none, model_config, seed_input)
from core.services.pictures import grid_image

MAX_WORK = 16_000              # images x steps x network passes (2 with guidance) per request (~30-60 s on 2 cores)
LARGE_WORK = 2_000             # above this a request is large: one large request runs at a time
DIFFUSION_BUDGET_S = 90.0      # wall time one denoising request may take
STREAM_FRAMES = 20             # pictures streamed during one denoising run
_large_request = threading.Lock()
# a diffusion model's samplers and a consistency student's: the dropdown of either offers both (its own first), so
# that an API call for any shipped model passes the dropdown's check; one that does not fit the model is refused
SAMPLERS = (*diffusion.samplers_for("epsilon"), *diffusion.samplers_for("epsilon", "cd"))


def scheduler_choices(names) -> tuple:
    return tuple((SCHEDULER_LABELS[name], name) for name in names)


def cost(n, steps, scheduler, eta, seed, guidance_scale) -> int:
    """The checked cost of a denoising request: images x steps x network passes (classifier-free guidance runs the
    network twice, a second-order scheduler twice per step)."""
    n, steps = whole_number(n, "n", 1, MAX_IMAGES), whole_number(steps, "steps", 1, diffusion.MAX_STEPS)
    one_of(scheduler, "scheduler", tuple(SCHEDULERS)), real_number(eta, "eta", *diffusion.ETA_RANGE)
    whole_number(seed, "seed", 0, MAX_SEED)
    passes = 1 if real_number(guidance_scale, "guidance_scale", *diffusion.GUIDANCE_RANGE) == 1.0 else 2
    passes *= SCHEDULERS[scheduler].order                                # Heun: two network passes per step
    if n * steps * passes > MAX_WORK:
        raise RequestError(f"n x steps x passes must be at most {MAX_WORK:,} (guidance ≠ 1 runs the network twice, "
                           f"Heun twice per step; e.g. 16 images at 1000 steps, or 64 at 125 with guidance), "
                           f"got {n} x {steps} x {passes} = {n * steps * passes:,}", "steps")
    return n * steps * passes


class DiffusionService(Service):
    family, tab = "ddpm", "Diffusion"
    about = r"""**DDPM** (Ho et al. 2020): $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ with
$\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$. The shipped models predict
$v = \alpha_t\varepsilon - \sigma_t x_0$ (Salimans & Ho 2022) on the cosine schedule (Nichol & Dhariwal 2021),
trained with $\|v - v_\theta(x_t, t)\|^2$; the network's guess of the final image is
$\hat x_0 = \alpha_t x_t - \sigma_t v_\theta$, shown beside $x_t$. Predicting $\varepsilon$ instead (the paper)
gives $\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t$, which multiplies the network's errors by
$1/\alpha_t$ (about 150 at the noisiest step of the linear schedule): on our CPU budget that left about one sample in
ten as saturated speckle. Sampling runs the reverse process from pure noise: DDPM (ancestral, 1000 steps in the
paper), DDIM (Song et al. 2020, $\eta = 0$ deterministic) or DPM-Solver++ (Lu et al. 2022, 10-20 steps suffice),
as an ODE or, "SDE", drawing fresh noise at every step as DDPM does, which corrects earlier steps' errors: the
default for `ddpm`, at the steps its card was measured with (its config's `eval_steps`, where the steps box
starts; at equal steps the SDE lifts precision over the ODE form from 0.79 to 0.85). `ddpm-cond` uses
classifier-free guidance (Ho & Salimans 2022): $\hat v = v_\theta(x_t) + w(v_\theta(x_t, y) - v_\theta(x_t))$.
`ddpm` has no labels and can be guided all the same, by **autoguidance** (Karras et al. 2024): a guide $v_G$, the same objective on a U-Net
a quarter the size trained for 2000 steps instead of the model's 49000, makes the model's mistakes more often, and
$\hat v = v_G + w(v_\theta - v_G)$ steers away from them ($w = 1$: no guidance, where `ddpm`'s slider starts,
since on the longer-trained model the guide buys FID and recall with precision). A **flow-matching** model
(Lipman et al. 2023; Liu et al. 2023; give its Hub id) learns the straight path
$x_\sigma = (1-\sigma)x_0 + \sigma\varepsilon$ and its velocity $\varepsilon - x_0$; Euler or Heun integrate that
velocity from $\sigma = 1$ to $0$, and $\hat x_0 = x_\sigma - \sigma v_\theta$. An **EDM** model (Karras et al.
2022) learns the network inside the denoiser $D(x;\sigma) = c_\text{skip}x + c_\text{out}F_\theta(c_\text{in}x;
\tfrac14\ln\sigma)$ on $x_\sigma = x_0 + \sigma\varepsilon$; Heun (its Algorithm 1), Euler or DPM-Solver++ (one
network pass a step) solve $dx/d\sigma = (x - D)/\sigma$ from $\sigma = 80$ to $0$, and $\hat x_0 = D$.
`ddpm-fast`, where the tab opens, is a **consistency** student of `ddpm` (Song et al. 2023): the same U-Net,
fine-tuned so that one pass at $x_t$ gives the end $x_0$ of the teacher's ODE trajectory through $x_t$; consistency
sampling (LCM, Luo et al. 2023) alternates $x_0 = f_\theta(x_t, t)$ and re-noising to the next, smaller $t$: at 4
steps FID 5.7 where the teacher's own 4 steps give 62 (its 40: 1.8), in a tenth of the teacher's time."""
    endpoints = (
        Endpoint("ddpm_sample", "denoise",
                 (ModelChoice("model", "model", "ddpm-fast", "ddpm"),
                  count_input(16),
                  Number("steps", "steps", diffusion.DDPMConfig.eval_steps, 1, diffusion.MAX_STEPS),
                  Choice("scheduler", "scheduler", "dpm_solver", scheduler_choices(SAMPLERS)),
                  Number("eta", "η (DDIM only: 0 deterministic, 1 DDPM-like)", 0, *diffusion.ETA_RANGE, step=0.05),
                  seed_input(),
                  Choice("label", "class (ddpm-cond only)", -1, CLASS_CHOICES),
                  Number("guidance_scale", "guidance scale w (1: none; a guided model starts at its card's)", 1.0,
                         *diffusion.GUIDANCE_RANGE, step=0.05)),
                 (Output("x_t, streamed while it runs"),
                  Output("x̂₀: what the network believes the final images will be"),
                  Output("the first images at 10 moments of the run: x_t above x̂₀"), Output("", "text")),
                 "Denoise", stream=True, cost="work", queue="diffusion", limit=2),
    )

    def __init__(self, model, name):
        super().__init__(model.set_precision(fast_precision()), name)     # bf16 where the CPU has it

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """What the model's card was measured with: its schedulers (its own first), guidance and steps; and the
        class picker, live for a class-conditional model. Read from its config, so nothing is loaded."""
        try:
            config = model_config(spec, cls.family)
            own = diffusion.own_samplers(config)
            names = own + tuple(name for name in SAMPLERS if name not in own) if set(own) <= set(SAMPLERS) else own
            guidance = real_number(diffusion.own_guidance(config), "the config's eval_guidance",
                                   *diffusion.GUIDANCE_RANGE)
            steps = whole_number(config.get("eval_steps", diffusion.DDPMConfig.eval_steps), "the config's eval_steps",
                                 1, diffusion.MAX_STEPS)
        except RequestError:
            return {}
        return {"scheduler": {"choices": scheduler_choices(names), "value": names[0]},
                "guidance_scale": {"value": guidance}, "steps": {"value": steps}, **class_picker(config)}

    @classmethod
    def work(cls, model, n, steps, scheduler, eta, seed, label=-1, guidance_scale=1.0) -> int:
        """The endpoint's admission: the model named, and the request's cost (`cost`). Loads nothing."""
        checked_spec(model, cls.family)
        return cost(n, steps, scheduler, eta, seed, guidance_scale)

    def denoise(self, n, steps, scheduler, eta, seed, label=-1, guidance_scale=1.0
                ) -> Iterator[tuple[float, tuple[Image.Image, Image.Image, Image.Image | None, str]]]:
        """Yield (fraction done, (grid of x_t, grid of x̂_0, None, status)) about STREAM_FRAMES times while the
        reverse process runs, then (1, (grid of x_0, grid of the last x̂_0, strip, status)): x̂_0 is the network's
        guess of the final images at that step; the strip shows the first (up to 4) images at 10 moments of the
        run, x_t above x̂_0. A large request (over LARGE_WORK) runs only while no other large one does, so small
        requests never wait behind two of them; every request stops after DIFFUSION_BUDGET_S seconds."""
        work = cost(n, steps, scheduler, eta, seed, guidance_scale)
        label = label_or_none(label, self.model)
        if not self.model.guided and guidance_scale != 1.0:
            raise RequestError("guidance_scale needs a guided model (classifier-free: ddpm-cond; autoguidance: ddpm); "
                               "it must be 1 here")
        large = work > LARGE_WORK
        if large and not _large_request.acquire(blocking=False):
            raise RequestError(f"another large diffusion request is running; ask for at most "
                               f"{LARGE_WORK:,} images x steps now, or try again in a minute")
        try:
            yield from self._denoise(int(n), int(steps), scheduler, float(eta), int(seed), label, float(guidance_scale))
        finally:
            if large:
                _large_request.release()

    def _denoise(self, n, steps, scheduler, eta, seed, label, guidance_scale):
        rows, start = min(n, 4), time.monotonic()
        moments = {round(k * (steps - 1) / 9) for k in range(10)}
        strip = []
        status = lambda done: f"step {done}/{steps} · {time.monotonic() - start:.1f} s"
        try:
            for i, x_t, x0 in self.model.denoise(n, steps, scheduler, seed, guidance_scale, label, eta):
                if time.monotonic() - start > DIFFUSION_BUDGET_S:
                    raise RequestError(f"stopped after {DIFFUSION_BUDGET_S:.0f} s with {i + 1} of {steps} steps done: "
                                       "ask for fewer images or steps")
                x_t, x0 = x_t.clamp(-1, 1).cpu(), x0.clamp(-1, 1).cpu()
                if i in moments:
                    strip.append(torch.cat([x_t[:rows], x0[:rows]]))
                if i == steps - 1:
                    columns = torch.stack(strip, dim=1).flatten(0, 1)          # (2 rows * 10, C, H, W), row-major
                    yield 1.0, (grid_image(x_t), grid_image(x0), grid_image(columns, len(strip)), status(steps))
                elif (i + 1) * STREAM_FRAMES // steps > i * STREAM_FRAMES // steps:   # STREAM_FRAMES evenly spread
                    yield (i + 1) / steps, (grid_image(x_t), grid_image(x0), None, status(i + 1))
        except ValueError as exc:                # a scheduler that cannot take this many steps, say so
            raise RequestError(str(exc)) from exc
