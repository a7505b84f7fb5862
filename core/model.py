"""The model contract: what the training loop, the evaluation and the apps ask of every model family.

A family is one `TrainableModel` subclass in core/models/, registered in core.families. It brings:
    configure_optimizers(cfg) -> {name: optimizer}
    training_step(batch, step) -> {name: detached loss}   its forward passes and `optimizer_step` calls (a GAN has two)
    evaluate(data, yardstick) -> {name: figure}           optional; `yardstick` (core.metrics) scores images
    eval_images(data) -> images in [-1, 1] or None         optional; the grid logged at each evaluation
    exported() -> the model written to the final Hub folder (a DDPM keeps its EMA weights only)
and inherits the Hub checkpoint format (core.checkpoint).

Precision has one carrier, `model.precision` ("no" or "bf16"). Whoever drives the model sets it (the loop from
--mixed-precision, an app for sampling); `run_training_step` enters `autocast()` around the whole training step, so
every forward pass of every family runs in that precision without the family having to remember it, and
`optimizer_step` leaves autocast for the backward pass and the optimizer step, which stay float32. Sampling code enters
`autocast()` itself.

Memory format: a family whose class sets `channels_last = True` is trained with its 4-D weights, and so its
convolutions' activations, in channels_last (NHWC) memory format, which oneDNN's CPU convolutions run faster
(bench/dcgan_vs_peer.py, bench/channels_last.py). Values are the same as in NCHW up to float rounding; the exported
weights are written in the usual layout.

This module imports nothing of the loop: models sit below core.train, not above it.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from core.checkpoint import HubModel
from core.config import PRECISIONS, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from core.data import Batch, ImageData
    from core.metrics import Yardstick


class TrainableModel(HubModel):
    """What the loop asks of a family. `self.accelerator` is set by the loop before training starts."""
    config_class: type
    pipeline_tag: str
    card_description: str = ""
    card_samples_caption: str = ""
    uses_yardstick: bool = True        # evaluate() scores images with the metric classifier's features
    accelerator: "Accelerator | None" = None
    precision: str = "no"
    channels_last: bool = False        # the loop trains it in channels_last memory format (set where measured faster)

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(self, batch: "Batch", step: int) -> dict[str, Tensor]:
        """One step: forward passes, `optimizer_step` calls; return detached scalar losses to log (no .item())."""
        raise NotImplementedError

    def evaluate(self, data: "ImageData", yardstick: "Yardstick | None" = None,
                 samples: tuple[Tensor, Tensor | None] | None = None) -> dict[str, float]:
        """Figures on `data`: for a generator, the yardstick's figures (core.metrics) of len(data) samples
        (`evaluation_samples`, unless given); nothing without a yardstick (None where it cannot read the images)."""
        samples = samples or self.evaluation_samples(len(data))
        return yardstick.score(*samples, data=data) if samples is not None and yardstick is not None else {}

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None] | None:
        """A generator's n samples in [-1, 1] that its figures are measured on (seeded), with the labels they were
        asked for (conditional models) or None; None for a model that does not sample."""
        return None

    def eval_images(self, data: "ImageData") -> Tensor | None:
        """Images in [-1, 1] for the grid logged at each evaluation (fixed inputs, so grids compare over time)."""
        return None

    def exported(self) -> "TrainableModel":
        """The model written to the run's final Hub folder; a family may drop what sampling does not need."""
        return self

    def fine_tuning_config(self):
        """The options a run that starts from this saved model trains with (given options override them)."""
        return self.config

    def init_from(self, saved: "TrainableModel") -> None:
        """Start training from a saved model of this family (fine-tuning, `--init-from`): its weights, which must
        match this model's one for one. A family whose shipped folder differs from what it trains overrides this."""
        missing, unexpected = self.load_state_dict(saved.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"the saved {type(saved).__name__} does not match the model to train: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]} (a family that drops "
                             "weights from its shipped folder cannot be fine-tuned from it)")

    def training_subset(self, data: "ImageData") -> "ImageData":
        """The part of a dataset this model learns from: all of it (CycleGAN: the rows of its two domains)."""
        return data

    def check_data(self, data: "ImageData") -> None:
        """Refuse, before any step, data the model was not built for (here: another image shape); the message
        names the options that fix it. (The CLI builds models from the data's shape unless told otherwise.)"""
        config, (channels, height, width) = self.config, data.image_shape
        wrong = [f"--channels {channels}"] if getattr(config, "channels", channels) != channels else []
        if hasattr(config, "image_size") and (height, width) != (config.image_size,) * 2:
            wrong.append(f"--image-size {height}" if height == width else "--pad-to (square images)")
        if wrong:
            built = f"{getattr(config, 'channels', '?')}x{getattr(config, 'image_size', 'H')}x..."
            raise ValueError(f"the data's images are {channels}x{height}x{width} but this {type(self).__name__} is "
                             f"built for {built}: pass {' '.join(wrong)}")

    # ---------------------------------------------------------------------------------------------- precision
    def set_precision(self, precision: str) -> "TrainableModel":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        return self

    @property
    def device_type(self) -> str:
        return next(self.parameters()).device.type

    def autocast(self):
        """The forward-pass precision: bf16 autocast when `precision` is "bf16", else a no-op."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def run_training_step(self, batch: "Batch", step: int) -> dict[str, Tensor]:
        """The loop's entry point: `training_step` with every forward pass in the model's precision."""
        with self.autocast():
            return self.training_step(batch, step)

    # ------------------------------------------------------------------------------------------ optimizer steps
    def optimizer_step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor:
        """zero_grad, backward, average gradients over processes, step, all in float32 (autocast off).
        Returns the detached loss."""
        optimizer.zero_grad(set_to_none=True)
        accelerator = self.accelerator
        with torch.autocast(self.device_type, enabled=False):
            if accelerator is None:
                loss.backward()
            else:
                accelerator.backward(loss)
                if accelerator.num_processes > 1:
                    average_gradients(accelerator, optimizer)
            optimizer.step()
        return loss.detach()


def average_gradients(accelerator: "Accelerator", optimizer: torch.optim.Optimizer) -> None:
    """All-reduce (mean) the optimizer's gradients over processes as one flat tensor, so every copy steps alike."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


@functools.cache
def fast_precision() -> str:
    """"bf16" where the CPU has bf16 instructions (AMX or AVX512-BF16: the DDPM's U-Net runs 2.2x faster in bf16
    autocast than in float32 on an AVX512-BF16 machine, bench/ddpm_throughput.py), else "no": without them bf16
    autocast is slower than float32. For sampling; training takes --mixed-precision."""
    if torch.cuda.is_available():
        return "bf16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if "amx_bf16" in flags or "avx512_bf16" in flags else "no"
