import json

import diffusers
import pytest
import torch

from core.hub import load_model
from core.models.ddpm import DDPM, DDPMConfig
from core.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from core.train import train

TINY = dict(image_size=8, widths="16,32", ema_decay=0.9)


def fixed_model(**options) -> DDPM:
    """An untrained model whose output is not zero, to compare samplers on a fixed function."""
    model = DDPM(DDPMConfig(**{**TINY, **options}))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    model.ema.average.load_state_dict(model.unet.state_dict())
    return model.eval()


@pytest.mark.parametrize("prediction_type,snr_gamma", [("epsilon", 0.0), ("sample", 0.0), ("v_prediction", 0.0),
                                                       ("epsilon", 5.0), ("v_prediction", 5.0)])
def test_training_step_gives_a_finite_loss_and_overfits_one_batch(prediction_type, snr_gamma, digits):
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**TINY, prediction_type=prediction_type, snr_gamma=snr_gamma))
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=3e-3)
    model.optimizer = optimizer
    batch = next(digits.batches(32, seed=0, epoch=0))
    losses = [float(model.training_step(batch, step)["loss/denoise"]) for step in range(60)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10])     # t and ε are redrawn each step: a noisy curve


@pytest.mark.parametrize("prediction_type", ("epsilon", "sample", "v_prediction"))
def test_min_snr_weights_make_every_target_the_clipped_x0_loss(prediction_type):
    """λ(t)·‖target − f‖² equals min(SNR, γ)·‖x_0 − x̂_0‖² for each prediction type (Hang et al. 2023, Sec. 3.4)."""
    model = DDPM(DDPMConfig(**TINY, prediction_type=prediction_type, snr_gamma=5.0))
    t = torch.tensor([0, 50, 200, 999])
    x0, eps, error = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), 0.1 * torch.randn(4, 1, 8, 8)
    s = model.noise_scheduler
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = s.add_noise(x0, eps, t)
    target = {"epsilon": eps, "sample": x0, "v_prediction": s.get_velocity(x0, eps, t)}[prediction_type]
    x0_hat = {"epsilon": (x_t - (1 - abar).sqrt() * (eps + error)) / abar.sqrt(), "sample": x0 + error,
              "v_prediction": abar.sqrt() * x_t - (1 - abar).sqrt() * (target + error)}[prediction_type]
    snr = (abar / (1 - abar)).flatten()
    weighted = model.loss_weights(t) * (error ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * ((x0 - x0_hat) ** 2).sum(dim=(1, 2, 3)),
                               rtol=1e-3, atol=1e-6)


def test_min_snr_gamma_must_not_be_negative():
    with pytest.raises(ValueError, match="snr_gamma"):
        DDPM(DDPMConfig(**TINY, snr_gamma=-1.0))


def test_label_dropout_trains_the_null_label(digits):
    model = DDPM(DDPMConfig(**TINY, num_classes=10, label_dropout=0.5))
    seen = []
    model.unet.label_embedding.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    model.optimizer = torch.optim.Adam(model.unet.parameters())
    model.training_step(next(digits.batches(256, seed=0, epoch=0)), 0)
    null_share = (seen[0] == 10).float().mean()
    assert 0.35 < null_share < 0.65


