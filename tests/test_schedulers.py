"""Our schedulers against diffusers' classes of the same name: step by step over a matrix of configurations, whole
trajectories, the forward process, and each other's scheduler_config.json. diffusers is a dependency: never skipped."""
import inspect
import itertools
import json

import diffusers
import pytest
import torch

from core import schedulers as ours
from core.schedulers.base import BETA_SCHEDULES, PREDICTION_TYPES, SPACINGS

NAMES = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
MATRIX = list(itertools.product(BETA_SCHEDULES, PREDICTION_TYPES, (False, True), SPACINGS, (10, 50, 1000)))


def pair(name: str, **options):
    return getattr(ours, name)(**options), getattr(diffusers, name)(**options)


def close(a, b):
    """Bit for bit: our arithmetic keeps diffusers' float32 order of operations."""
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def compare_trajectory(name: str, options: dict, steps: int, step_kwargs: dict, every: int = 1,
                       output_dtype: torch.dtype = torch.float32) -> int:
    """Step both with the same random model outputs and the same noise generator seed; every step starts from the
    same x_t (diffusers' previous output), so each step is compared on its own. Stateless schedulers may compare a
    subset of the timesteps (`every`); a multistep solver must run them all. Returns the number of steps compared."""
    mine, ref = pair(name, **options)
    mine.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(mine.timesteps, ref.timesteps)
    data = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 6, generator=data) * 3
    noise_mine, noise_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    takes_generator = "generator" in inspect.signature(ref.step).parameters      # not diffusers' UniPC
    compared = 0
    for i, t in enumerate(ref.timesteps):
        if i % every and i != len(ref.timesteps) - 1:
            continue
        model_output = torch.randn(x.shape, generator=data).to(output_dtype)
        a = mine.step(model_output, t, x, generator=noise_mine, **step_kwargs)
        b = ref.step(model_output, t, x, **({"generator": noise_ref} if takes_generator else {}), **step_kwargs)
        close(a.prev_sample, b.prev_sample)
        if hasattr(b, "pred_original_sample"):
            close(a.pred_original_sample, b.pred_original_sample)
        x = b.prev_sample
        compared += 1
    return compared


@pytest.mark.parametrize("beta_schedule,prediction_type,clip,spacing,steps", MATRIX)
def test_ddpm_step_matches_diffusers(beta_schedule, prediction_type, clip, spacing, steps):
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip,
                   timestep_spacing=spacing, variance_type="fixed_large" if steps == 50 else "fixed_small")
    assert compare_trajectory("DDPMScheduler", options, steps, {}, every=37 if steps == 1000 else 1) > 1


def test_ddpm_steps_without_set_timesteps_as_the_papers_sampler():
    """Before set_timesteps a DDPM step is t → t − 1 over all T (its scalars computed on the first step), as in
    diffusers; a timestep outside [0, T) is refused."""
    mine, ref = pair("DDPMScheduler")
    x, output = torch.randn(2, 1, 6, 6) * 3, torch.randn(2, 1, 6, 6)
    for t in (999, 500, 1, 0):
        a = mine.step(output, t, x, generator=torch.Generator().manual_seed(t))
        b = ref.step(output, t, x, generator=torch.Generator().manual_seed(t))
        close(a.prev_sample, b.prev_sample)
    with pytest.raises(ValueError, match="timestep 1000 is not in this scheduler's timesteps"):
        mine.step(output, 1000, x)


@pytest.mark.parametrize("eta", (0.0, 1.0))
@pytest.mark.parametrize("beta_schedule,prediction_type,clip,spacing,steps", MATRIX)
def test_ddim_step_matches_diffusers(beta_schedule, prediction_type, clip, spacing, steps, eta):
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip,
                   timestep_spacing=spacing)
    assert compare_trajectory("DDIMScheduler", options, steps, {"eta": eta}, every=37 if steps == 1000 else 1) > 1


@pytest.mark.parametrize("beta_schedule,prediction_type,thresholding,spacing,steps",
                         [m for m in MATRIX if m[4] != 1000 or (m[0] == "linear" and not m[2] and m[3] == "trailing")])
def test_dpm_solver_trajectory_matches_diffusers(beta_schedule, prediction_type, thresholding, spacing, steps):
    """Multistep: the whole trajectory, every step (1000 steps only for the linear schedule, to stay fast)."""
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, thresholding=thresholding,
                   timestep_spacing=spacing)
    assert compare_trajectory("DPMSolverMultistepScheduler", options, steps, {}) == steps


