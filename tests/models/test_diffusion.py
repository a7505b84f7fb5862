"""core/models/diffusion.py: what every objective shares (the training step, guidance, labels, sampling, export,
autoguidance, fine-tuning) and the sampling loop `denoising_loop`. `TINY` and `fixed_model` serve the objectives'
tests too (test_ddpm.py, test_flow_matching.py, test_edm.py)."""
import json

import diffusers
import pytest
import torch

from core import schedulers
from core.config import TrainConfig
from core.hub import load_model
from core.models.ddpm import DDPM, DDPMConfig, own_samplers
from core.models.diffusion import denoising_loop
from core.schedulers.base import ForeignScheduler
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
    nhwc_images = model.sample(4, steps=3, scheduler="ddim")
    assert nhwc()
    if precision == "no":
        torch.testing.assert_close(nhwc_images, nchw, atol=1e-5, rtol=1e-4)
    else:        # bf16 rounds differently in each layout (emulated bf16 on an AVX2 CPU: one pixel in 256 off by 0.07)
        difference = (nhwc_images - nchw).abs()
        assert difference.mean() < 0.01 and difference.max() < 0.2, (difference.mean(), difference.max())

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
    assert model.default_sampler == "dpm_solver_sde" and list(model.samplers)[1:] == ["dpm_solver", "unipc", "ddim", "ddpm"]
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
                                                                                   "dpm_solver_sde", "unipc", "ddim")
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


# ------------------------------------------------------------------------------------------- the sampling loop
def test_denoising_loop_with_our_ddpm_scheduler_is_the_hand_written_loop():
    """Ho et al. Algorithm 2 written out: x_T = z, then for each timestep ε̂ = f(x_t, t), x̂_0 by Eq. 15 and
    x_{t−1} = step(ε̂, t, x_t) with the steps' noise from one generator; the loop yields the same x_{t−1} and x̂_0."""
    network = lambda x, t: 0.3 * x + 1e-4 * t.float()                          # any function of (x_t, t)
    scheduler, by_hand = schedulers.DDPMScheduler(), schedulers.DDPMScheduler()

    def eq_15(eps, x, t):
        abar = by_hand.alphas_cumprod[int(t)]
        return (x - (1 - abar) ** 0.5 * eps) / abar ** 0.5

    noise = torch.randn(2, 1, 8, 8)
    yielded = list(denoising_loop(network, scheduler, noise, 6, eq_15, torch.Generator().manual_seed(3)))
    by_hand.set_timesteps(6)
    x, generator = noise, torch.Generator().manual_seed(3)
    assert [i for i, _, _ in yielded] == list(range(6)) and len(by_hand.timesteps) == 6
    for (_, x_prev, x0), t in zip(yielded, by_hand.timesteps):
        eps = network(x, t)
        abar = by_hand.alphas_cumprod[int(t)]
        x0_by_hand = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        x = by_hand.step(eps, t, x, generator=generator).prev_sample
        assert torch.equal(x_prev, x)
        torch.testing.assert_close(x0, x0_by_hand)


@pytest.mark.parametrize("name", sorted(schedulers.SCHEDULERS))
def test_every_scheduler_declares_what_the_loop_reads(name):
    """The loop reads these of any genlab scheduler without probing: σ_init, c_in, η or not, Heun's state."""
    scheduler = schedulers.SCHEDULERS[name]()
    scheduler.set_timesteps(4)
    x = torch.randn(1, 1, 4, 4)
    assert scheduler.init_noise_sigma >= 1.0 and scheduler.takes_eta == (name == "ddim")
    assert scheduler.state_in_first_order is True and scheduler.order in (1, 2)
    assert scheduler.scale_model_input(x, scheduler.timesteps[0]).shape == x.shape


def test_eta_reaches_the_schedulers_that_take_it_ours_and_diffusers():
    """η goes to DDIM (ours says so by `takes_eta`, diffusers' by step's signature, read once by ForeignScheduler)
    and to no other scheduler."""
    assert ForeignScheduler(diffusers.DDIMScheduler()).takes_eta
    assert not ForeignScheduler(diffusers.DDPMScheduler()).takes_eta
    model = fixed_model()
    ours = model.sample(2, steps=5, scheduler=schedulers.DDIMScheduler(), seed=0, eta=1.0)
    torch.testing.assert_close(ours, model.sample(2, steps=5, scheduler=diffusers.DDIMScheduler(), seed=0, eta=1.0),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, model.sample(2, steps=5, scheduler=schedulers.DDIMScheduler(), seed=0))
    assert torch.equal(model.sample(2, steps=5, scheduler="ddpm", seed=0, eta=1.0),
                       model.sample(2, steps=5, scheduler="ddpm", seed=0))


def test_sampling_defaults_follow_the_models_own_settings():
    """sample() and denoise() without steps take the model's eval_steps (the card's), as the app and the evaluation
    do; a Python user once got 20 steps from a model whose card was measured at 40."""
    model = DDPM(DDPMConfig(**TINY, eval_steps=3)).eval()
    assert len(list(model.denoise(2))) == 3
    torch.testing.assert_close(model.sample(2, seed=5), model.sample(2, 3, seed=5), rtol=0, atol=0)
    assert len(list(model.denoise(2, steps=4))) == 4
