"""core/models/flow_matching.py: the straight path, its velocity target, σ's sampling, and its samplers."""
import diffusers
import pytest
import torch

from core import schedulers
from core.hub import load_model
from core.models.ddpm import DDPM, DDPMConfig
from core.train import train
from models.test_diffusion import TINY, fixed_model

FLOW = dict(prediction_type="flow_prediction")


@pytest.mark.parametrize("scheduler,steps", [("euler", 1), ("euler", 7), ("heun", 1), ("heun", 4)])
def test_flow_samplers_follow_the_straight_path_of_a_one_image_dataset_exactly(scheduler, steps, monkeypatch):
    """For data that is one image x*, the true velocity at x_σ is (x_σ − x*)/σ: every path is a straight line to
    x*, so Euler lands on x* in any number of steps, even one, and Heun agrees (its two slopes are equal)."""
    model = fixed_model(**FLOW)
    target = torch.rand(1, 1, 8, 8) * 2 - 1
    monkeypatch.setattr(model, "predict", lambda x, t, labels, w: (x - target) / (float(t) / 1000))
    images = model.sample(3, steps=steps, scheduler=scheduler, seed=0)
    torch.testing.assert_close(images, target.expand(3, -1, -1, -1), rtol=0, atol=1e-5)

def test_heun_runs_the_network_twice_per_step_but_the_last_and_yields_once_per_step():
    model = fixed_model(**FLOW)
    calls = []
    predict = model.predict
    model.predict = lambda *args: calls.append(float(args[1])) or predict(*args)
    steps = list(model.denoise(2, 5, "heun", seed=0))
    assert [i for i, _, _ in steps] == [0, 1, 2, 3, 4] and len(calls) == 2 * 5 - 1
    assert calls[0] == 1000.0 and calls[1] == calls[2] > calls[3] == calls[4]      # each σ' visited twice

def test_flow_training_draws_sigma_as_asked_and_the_target_is_the_velocity(digits):
    """The network sees t = σ T; uniform σ puts ~46% of the draws in the middle (0.27, 0.73), logit-normal ~68%;
    and at a given σ the loss is ‖(ε − x_0) − v̂‖², so a network that outputs ε − x_0 scores zero."""
    batch = next(digits.batches(512, seed=0, epoch=0))
    shares = {}
    for sampling in ("uniform", "logit_normal"):
        model = DDPM(DDPMConfig(**TINY, **FLOW, time_sampling=sampling))
        seen = []
        model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
        model.optimizer = torch.optim.SGD(model.unet.parameters(), lr=0.0)
        torch.manual_seed(0)
        model.training_step(batch, 0)
        sigma = seen[0] / 1000
        assert 0 <= sigma.min() and sigma.max() <= 1
        shares[sampling] = float(((sigma > 0.27) & (sigma < 0.73)).float().mean())
    assert 0.38 < shares["uniform"] < 0.54 and 0.6 < shares["logit_normal"] < 0.76
    model = DDPM(DDPMConfig(**TINY, **FLOW))
    x0, eps, t = batch.images, torch.randn_like(batch.images), torch.full((len(batch.images),), 300.0)
    x_t = model.noise_scheduler.scale_noise(x0, t, eps)
    torch.testing.assert_close(x_t, 0.7 * x0 + 0.3 * eps)
    torch.testing.assert_close(model.predicted_x0(eps - x0, x_t, torch.tensor(300.0)), x0, rtol=1e-5, atol=1e-5)

def test_flow_and_diffusion_refuse_each_others_samplers_and_min_snr():
    with pytest.raises(ValueError, match=r"a flow-matching model samples with a scheduler of \['euler', 'heun'\]"):
        fixed_model(**FLOW).sample(2, steps=2, scheduler="dpm_solver")
    with pytest.raises(ValueError, match="min-SNR weighting is defined for diffusion"):
        DDPM(DDPMConfig(**TINY, **FLOW, snr_gamma=5.0))
    with pytest.raises(ValueError, match="time_sampling"):
        DDPM(DDPMConfig(**TINY, **FLOW, time_sampling="beta"))
    assert type(fixed_model(**FLOW).scheduler()) is schedulers.FlowMatchEulerDiscreteScheduler      # the defaults
    assert type(fixed_model().scheduler()) is schedulers.DPMSolverMultistepScheduler

def test_flow_run_exports_a_scheduler_config_that_diffusers_reads(tiny_config, tmp_path):
    import dataclasses
    cfg = dataclasses.replace(tiny_config, max_steps=4, checkpoint_every=0, eval_size=32)
    model = DDPM(DDPMConfig(**TINY, **FLOW, shift=2.0, eval_steps=2))
    folder = train(model, cfg, "ddpm") / "model"
    scheduler = diffusers.FlowMatchHeunDiscreteScheduler.from_pretrained(folder)
    assert scheduler.config.shift == 2.0
    loaded = load_model(folder).set_precision(model.precision)
    assert loaded.flow and loaded.config.shift == 2.0
    torch.testing.assert_close(loaded.sample(2, steps=3, scheduler=scheduler, seed=1),
                               model.sample(2, steps=3, scheduler="heun", seed=1))