@pytest.mark.parametrize("output_dtype", (torch.bfloat16, torch.float64))
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", NAMES)
def test_a_model_output_of_another_dtype_follows_diffusers_promotion(name, prediction_type, output_dtype):
    """A bf16 network output (autocast) or a float64 one meeting a float32 x_t: each step's dtype and values are
    diffusers' (arithmetic done in place must not keep a narrower dtype than the plain expression gives)."""
    step_kwargs = {"eta": 1.0} if name == "DDIMScheduler" else {}
    assert compare_trajectory(name, dict(prediction_type=prediction_type), 10, step_kwargs,
                              output_dtype=output_dtype) == 10


@pytest.mark.parametrize("options", [dict(thresholding=True, clip_sample=False, dynamic_thresholding_ratio=0.9),
                                     dict(steps_offset=1), dict(clip_sample_range=0.5)])
@pytest.mark.parametrize("name", ("DDPMScheduler", "DDIMScheduler"))
def test_other_options_match_diffusers(name, options):
    assert compare_trajectory(name, options, 20, {}) == 20


@pytest.mark.parametrize("options", [dict(solver_order=1), dict(solver_type="heun"), dict(final_sigmas_type="sigma_min"),
                                     dict(euler_at_final=True), dict(lower_order_final=False)])
def test_dpm_solver_options_match_diffusers(options):
    assert compare_trajectory("DPMSolverMultistepScheduler", options, 20, {}) == 20


@pytest.mark.parametrize("solver", ((2, "midpoint"), (2, "heun"), (1, "midpoint")))
@pytest.mark.parametrize("prediction_type,spacing,steps", [("v_prediction", "trailing", 20), ("epsilon", "linspace", 10),
                                                           ("sample", "leading", 50), ("v_prediction", "linspace", 8)])
def test_sde_dpm_solver_matches_diffusers(solver, prediction_type, spacing, steps):
    """DPM-Solver++(2M) SDE: every step's update and its noise, drawn from a generator of the same seed."""
    options = dict(algorithm_type="sde-dpmsolver++", solver_order=solver[0], solver_type=solver[1],
                   prediction_type=prediction_type, timestep_spacing=spacing, beta_schedule="squaredcos_cap_v2")
    assert compare_trajectory("DPMSolverMultistepScheduler", options, steps, {}) == steps


def test_sde_dpm_solver_draws_fresh_noise_and_the_ode_none():
    """The same x_t and output give another x_{t−1} with another noise seed under the SDE, the same under the ODE;
    the algorithms genlab does not implement are refused by name."""
    x, output = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)
    for algorithm, differs in (("sde-dpmsolver++", True), ("dpmsolver++", False)):
        a, b = (ours.DPMSolverMultistepScheduler(algorithm_type=algorithm) for _ in range(2))
        a.set_timesteps(10)
        b.set_timesteps(10)
        t = a.timesteps[0]
        one = a.step(output, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        two = b.step(output, t, x, generator=torch.Generator().manual_seed(2)).prev_sample
        assert (not torch.equal(one, two)) == differs
    for algorithm in ("dpmsolver", "sde-dpmsolver"):
        with pytest.raises(ValueError, match="algorithm_type one of"):
            ours.DPMSolverMultistepScheduler(algorithm_type=algorithm)


# ---------------------------------------------------------------------------------------------------------- UniPC
def fake_network(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for a network, so each step's output depends on the trajectory."""
    return torch.tanh(0.7 * x + 0.001 * float(t)) + 0.1 * torch.sin(3 * x)


def compare_unipc_sampling(options: dict, steps: int, last_step_differs: bool = False) -> float:
    """Two independent whole samplings, ours and diffusers', each feeding its own x_t to `fake_network`: every
    step's x_{t−1} bit for bit (so no difference can hide behind a shared x_t). Returns the largest |difference|."""
    mine, ref = pair("UniPCMultistepScheduler", **options)
    mine.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(mine.timesteps, ref.timesteps) and torch.equal(mine.sigmas, ref.sigmas)
    x_mine = x_ref = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ref.timesteps):
        x_mine = mine.step(fake_network(x_mine, t), t, x_mine).prev_sample
        x_ref = ref.step(fake_network(x_ref, t), t, x_ref).prev_sample
        if last_step_differs and i == steps - 1:
            return 0.0
        close(x_mine, x_ref)
    assert x_mine.isfinite().all()
    return float((x_mine - x_ref).abs().max())


UNIPC_MATRIX = list(itertools.product((1, 2, 3), ("bh1", "bh2"), ("epsilon", "v_prediction"), (10, 25)))


@pytest.mark.parametrize("order,solver_type,prediction_type,steps", UNIPC_MATRIX)
def test_unipc_trajectory_matches_diffusers(order, solver_type, prediction_type, steps):
    """Orders 1-3, B(h) = h and e^h − 1, ε and v: every step equal, on a σ_min end (where diffusers' bh1 is finite)."""
    options = dict(solver_order=order, solver_type=solver_type, prediction_type=prediction_type,
                   beta_schedule="squaredcos_cap_v2", final_sigmas_type="sigma_min")
    assert compare_unipc_sampling(options, steps) == 0.0


@pytest.mark.parametrize("beta_schedule,prediction_type,thresholding,spacing,steps",
                         [m for m in MATRIX if m[4] != 1000 or (m[0] == "linear" and not m[2] and m[3] == "trailing")])
def test_unipc_step_matches_diffusers(beta_schedule, prediction_type, thresholding, spacing, steps):
    """The common matrix (β schedules, prediction types, thresholding, spacings) with random outputs, every step."""
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, thresholding=thresholding,
                   timestep_spacing=spacing)
    assert compare_trajectory("UniPCMultistepScheduler", options, steps, {}) == steps


