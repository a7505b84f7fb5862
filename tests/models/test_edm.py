"""core/models/edm.py: EDM's log-normal σ, its preconditioned target, its network time and its samplers."""
import math

import diffusers
import pytest
import torch

from core import schedulers
from core.hub import load_model
from core.models.ddpm import DDPM, DDPMConfig
from core.train import train
from models.test_diffusion import TINY, fixed_model

EDM = dict(prediction_type="edm")


def test_edm_training_draws_log_normal_sigma_and_its_target_makes_d_the_clean_image(digits):
    """ln σ ~ N(−1.2, 1.2²): the network sees t = 1000 c_noise = 250 ln σ, so t/250 has that mean and spread; and
    the output F* = (x_0 − c_skip x_σ)/c_out is the one whose denoiser D = c_skip x_σ + c_out F* is x_0 exactly,
    at which the training loss is zero."""
    batch = next(digits.batches(512, seed=0, epoch=0))
    model = DDPM(DDPMConfig(**TINY, **EDM))
    seen = []
    model.unet.register_forward_pre_hook(lambda module, args: seen.append(args))
    model.optimizer = torch.optim.SGD(model.unet.parameters(), lr=0.0)
    torch.manual_seed(0)
    model.training_step(batch, 0)
    net_input, t = seen[0][0], seen[0][1]
    log_sigma = t / 250
    assert abs(float(log_sigma.mean()) + 1.2) < 0.15 and abs(float(log_sigma.std()) - 1.2) < 0.1
    sigma = (t / 250).exp().view(-1, 1, 1, 1)
    eps = (net_input * (sigma ** 2 + 0.25).sqrt() - batch.images) / sigma      # the input is c_in (x_0 + σ ε)
    assert abs(float(eps.mean())) < 0.02 and abs(float(eps.std()) - 1) < 0.02
    sigma = torch.tensor(0.7)
    x0, eps = batch.images[:4], torch.randn(4, 1, 8, 8)
    x_sigma = x0 + sigma * eps
    c_skip, c_out, _ = schedulers.edm.edm_scalings(sigma, 0.5)
    exact = (x0 - c_skip * x_sigma) / c_out
    torch.testing.assert_close(model.predicted_x0(exact, x_sigma, 0.25 * sigma.log()), x0, rtol=1e-4, atol=1e-5)

def test_edm_heun_runs_the_network_twice_per_step_but_the_last_and_dpm_solver_once_per_step():
    model = fixed_model(**EDM)
    calls = []
    predict = model.predict
    model.predict = lambda *args: calls.append(float(model.network_time(args[1]))) or predict(*args)
    steps = list(model.denoise(2, 5, "edm_heun", seed=0))
    assert [i for i, _, _ in steps] == [0, 1, 2, 3, 4] and len(calls) == 2 * 5 - 1
    assert calls[0] == pytest.approx(250 * math.log(80.0)) and calls[1] == calls[2] > calls[3] == calls[4]
    assert calls[-1] == pytest.approx(250 * math.log(0.002), rel=1e-5)
    heun_noise_levels, calls[:] = sorted(set(calls)), []
    assert model.default_sampler == "edm_dpm_solver" and len(list(model.denoise(2, 5, seed=0))) == 5
    assert calls == pytest.approx(sorted(heun_noise_levels, reverse=True), rel=1e-5)   # the same 5 σ's, once each

def test_edm_refuses_other_samplers_and_min_snr_and_exports_a_config_diffusers_samples_with(tiny_config):
    import dataclasses
    with pytest.raises(ValueError, match=r"an? EDM model samples with a scheduler of "
                                         r"\['edm_dpm_solver', 'edm_euler', 'edm_heun'\]"):
        fixed_model(**EDM).sample(2, steps=2, scheduler="dpm_solver")
    with pytest.raises(ValueError, match="a diffusion model samples"):
        fixed_model().sample(2, steps=2, scheduler="edm_heun")
    with pytest.raises(ValueError, match="min-SNR weighting is defined for diffusion"):
        DDPM(DDPMConfig(**TINY, **EDM, snr_gamma=5.0))
    cfg = dataclasses.replace(tiny_config, max_steps=4, checkpoint_every=0, eval_size=32)
    model = DDPM(DDPMConfig(**TINY, **EDM, eval_steps=2))
    folder = train(model, cfg, "ddpm") / "model"
    scheduler = diffusers.EDMEulerScheduler.from_pretrained(folder)
    loaded = load_model(folder).set_precision(model.precision)
    assert loaded.edm and type(loaded.scheduler()) is schedulers.EDMDPMSolverMultistepScheduler
    torch.testing.assert_close(loaded.sample(2, steps=3, scheduler=scheduler, seed=1),
                               model.sample(2, steps=3, scheduler="edm_euler", seed=1))
    scheduler = diffusers.EDMDPMSolverMultistepScheduler.from_pretrained(folder)
    torch.testing.assert_close(loaded.sample(2, steps=4, scheduler=scheduler, seed=1),
                               model.sample(2, steps=4, scheduler="edm_dpm_solver", seed=1))
