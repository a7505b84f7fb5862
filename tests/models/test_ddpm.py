"""core/models/ddpm.py: the ε, x_0 and v objectives (min-SNR-γ, zero terminal SNR, their samplers' options) and
the one checkpoint class that every objective is built by."""
import pytest
import torch

from core.families import FAMILIES, class_named
from core.hub import load_model
from core.models.ddpm import DDPM, OBJECTIVES, DDPMConfig, DDPMObjective, own_samplers, samplers_for
from core.models.diffusion import DiffusionModel
from core.models.edm import EDMObjective
from core.models.flow_matching import FlowMatchingObjective
from models.test_diffusion import TINY, fixed_model


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
    weighted = model.objective.loss_weights(t) * (error ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * ((x0 - x0_hat) ** 2).sum(dim=(1, 2, 3)),
                               rtol=1e-3, atol=1e-6)

def test_min_snr_gamma_must_not_be_negative():
    with pytest.raises(ValueError, match="snr_gamma"):
        DDPM(DDPMConfig(**TINY, snr_gamma=-1.0))

def test_ddim_eta_zero_sampling_is_deterministic_across_generators():
    """η = 0: x_0 is a function of x_T alone, so only the seed of x_T matters."""
    model = fixed_model()
    noise = model.noise(3, seed=1)
    runs = [list(model.denoise(3, 8, "ddim", seed=s, noise=noise))[-1][1] for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])

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


@pytest.mark.parametrize("prediction_type,objective", [("epsilon", DDPMObjective), ("sample", DDPMObjective),
                                                       ("v_prediction", DDPMObjective),
                                                       ("flow_prediction", FlowMatchingObjective),
                                                       ("edm", EDMObjective)])
def test_every_prediction_type_is_one_checkpoint_class_with_its_objective(prediction_type, objective, tmp_path):
    """Saved folders all name `DDPM`; the prediction type picks the objective, and with it the samplers."""
    model = DDPM(DDPMConfig(**TINY, prediction_type=prediction_type))
    assert type(model.objective) is OBJECTIVES[prediction_type] is objective and isinstance(model, DiffusionModel)
    assert class_named("DDPM") is DDPM and issubclass(FAMILIES["ddpm"], DiffusionModel)
    assert tuple(samplers_for(prediction_type)) == own_samplers({"prediction_type": prediction_type})
    assert tuple(model.samplers) == tuple(objective.samplers)
    assert type(model.scheduler()) is next(iter(objective.samplers.values()))          # the objective's default
    model.save_pretrained(tmp_path)
    assert type(load_model(tmp_path).objective) is objective