@pytest.mark.parametrize("options", [dict(solver_order=3), dict(solver_order=1), dict(disable_corrector=[0, 1, 4]),
                                     dict(lower_order_final=False, final_sigmas_type="sigma_min", solver_order=3),
                                     dict(predict_x0=False, final_sigmas_type="sigma_min", solver_order=3),
                                     dict(predict_x0=False, final_sigmas_type="sigma_min", prediction_type="sample"),
                                     dict(steps_offset=1, timestep_spacing="leading"),
                                     dict(thresholding=True, sample_max_value=1.5, solver_order=3)])
@pytest.mark.parametrize("steps", (10, 25))
def test_unipc_options_match_diffusers(options, steps):
    assert compare_unipc_sampling(options, steps) == 0.0


def test_unipc_bh1_lands_on_x0_where_diffusers_returns_nan():
    """Departure: with B(h) = h and a final σ of 0, h = ∞ at the last step; its UniP-1 update needs no B(h) and
    lands on x̂_0, but diffusers multiplies an absent correction, 0, by B(h) = −∞ and returns NaN. Every step before
    the last is diffusers' bit for bit."""
    options = dict(solver_type="bh1", prediction_type="v_prediction")
    compare_unipc_sampling(options, 10, last_step_differs=True)
    mine, ref = pair("UniPCMultistepScheduler", **options)
    for scheduler in (mine, ref):
        scheduler.set_timesteps(4)
        x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            output = fake_network(x, t)
            last_x0 = mine.convert_model_output(output, x) if scheduler is mine and t == mine.timesteps[-1] else None
            x = scheduler.step(output, t, x).prev_sample
        if scheduler is mine:                            # the last UniP-1 step returns x̂_0 exactly
            assert torch.equal(x, last_x0)
        else:
            assert x.isnan().all()


def test_unipc_refuses_what_diverges_and_reads_dpm_solver_configs():
    """A final σ of 0 with the noise form or without lower_order_final: diffusers returns inf/NaN or a singular
    solve, ours says why. A DPM-Solver config (solver_type 'midpoint') becomes bh2, as diffusers reads it."""
    for bad in (dict(predict_x0=False), dict(lower_order_final=False), dict(solver_order=4), dict(solver_type="x")):
        with pytest.raises(ValueError, match="final σ of 0|solver_order 1, 2 or 3"):
            ours.UniPCMultistepScheduler(**bad)
    ours.UniPCMultistepScheduler(lower_order_final=False, solver_order=1)
    dpm = ours.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    mine = ours.UniPCMultistepScheduler.from_config(dpm.config)
    reference = diffusers.UniPCMultistepScheduler.from_config(diffusers.DPMSolverMultistepScheduler(**dpm.config).config)
    assert mine.config.solver_type == reference.config.solver_type == "bh2"
    assert {k: reference.config[k] for k in mine.config} == dict(mine.config)
    with pytest.raises(ValueError, match="repeats timesteps"):
        ours.UniPCMultistepScheduler().set_timesteps(1000)


def vp_gaussian(mean: float, std: float):
    """For data N(mean, std²) per pixel on the VP path x_t = α_t x_0 + σ_t ε: the exact x̂_0(x_t) = mean +
    α s²/(α² s² + σ²) (x_t − α mean), and the exact probability-flow ODE map from σ̃_a to σ̃_b."""
    alpha_sigma = lambda s: (1 / (s ** 2 + 1) ** 0.5, s / (s ** 2 + 1) ** 0.5)

    def x0_of(x, s):
        a, sg = alpha_sigma(s)
        return mean + a * std ** 2 / (a ** 2 * std ** 2 + sg ** 2) * (x - a * mean)

    def flow(x, s_from, s_to):
        (a, sg), (b, sb) = alpha_sigma(s_from), alpha_sigma(s_to)
        return b * mean + ((b ** 2 * std ** 2 + sb ** 2) / (a ** 2 * std ** 2 + sg ** 2)) ** 0.5 * (x - a * mean)
    return x0_of, flow


