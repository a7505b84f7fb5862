import json
import math

import diffusers
import pytest
import torch

from core.config import TrainConfig
from core.hub import load_model
from core.models.ddpm import DDPM, DDPMConfig, own_samplers
from core import schedulers
from core.train import train

TINY = dict(image_size=8, widths="16,32", ema_decay=0.9)


def fixed_model(**options) -> DDPM:
    """An untrained model whose output is not zero, to compare samplers on a fixed function."""
    model = DDPM(DDPMConfig(**{**TINY, **options}))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    model.ema.average.load_state_dict(model.unet.state_dict())
    return model.eval()


@pytest.mark.parametrize("prediction_type,snr_gamma", [("epsilon", 0.0), ("sample", 0.0), ("v_prediction", 0.0),
                                                       ("epsilon", 5.0), ("v_prediction", 5.0),
                                                       ("flow_prediction", 0.0), ("edm", 0.0)])
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


@pytest.mark.parametrize("name", ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                  "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                                  "EDMEulerScheduler"))
def test_our_sampling_loop_takes_diffusers_schedulers_and_agrees_with_ours(name):
    """A whole trajectory with a fixed model: diffusers' scheduler driving our U-Net gives our scheduler's result."""
    kind = "flow_prediction" if name.startswith("Flow") else "edm" if name.startswith("EDM") else "epsilon"
    model = fixed_model(prediction_type=kind)
    steps = 50 if name != "DDPMScheduler" else 20
    mine = model.sample(4, steps=steps, scheduler=getattr(schedulers, name)(), seed=3)
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
    (dict(label=3), "unconditional"), (dict(scheduler="euler"), "a diffusion model samples with a scheduler of"),
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


@pytest.mark.parametrize("name", ("ddim", "ddpm"))
def test_v_prediction_steps_without_clipping_from_pure_noise_and_epsilon_keeps_diffusers_defaults(name):
    """A v-model's DDIM/DDPM: no x̂_0 clipping, first step at t = T − 1; an ε-model keeps clipping and "leading"."""
    v_model = DDPM(DDPMConfig(**TINY, prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"))
    v_scheduler, eps_scheduler = v_model.scheduler(name), DDPM(DDPMConfig(**TINY)).scheduler(name)
    v_scheduler.set_timesteps(20), eps_scheduler.set_timesteps(20)
    assert not v_scheduler.config.clip_sample and int(v_scheduler.timesteps[0]) == 999
    assert eps_scheduler.config.clip_sample and int(eps_scheduler.timesteps[0]) == 950
    assert v_model.scheduler(name, clip_sample=True).config.clip_sample            # asked for, it clips


# ------------------------------------------------------------------------------------------------- flow matching
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


@pytest.mark.parametrize("scheduler", ("dpm_solver", "ddim", "ddpm"))
def test_zero_terminal_snr_trains_on_pure_noise_and_samples_from_t_equal_T(scheduler, digits):
    model = fixed_model(prediction_type="v_prediction", zero_terminal_snr=True)
    assert model.noise_scheduler.alphas_cumprod[-1] == 0                   # x_T holds nothing of x_0
    sampler = model.scheduler(scheduler)
    sampler.set_timesteps(5)
    assert int(sampler.timesteps[0]) == 999                                  # sampling starts at t = T
    images = model.sample(2, steps=5, scheduler=scheduler, seed=0)
    assert torch.isfinite(images).all() and images.std() > 0
    model.optimizer = torch.optim.Adam(model.unet.parameters())
    assert torch.isfinite(model.training_step(next(digits.batches(16, seed=0, epoch=0)), 0)["loss/denoise"])
    with pytest.raises(ValueError, match="zero terminal SNR needs v or x_0 prediction"):
        DDPM(DDPMConfig(**TINY, zero_terminal_snr=True))


@pytest.mark.parametrize("precision", ("no", "bf16"))
def test_sampling_runs_the_unet_in_channels_last_with_the_same_images(precision):
    """The sampling loop puts the denoiser in the memory format the family trains in (channels_last, faster in
    oneDNN at both precisions); the images are the NCHW ones up to float rounding."""
    model = fixed_model().set_precision(precision)
    nhwc = lambda: model.denoiser.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    model.channels_last = False
    nchw = model.sample(4, steps=3, scheduler="ddim")
    assert not nhwc()
    model.channels_last = True
    tolerance = dict(atol=1e-5, rtol=1e-4) if precision == "no" else dict(atol=0.05, rtol=0.05)
    torch.testing.assert_close(model.sample(4, steps=3, scheduler="ddim"), nchw, **tolerance)
    assert nhwc()


# ---------------------------------------------------------------------------------------------------------- EDM
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


def test_autoguidance_pushes_the_model_away_from_its_guide_and_ships_in_one_checkpoint(tmp_path):
    """D̃ = G + w (D − G) on the network outputs; w = 1 is the model alone; the pair loads back as one model whose
    own samples (the card's) use the attached scale."""
    torch.manual_seed(0)
    model, guide = fixed_model(prediction_type="edm"), fixed_model(prediction_type="edm", widths="8,16")
    guided = model.with_guide(guide, 1.5)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.3)
    strong, weak = model.predict(x, t, None, 1.0), guide.predict(x, t, None, 1.0)
    assert not torch.allclose(strong, weak)
    torch.testing.assert_close(guided.predict(x, t, None, 1.0), strong)
    torch.testing.assert_close(guided.predict(x, t, None, 2.5), weak + 2.5 * (strong - weak), rtol=1e-4, atol=1e-5)
    guided.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.guided and not model.guided and loaded.config.eval_guidance == 1.5
    torch.testing.assert_close(loaded.predict(x, t, None, 2.5), guided.predict(x, t, None, 2.5))
    own = loaded.evaluation_samples(3)[0]                  # the card's samples, and sample()'s default: w = 1.5
    torch.testing.assert_close(own, loaded.sample(3, loaded.config.eval_steps, None, 0, guidance_scale=1.5))
    torch.testing.assert_close(own, loaded.sample(3, loaded.config.eval_steps, None, 0))
    assert not torch.allclose(own, loaded.sample(3, loaded.config.eval_steps, None, 0, guidance_scale=1.0))


@pytest.mark.parametrize("change,message", [
    (dict(guide=dict(prediction_type="v_prediction")), r"these differ: \['prediction_type'\]"),
    (dict(guide=dict(sigma_data=0.7)), r"these differ: \['sigma_data'\]"),
    (dict(model=dict(num_classes=3)), "autoguidance takes an unconditional model"),
    (dict(scale=float("nan")), "scale must lie in"), (dict(scale=21.0), "scale must lie in")])
def test_a_guide_that_does_not_fit_is_refused(change, message):
    model = fixed_model(prediction_type="edm", **change.get("model", {}))
    guide = fixed_model(**{"prediction_type": "edm", "widths": "8,16", **change.get("guide", {})})
    with pytest.raises(ValueError, match=message):
        model.with_guide(guide, change.get("scale", 1.5))


def test_a_model_samples_with_its_own_scheduler_and_says_which_names_fit():
    """eval_sampler picks the default scheduler (here the SDE form of DPM-Solver++, with fresh noise at every step);
    the other names stay available, the own one first; a name of another objective is refused; a config read
    without loading (the sampler app's) falls back to the objective's default for a name that does not fit."""
    model = fixed_model(prediction_type="v_prediction", eval_sampler="dpm_solver_sde")
    assert model.default_sampler == "dpm_solver_sde" and list(model.samplers)[1:] == ["dpm_solver", "ddim", "ddpm"]
    assert model.scheduler().config.algorithm_type == "sde-dpmsolver++"
    assert model.scheduler("dpm_solver").config.algorithm_type == "dpmsolver++"
    torch.testing.assert_close(model.sample(2, steps=4, seed=0), model.sample(2, steps=4, scheduler="dpm_solver_sde",
                                                                              seed=0))
    assert not torch.allclose(model.sample(2, steps=4, seed=0), model.sample(2, steps=4, scheduler="dpm_solver", seed=0))
    assert fixed_model(prediction_type="v_prediction").default_sampler == "dpm_solver"
    with pytest.raises(ValueError, match=r"eval_sampler must be one of \['edm_dpm_solver', 'edm_euler', 'edm_heun'\]"):
        DDPM(DDPMConfig(**TINY, prediction_type="edm", eval_sampler="dpm_solver_sde"))
    with pytest.raises(ValueError, match=r"eval_sampler must be one of .* got \['ddim'\]"):     # a config's bad JSON
        DDPM(DDPMConfig(**TINY, eval_sampler=["ddim"]))
    assert own_samplers({"prediction_type": "epsilon", "eval_sampler": "ddpm"}) == ("ddpm", "dpm_solver",
                                                                                   "dpm_solver_sde", "ddim")
    for odd in ("euler", ["ddim"], None, 3):
        assert own_samplers({"prediction_type": "epsilon", "eval_sampler": odd})[0] == "dpm_solver"
    guided = model.with_guide(fixed_model(prediction_type="v_prediction", widths="8,16"), 1.5, "ddpm")
    assert guided.default_sampler == "ddpm"
    assert model.with_guide(fixed_model(prediction_type="v_prediction", widths="8,16"), 1.5).default_sampler == \
        "dpm_solver_sde"


def test_a_guided_model_is_for_sampling_not_training():
    guided = fixed_model(prediction_type="edm").with_guide(fixed_model(prediction_type="edm", widths="8,16"), 1.5)
    with pytest.raises(ValueError, match="train the model and its guide as two runs"):
        guided.configure_optimizers(TrainConfig())
    with pytest.raises(ValueError, match="built for unconditional models"):
        DDPM(DDPMConfig(**TINY, num_classes=3, guide_widths="8,16"))
    with pytest.raises(ValueError, match="autoguidance takes an unconditional model without a guide"):
        guided.with_guide(fixed_model(prediction_type="edm", widths="8,16"), 1.5)


def test_fine_tuning_starts_from_the_shipped_weights_without_the_guide(tmp_path):
    """A shipped folder (EMA weights only, a guide attached) gives the training model its weights, twice: as the
    weights trained and as the start of the moving average; the guide is not trained and is dropped."""
    model = fixed_model(prediction_type="v_prediction")
    for _ in range(3):                                          # the average and the weights part ways
        torch.nn.init.normal_(model.unet.conv_in.weight)
        model.ema.update(model.unet)
    model.exported().with_guide(fixed_model(prediction_type="v_prediction", widths="8,16"), 1.5) \
        .save_pretrained(tmp_path / "shipped")
    shipped = load_model(tmp_path / "shipped")
    config = shipped.fine_tuning_config()
    assert config.guide_widths == "" and config.ema_decay == DDPMConfig.ema_decay and config.eval_guidance == 1.5
    tuned = DDPM(config)
    tuned.init_from(shipped)
    for weights in (tuned.unet, tuned.ema.average):
        for (name, a), b in zip(weights.state_dict().items(), model.ema.average.state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(tuned.unet.conv_in.weight, model.unet.conv_in.weight)      # the average, not the last