def test_guidance_scale_mixes_conditional_and_unconditional_predictions():
    """w = 1: the conditional prediction; w = 0: the unconditional one; w = 3: ε_∅ + 3 (ε_y − ε_∅)."""
    model = fixed_model(num_classes=4)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor(500), torch.tensor([1, 2])
    net = model.denoiser
    cond, uncond = net(x, t, y), net(x, t, torch.tensor([4, 4]))
    torch.testing.assert_close(model.predict(x, t, y, 1.0), cond)
    torch.testing.assert_close(model.predict(x, t, y, 0.0), uncond, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.predict(x, t, y, 3.0), uncond + 3 * (cond - uncond), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler"))
def test_our_sampling_loop_takes_diffusers_schedulers_and_agrees_with_ours(name):
    """A whole trajectory with a fixed model: diffusers' scheduler driving our U-Net gives our scheduler's result."""
    model = fixed_model()
    steps = 50 if name != "DDPMScheduler" else 20
    mine = model.sample(4, steps=steps, scheduler={"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler,
                                                   "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}[name](),
                        seed=3)
    theirs = model.sample(4, steps=steps, scheduler=getattr(diffusers, name)(), seed=3)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_sample_is_seeded_and_returns_the_denoising_sequence():
    model = fixed_model(num_classes=3)
    a, frames = model.sample(5, steps=6, scheduler="ddim", seed=7, guidance_scale=2.0, return_intermediates=True)
    b = model.sample(5, steps=6, scheduler="ddim", seed=7, guidance_scale=2.0)
    c = model.sample(5, steps=6, scheduler="ddim", seed=8, guidance_scale=2.0)
    assert a.shape == (5, 1, 8, 8) and frames.shape == (6, 5, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(frames[-1], a)
    assert a.min() >= -1 and a.max() <= 1


def test_ddim_eta_zero_sampling_is_deterministic_across_generators():
    """η = 0: x_0 is a function of x_T alone, so only the seed of x_T matters."""
    model = fixed_model()
    noise = model.noise(3, seed=1)
    runs = [list(model.denoise(3, 8, "ddim", seed=s, noise=noise))[-1][1] for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "steps must be an integer from 1 to 1000"), (dict(steps=1001), "from 1 to 1000"),
    (dict(steps=2.5), "steps must be an integer"), (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=50.0), "guidance_scale"), (dict(eta=-0.1), "eta"), (dict(n=0), "positive integer"),
    (dict(label=3), "unconditional"), (dict(scheduler="euler"), "scheduler must be one of"),
])
def test_bad_sampling_arguments_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fixed_model().sample(**{"n": 2, "steps": 2, **kwargs})


def test_conditional_labels_are_checked():
    model = fixed_model(num_classes=3)
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        model.sample(2, steps=2, label=3)
    assert model.labels_for(4, None).tolist() == [0, 1, 2, 0]
    assert model.labels_for(2, 1).tolist() == [1, 1]


def test_training_run_exports_ema_weights_and_a_diffusers_scheduler_config(tmp_config_ddpm):
    model, cfg = tmp_config_ddpm
    run = train(model, cfg, "ddpm")
    folder = run / "model"
    loaded = load_model(folder)
    assert loaded.ema is None and loaded.config.ema_decay == 0.0          # the EMA is the shipped weights
    for key, value in model.ema.average.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[key], value)
    loaded.set_precision(model.precision)          # the run's bf16 stays on the trained model; sample alike
    torch.testing.assert_close(loaded.sample(2, steps=3, seed=1), model.sample(2, steps=3, seed=1))
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder)
    assert scheduler.config.num_train_timesteps == 1000
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "DDPM"
    assert (folder / "samples.png").is_file()


@pytest.fixture
def tmp_config_ddpm(tiny_config):
    import dataclasses
    cfg = dataclasses.replace(tiny_config, max_steps=6, checkpoint_every=3, eval_size=32, mixed_precision="bf16")
    return DDPM(DDPMConfig(**TINY, eval_steps=3)), cfg


def test_dpm_solver_thresholds_only_for_epsilon_prediction():
    """ε-prediction amplifies ε̂'s errors by 1/α_t in x̂_0 and gets dynamic thresholding; v-prediction does not."""
    assert DDPM(DDPMConfig(**TINY)).scheduler("dpm_solver").config.thresholding
    v_model = DDPM(DDPMConfig(**TINY, prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"))
    assert not v_model.scheduler("dpm_solver").config.thresholding
    assert v_model.scheduler("dpm_solver", thresholding=True).config.thresholding