@pytest.mark.parametrize("solver_type", ("bh1", "bh2"))
def test_unipc_higher_orders_land_closer_on_an_exact_denoiser(solver_type):
    """On an exact x̂_0 (Gaussian data) the ODE's end point is known. Every order converges (40 steps land over 5x
    closer than 10), and at 40 steps UniPC-2 and UniPC-3 land over 4x closer than UniPC-1 (linear β, "linspace";
    max |error| bh1: 0.050, 0.0088, 0.0011; bh2: 0.056, 0.0055, 0.010; float32 coefficients set a floor near 1e-3)."""
    def error(order, steps):
        s = ours.UniPCMultistepScheduler(solver_order=order, solver_type=solver_type, prediction_type="sample",
                                         final_sigmas_type="sigma_min")
        s.set_timesteps(steps)
        x0_of, flow = vp_gaussian(0.3, 0.5)
        x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        truth = flow(x, s.sigmas[0].double(), s.sigmas[-1].double())
        for i, t in enumerate(s.timesteps):
            x = s.step(x0_of(x, s.sigmas[i].double()), t, x).prev_sample
        return float((x - truth).abs().max())
    at_40 = [error(order, 40) for order in (1, 2, 3)]
    assert all(at_40[order - 1] < error(order, 10) / 5 for order in (1, 2, 3))
    assert at_40[1] < at_40[0] / 4 and at_40[2] < at_40[0] / 4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_forward_process_matches_diffusers(name, beta_schedule):
    mine, ref = pair(name, beta_schedule=beta_schedule)
    torch.testing.assert_close(mine.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    x0, eps, t = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5), torch.tensor([0, 10, 500, 999])
    multistep = name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
    if multistep:                                 # diffusers' multistep add_noise reads the inference schedule
        mine.set_timesteps(10)
        ref.set_timesteps(10)
        t = ref.timesteps[[0, 3, 5, 9]]
    close(mine.add_noise(x0, eps, t), ref.add_noise(x0, eps, t))
    if not multistep:
        close(mine.get_velocity(x0, eps, t), ref.get_velocity(x0, eps, t))
    assert mine.init_noise_sigma == ref.init_noise_sigma and mine.order == ref.order
    assert torch.equal(mine.scale_model_input(x0, 5), ref.scale_model_input(x0, 5))


@pytest.mark.parametrize("name", NAMES)
def test_each_library_loads_the_others_config(name, tmp_path):
    options = dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing")
    mine, ref = pair(name, **options)
    mine.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    assert json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())["_class_name"] == name
    loaded_ref = getattr(diffusers, name).from_pretrained(tmp_path / "ours")
    loaded_mine = getattr(ours, name).from_pretrained(tmp_path / "theirs")
    for key, value in mine.config.items():
        assert loaded_ref.config[key] == value, key
        assert loaded_mine.config[key] == value, key
    # and the loaded pair still steps alike
    loaded_mine.set_timesteps(10)
    loaded_ref.set_timesteps(10)
    x, out = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    t = loaded_ref.timesteps[0]
    a = loaded_mine.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    seeded = {"generator": torch.Generator().manual_seed(0)} if name != "UniPCMultistepScheduler" else {}
    close(a, loaded_ref.step(out, t, x, **seeded).prev_sample)


def test_from_config_across_classes_keeps_the_noise_schedule():
    ddpm = ours.DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False)
    solver = ours.DPMSolverMultistepScheduler.from_config(ddpm.config)
    reference = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDPMScheduler(**ddpm.config).config)
    assert solver.config.beta_schedule == "scaled_linear" and solver.config.prediction_type == "v_prediction"
    assert {k: reference.config[k] for k in solver.config} == dict(solver.config)


def test_bad_options_and_steps_fail_clearly():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        ours.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    ours.DPMSolverMultistepScheduler(use_karras_sigmas=False)       # a neutral diffusers option loads
    with pytest.raises(ValueError, match="beta_schedule"):
        ours.DDIMScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="prediction_type"):
        ours.DDPMScheduler(prediction_type="noise")
    with pytest.raises(ValueError, match="from 1 to 1000"):
        ours.DDIMScheduler().set_timesteps(1001)
    with pytest.raises(ValueError, match="from 1 to 1000"):
        ours.DDPMScheduler().set_timesteps(0)
    for spacing in ("leading", "linspace"):      # 1000 steps repeat timesteps there
        with pytest.raises(ValueError, match="repeats timesteps"):
            ours.DPMSolverMultistepScheduler(timestep_spacing=spacing).set_timesteps(1000)
        ref = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
        ref.set_timesteps(1000)
        x = torch.randn(1, 1, 2, 2)
        try:                           # diffusers breaks here too: NaN samples or an IndexError past the end
            for t in ref.timesteps:
                x = ref.step(torch.randn(1, 1, 2, 2), t, x).prev_sample
            assert torch.isnan(x).all()
        except IndexError:
            pass
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.DDIMScheduler().step(torch.zeros(1), 10, torch.zeros(1))
    with pytest.raises(ValueError, match="cannot read"):
        ours.DDIMScheduler.from_pretrained("/nonexistent")
    with pytest.raises(TypeError, match="read-only"):
        ours.DDIMScheduler().config["beta_end"] = 0.5


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_noise_schedule_properties(beta_schedule):
    """Ho et al.: 0 < β_t < 1 and ᾱ_t decreases from ≈1 to ≈0, so x_T is (almost) pure noise."""
    s = ours.DDPMScheduler(beta_schedule=beta_schedule)
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    assert s.alphas_cumprod[0] > 0.99 and s.alphas_cumprod[-1] < 0.01


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not():
    s = ours.DDIMScheduler()
    s.set_timesteps(10)
    x, out, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), s.timesteps[2]
    a = s.step(out, t, x, eta=0.0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = s.step(out, t, x, eta=0.0, generator=torch.Generator().manual_seed(2)).prev_sample
    c = s.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    d = s.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b) and not torch.allclose(c, d)


def test_dpm_solver_recovers_x0_of_a_perfect_model():
    """With the exact ε of a single data point, the ODE solution is that point: the sampler must land on it."""
    s = ours.DPMSolverMultistepScheduler()
    s.set_timesteps(10)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    x = torch.randn(1, 1, 4, 4)
    for t in s.timesteps:
        abar = s.alphas_cumprod[t]
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()            # the ε that makes x̂_0 = x0 exactly
        x = s.step(eps, t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------- flow matching
FLOW_NAMES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@pytest.mark.parametrize("name", FLOW_NAMES)
@pytest.mark.parametrize("shift", (1.0, 3.0))
@pytest.mark.parametrize("steps", (1, 2, 10, 50, 1000))
def test_flow_match_trajectory_matches_diffusers(name, shift, steps):
    """σ's, timesteps and every step (Heun's guess and correction calls alike) bit for bit."""
    mine, ref = pair(name, shift=shift)
    assert torch.equal(mine.sigmas, ref.sigmas)
    calls = steps if mine.order == 1 else 2 * steps - 1        # Heun: a guess and a correction but at the last
    assert compare_trajectory(name, dict(shift=shift), steps, {}) == calls and mine.order == ref.order


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_flow_match_forward_path_and_configs_match_diffusers(name, tmp_path):
    mine, ref = pair(name, shift=2.5)
    x0, eps = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    for t in ref.timesteps[[0, 400, 999]]:                 # diffusers' scale_noise takes one of its timesteps
        ref._step_index = ref._begin_index = None
        close(mine.scale_noise(x0, t, eps), ref.scale_noise(x0, t[None], eps))
    mine.save_pretrained(tmp_path / "ours")
    assert getattr(diffusers, name).from_pretrained(tmp_path / "ours").config.shift == 2.5
    ref.save_pretrained(tmp_path / "theirs")
    assert getattr(ours, name).from_pretrained(tmp_path / "theirs").config == {"num_train_timesteps": 1000, "shift": 2.5}
    with pytest.raises(ValueError, match="shift must be positive"):
        getattr(ours, name)(shift=0.0)
    with pytest.raises(ValueError, match="set_timesteps"):
        getattr(ours, name)().step(x0, 1000.0, x0)
    done = getattr(ours, name)()
    done.set_timesteps(1)
    done.step(x0, 1000.0, x0)
    with pytest.raises(ValueError, match="all 1 steps are done"):
        done.step(x0, 1.0, x0)


def test_flow_and_diffusion_configs_do_not_leak_into_each_other():
    flow = ours.FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert dict(ours.DDIMScheduler.from_config(flow.config).config) == dict(ours.DDIMScheduler().config)
    assert ours.FlowMatchHeunDiscreteScheduler.from_config(ours.DDIMScheduler().config).config.shift == 1.0


# -------------------------------------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", ("v_prediction", "sample"))      # ε is undefined at SNR 0
@pytest.mark.parametrize("steps", (10, 50))
def test_zero_terminal_snr_matches_diffusers(name, beta_schedule, prediction_type, steps):
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, rescale_betas_zero_snr=True,
                   timestep_spacing="trailing")                              # Lin et al.: start at t = T
    mine, ref = pair(name, **options)
    close(mine.alphas_cumprod, ref.alphas_cumprod)
    assert compare_trajectory(name, options, steps, {}) == steps


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_zero_terminal_snr_ends_at_pure_noise_and_keeps_the_first_step(beta_schedule):
    """Lin et al. Algorithm 1: √ᾱ_T = 0 (x_T is noise alone), √ᾱ_1 unchanged, ᾱ_t still decreasing."""
    plain, rescaled = ours.DDPMScheduler(beta_schedule=beta_schedule), \
        ours.DDPMScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=True)
    assert plain.alphas_cumprod[-1] > 0 and rescaled.alphas_cumprod[-1] == 0
    torch.testing.assert_close(rescaled.alphas_cumprod[0], plain.alphas_cumprod[0])
    assert (rescaled.alphas_cumprod.diff() <= 0).all()


# ---------------------------------------------------------------------------------------------------------- EDM
EDM_MATRIX = list(itertools.product(("karras", "exponential"), ("epsilon", "v_prediction"), ("zero", "sigma_min"),
                                    (1, 10, 50)))


def same_edm_schedules(name: str, **options):
    """Ours and diffusers' class with the same σ's, timesteps (c_noise) and first sample's scale."""
    mine, ref = pair(name, **options)
    assert torch.equal(mine.sigmas, ref.sigmas) and torch.equal(mine.timesteps, ref.timesteps)
    assert mine.init_noise_sigma == ref.init_noise_sigma
    return mine, ref


def compare_edm_steps(mine, ref, steps: int, denoised: bool) -> None:
    """After set_timesteps(steps): the same schedule, then c_in of scale_model_input and every step's x_{i+1} (and
    D when `denoised`) bit for bit, the network outputs alternating float32 and bf16; the steps chain."""
    mine.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(mine.sigmas, ref.sigmas) and torch.equal(mine.timesteps, ref.timesteps)
    data = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 6, generator=data) * ref.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        close(mine.scale_model_input(x, t), ref.scale_model_input(x, t))
        output = torch.randn(x.shape, generator=data).to(torch.bfloat16 if i % 2 else torch.float32)
        a, b = mine.step(output, t, x), ref.step(output, t, x)
        close(a.prev_sample, b.prev_sample)
        if denoised:
            close(a.pred_original_sample, b.pred_original_sample)
        x = b.prev_sample
    assert x.isfinite().all()


@pytest.mark.parametrize("sigma_schedule,prediction_type,final,steps", EDM_MATRIX)
def test_edm_euler_matches_diffusers(sigma_schedule, prediction_type, final, steps):
    options = dict(sigma_schedule=sigma_schedule, prediction_type=prediction_type, final_sigmas_type=final)
    compare_edm_steps(*same_edm_schedules("EDMEulerScheduler", **options), steps, denoised=True)


EDM_DPM_MATRIX = list(itertools.product(("karras", "exponential"), ("epsilon", "v_prediction"), ("zero", "sigma_min"),
                                        ((2, "midpoint"), (2, "heun"), (1, "midpoint")), (1, 2, 10, 20)))


@pytest.mark.parametrize("sigma_schedule,prediction_type,final,solver,steps", EDM_DPM_MATRIX)
def test_edm_dpm_solver_matches_diffusers(sigma_schedule, prediction_type, final, solver, steps):
    """Bit for bit (`compare_edm_steps`); the multistep update keeps the previous D, so a mismatch would carry on."""
    order, solver_type = solver
    options = dict(sigma_schedule=sigma_schedule, prediction_type=prediction_type, final_sigmas_type=final,
                   solver_order=order, solver_type=solver_type)
    mine, ref = same_edm_schedules("EDMDPMSolverMultistepScheduler", **options)
    if final == "sigma_min" and solver == (2, "heun") and steps >= 15:   # h = 0 at the last step: 0/0
        with pytest.raises(ValueError, match="the 'heun' form divides 0 by 0"):
            mine.set_timesteps(steps)
        ref.set_timesteps(steps)
        x = torch.ones(1, 1, 2, 2)
        for t in ref.timesteps:
            x = ref.step(torch.zeros_like(x), t, x).prev_sample
        assert x.isnan().all()                                      # what diffusers returns instead
        return
    compare_edm_steps(mine, ref, steps, denoised=False)


@pytest.mark.parametrize("solver", ((2, "midpoint"), (1, "midpoint")))
@pytest.mark.parametrize("steps", (2, 10, 20))
def test_edm_sde_dpm_solver_matches_diffusers(solver, steps):
    """The SDE form on EDM's σ's (α_t = 1): every step and its noise, generators of the same seed."""
    mine, ref = same_edm_schedules("EDMDPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
                                   solver_order=solver[0], solver_type=solver[1], prediction_type="v_prediction")
    mine.set_timesteps(steps)
    ref.set_timesteps(steps)
    data = torch.Generator().manual_seed(0)
    noise_mine, noise_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 6, 6, generator=data) * ref.init_noise_sigma
    for t in ref.timesteps:
        output = torch.randn(x.shape, generator=data)
        a, b = mine.step(output, t, x, generator=noise_mine), ref.step(output, t, x, generator=noise_ref)
        close(a.prev_sample, b.prev_sample)
        x = b.prev_sample
    assert x.isfinite().all()


def test_edm_dpm_solver_thresholds_like_diffusers():
    mine, ref = pair("EDMDPMSolverMultistepScheduler", thresholding=True, sample_max_value=1.5)
    for scheduler in (mine, ref):
        scheduler.set_timesteps(8)
    x = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(1)) * ref.init_noise_sigma
    for t in ref.timesteps:
        output = 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(1e3 * float(t)) % 1000))
        a, b = mine.step(output, t, x).prev_sample, ref.step(output, t, x).prev_sample
        close(a, b)
        x = b


def gaussian_denoiser(mean: float, std: float):
    """For data N(mean, std²) per pixel, the exact denoiser D(x; σ) = mean + std²/(std² + σ²) (x − mean), and the
    exact probability-flow ODE solution x(σ) = mean + √((std² + σ²)/(std² + σ_0²)) (x(σ_0) − mean)."""
    denoise = lambda x, sigma: mean + std ** 2 / (std ** 2 + sigma ** 2) * (x - mean)
    solution = lambda x, sigma_start, sigma: mean + ((std ** 2 + sigma ** 2) / (std ** 2 + sigma_start ** 2)) ** 0.5 \
        * (x - mean)
    return denoise, solution


def run_edm(scheduler, steps: int, x: torch.Tensor, denoise) -> tuple[torch.Tensor, int]:
    """Sample with a scheduler whose network outputs F = (D − c_skip x)/c_out exactly; returns (x_0, passes)."""
    scheduler.set_timesteps(steps)
    passes = 0
    for t in scheduler.timesteps:
        sigma = scheduler.sigmas[scheduler.step_index].double()
        c_skip, c_out, _ = ours.edm.edm_scalings(sigma, scheduler.config.sigma_data)
        output = ((denoise(x.double(), sigma) - c_skip * x.double()) / c_out).float()
        x = scheduler.step(output, t, x).prev_sample
        passes += 1
    return x, passes


@pytest.mark.parametrize("steps", (1, 2, 5, 18))
def test_edm_heun_is_karras_algorithm_1(steps):
    """Our Heun scheduler against Algorithm 1 written out (deterministic, S_churn = 0) on an exact denoiser: the same
    result up to float32 rounding of x_T's scale (80), with 2n − 1 network passes."""
    denoise, _ = gaussian_denoiser(-0.4, 0.6)
    scheduler = ours.EDMHeunScheduler()
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    mine, passes = run_edm(scheduler, steps, x, denoise)
    assert passes == 2 * steps - 1
    rho, s_min, s_max = 7.0, 0.002, 80.0
    i = torch.arange(steps, dtype=torch.float64)
    t = (s_max ** (1 / rho) + i / max(steps - 1, 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    y = x.double()
    for n in range(steps):                                        # Karras et al. 2022, Algorithm 1
        d = (y - denoise(y, t[n])) / t[n]
        y_next = y + (t[n + 1] - t[n]) * d
        if t[n + 1] != 0:
            d_prime = (y_next - denoise(y_next, t[n + 1])) / t[n + 1]
            y_next = y + (t[n + 1] - t[n]) * (0.5 * d + 0.5 * d_prime)
        y = y_next
    torch.testing.assert_close(mine, y.float(), rtol=1e-3, atol=1e-5 * scheduler.init_noise_sigma)   # x_T ~ 80


def test_edm_heun_is_second_order_and_beats_euler_at_equal_network_passes():
    """On an exact denoiser the ODE's true end point is known: halving Heun's step size cuts its error by over 3x
    (second order; Euler's by about 2x), and Heun with 20 steps (39 passes) lands closer than Euler with 39 steps."""
    denoise, solution = gaussian_denoiser(-0.4, 0.6)
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(1)) * 80.0
    truth = solution(x.double(), 80.0, 0.0)                  # σ_0 = σ_max
    error = lambda scheduler, steps: float((run_edm(scheduler, steps, x, denoise)[0].double() - truth).abs().max())
    heun_10, heun_20 = error(ours.EDMHeunScheduler(), 10), error(ours.EDMHeunScheduler(), 20)
    euler_20, euler_39, euler_40 = (error(ours.EDMEulerScheduler(), n) for n in (20, 39, 40))
    assert heun_20 < heun_10 / 3 and euler_20 / 2.5 < euler_40 < euler_20 / 1.5 and heun_20 < euler_39


def test_edm_configs_load_both_ways_and_bad_options_fail_clearly(tmp_path):
    mine = ours.EDMHeunScheduler(sigma_max=40.0, rho=5.0)
    mine.save_pretrained(tmp_path / "ours")
    assert diffusers.EDMEulerScheduler.from_pretrained(tmp_path / "ours").config.sigma_max == 40.0
    diffusers.EDMEulerScheduler(sigma_data=0.7).save_pretrained(tmp_path / "theirs")
    assert ours.EDMHeunScheduler.from_pretrained(tmp_path / "theirs").config.sigma_data == 0.7
    assert dict(ours.DDIMScheduler.from_config(mine.config).config) == dict(ours.DDIMScheduler().config)
    for bad in (dict(sigma_schedule="linear"), dict(prediction_type="sample"), dict(sigma_min=0.0),
                dict(sigma_min=90.0), dict(rho=0.0), dict(final_sigmas_type="one")):
        with pytest.raises(ValueError, match="EDM|sigma_schedule"):
            ours.EDMEulerScheduler(**bad)
    with pytest.raises(ValueError, match="final_sigmas_type must be 'zero'"):
        ours.EDMHeunScheduler(final_sigmas_type="sigma_min")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="churn is not implemented"):
        euler = ours.EDMEulerScheduler()
        euler.set_timesteps(2)
        euler.step(x, euler.timesteps[0], x, s_churn=1.0)
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.EDMHeunScheduler().step(x, 0.0, x)


def test_diffusers_unipc_runs_in_our_sampling_loop_like_ours():
    """diffusers' UniPC takes no generator; `ForeignScheduler` leaves it out, and the loop gives ours' samples."""
    from core.models.diffusion import denoising_loop
    network = lambda x, t: fake_network(x, t)
    noise = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    runs = [list(denoising_loop(network, scheduler, noise, 8, lambda f, x, t: f, generator=torch.Generator()))
            for scheduler in (ours.UniPCMultistepScheduler(), diffusers.UniPCMultistepScheduler())]
    close(runs[0][-1][1], runs[1][-1][1])


# ------------------------------------------------------------------------------------------------------------ LCM
@pytest.mark.parametrize("beta_schedule,prediction_type,limit", list(itertools.product(
    BETA_SCHEDULES, PREDICTION_TYPES, ({}, {"clip_sample": True}, {"thresholding": True, "sample_max_value": 1.5}))))
@pytest.mark.parametrize("steps,original", [(1, 50), (2, 50), (4, 50), (7, 50), (50, 50), (3, 10)])
def test_lcm_step_matches_diffusers(beta_schedule, prediction_type, limit, steps, original):
    """Consistency sampling: the skipping grid's timesteps, f = c_skip x_t + c_out x̂_0 and the re-noising, every
    step bit for bit with the same step noise, for every β schedule, prediction type and x̂_0 limit."""
    options = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, original_inference_steps=original,
                   **limit)
    assert compare_trajectory("LCMScheduler", options, steps, {}) == steps


def test_lcm_last_step_returns_the_consistency_function_and_t0_is_the_identity():
    """f(x, 0) = x (c_skip = 1, c_out = 0): the boundary condition of Song et al.; the last step adds no noise."""
    scheduler = ours.LCMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    x, output = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)
    assert torch.equal(scheduler.consistency(output, 0, x), x)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999]
    out = scheduler.step(output, 999, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.prev_sample, out.pred_original_sample)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]


def test_lcm_refuses_more_steps_than_its_grid():
    scheduler = ours.LCMScheduler()
    for bad in (0, 51, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1 to 50"):
            scheduler.set_timesteps(bad)
