"""core/services/diffusion.py: the pickers follow the model's card, the cost of a request, admission of large runs,
and the frames streamed while the reverse process runs."""
import pytest

from core import requests as R
from core.models.ddpm import DDPM, DDPMConfig
from core.schedulers import SCHEDULERS
from core.services import base, diffusion
from core.services.diffusion import DiffusionService
from core.services.pictures import SCALE

DIFFUSION = ["dpm_solver", "dpm_solver_sde", "unipc", "ddim", "ddpm"]


def schedulers(spec) -> list[str]:
    return [name for _, name in DiffusionService.follow(spec)["scheduler"]["choices"]]


def test_the_scheduler_choices_follow_the_models_objective(monkeypatch, tmp_path):
    assert schedulers("ddpm") == ["dpm_solver_sde", "dpm_solver", "unipc", "ddim", "ddpm", "lcm"]
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "flow_prediction"}')
    monkeypatch.setattr(base, "resolve", lambda spec, allow_local: tmp_path)          # as if pulled from the Hub
    assert schedulers("someone/flow") == ["euler", "heun"]
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "v_prediction", '
                                          '"eval_sampler": "ddpm"}')
    assert schedulers("someone/own") == ["ddpm", "dpm_solver", "dpm_solver_sde", "unipc", "ddim", "lcm"]
    assert DiffusionService.follow("someone/own")["scheduler"]["value"] == "ddpm"
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "eval_sampler": "/etc/passwd"}')
    assert schedulers("someone/odd") == DIFFUSION + ["lcm"]
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "v_prediction", '
                                          '"consistency": "cd", "eval_sampler": "lcm"}')
    assert schedulers("someone/student") == ["lcm", *DIFFUSION]          # its own first; the others are refused
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "edm"}')
    assert schedulers("someone/edm") == ["edm_dpm_solver", "edm_heun", "edm_euler"]
    assert DiffusionService.follow("someone/edm")["guidance_scale"] == {"value": 1.0}
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "guide_widths": "8", "eval_guidance": 1.25}')
    assert DiffusionService.follow("someone/guided")["guidance_scale"] == {"value": 1.25}
    assert DiffusionService.follow("someone/guided")["steps"] == {"value": 20}       # no eval_steps: the default
    bad = ['"guide_widths": "8", "eval_guidance": "2"'] + [f'"eval_steps": {s}' for s in ('"/etc/passwd"', "1e9", "0",
                                                                                          "2.5")]
    for fields in bad:                  # a config the sliders cannot show: they keep what they show
        (tmp_path / "config.json").write_text('{"_class_name": "DDPM", %s}' % fields)
        assert DiffusionService.follow("someone/odd") == {}
    assert set(SCHEDULERS) == {"euler", "heun", "edm_heun", "edm_euler", "edm_dpm_solver", "lcm", *DIFFUSION}


def test_the_sliders_start_at_the_cards_settings():
    plain, conditional = DiffusionService.follow("ddpm"), DiffusionService.follow("ddpm-cond")
    assert plain["guidance_scale"] == {"value": 1.0} and conditional["guidance_scale"] == {"value": 2.0}
    assert plain["steps"] == {"value": 40} and conditional["steps"] == {"value": 20}     # as on their cards
    assert plain["scheduler"]["value"] == "dpm_solver_sde" and conditional["scheduler"]["value"] == "dpm_solver"
    assert plain["label"] == {"interactive": False, "value": -1} and conditional["label"] == {"interactive": True}


def test_denoising_streams_a_bounded_number_of_frames_and_refuses_too_much_work():
    ddpm = DiffusionService.load("ddpm")
    frames = list(ddpm.denoise(2, 30, "ddim", 0.0, 0))
    fractions = [fraction for fraction, _ in frames]
    assert len(frames) <= diffusion.STREAM_FRAMES + 1 and fractions == sorted(fractions) and fractions[-1] == 1.0
    pictures = [outputs for _, outputs in frames]
    assert pictures[-1][2] is not None and all(p[2] is None for p in pictures[:-1])
    assert all(p[0].size == p[1].size for p in pictures)                # x_t and x̂_0 grids side by side
    assert pictures[-1][2].height == (4 * 30 + 2) * SCALE                 # strip: 2 images' x_t rows, then x̂_0 rows
    assert pictures[-1][3].startswith("step 30/30 · ") and pictures[0][3].startswith("step 2/30 · ")
    with pytest.raises(R.RequestError, match="n x steps x passes must be at most 16,000"):
        next(ddpm.denoise(17, 1000, "ddim", 0.0, 0))
    with pytest.raises(R.RequestError, match="repeats timesteps"):        # the slider's maximum with DPM-Solver++
        next(ddpm.denoise(1, 1000, "dpm_solver", 0.0, 0))


def test_diffusion_cost_counts_guidance_passes():
    work = lambda *args: DiffusionService.work("ddpm", *args)
    assert work(16, 1000, "ddim", 0.0, 0, -1, 1.0) == 16_000
    with pytest.raises(R.RequestError, match="n x steps x passes must be at most 16,000.*16 x 1000 x 2 = 32,000"):
        work(16, 1000, "ddim", 0.0, 0, -1, 2.0)
    with pytest.raises(R.RequestError, match="16 x 1000 x 2 = 32,000"):        # Heun: two passes per step
        work(16, 1000, "heun", 0.0, 0, -1, 1.0)
    assert work(16, 500, "heun", 0.0, 0, -1, 1.0) == 16_000
    with pytest.raises(R.RequestError, match="scheduler must be one of") as caught:
        work(1, 1, "lms", 0.0, 0, -1, 1.0)
    assert caught.value.field == "scheduler"
    with pytest.raises(R.RequestError, match="model must be one of") as caught:
        DiffusionService.work("/etc/passwd", 1, 1, "ddim", 0.0, 0, -1, 1.0)
    assert caught.value.field == "model"


def test_guidance_needs_a_guided_model():
    tiny = dict(image_size=8, widths="8,16", prediction_type="edm", ema_decay=0.0)
    plain = DiffusionService(DDPM(DDPMConfig(**tiny)), "plain")
    with pytest.raises(R.RequestError, match="guidance_scale needs a guided model"):
        next(plain.denoise(1, 2, "edm_euler", 0.0, 0, guidance_scale=2.0))
    guided = DDPM(DDPMConfig(**tiny)).with_guide(DDPM(DDPMConfig(**{**tiny, "widths": "8"})), 1.5)
    assert next(DiffusionService(guided, "guided").denoise(1, 2, "edm_euler", 0.0, 0, guidance_scale=2.0))


def test_a_diffusion_model_asked_for_a_flow_sampler_says_so():
    with pytest.raises(R.RequestError, match="a diffusion model samples with a scheduler of"):
        next(DiffusionService.load("ddpm").denoise(1, 2, "euler", 0.0, 0))


def test_one_large_diffusion_run_at_a_time_and_small_ones_beside_it(monkeypatch):
    ddpm = DiffusionService.load("ddpm")
    large = ddpm.denoise(16, 200, "ddim", 0.0, 0)             # 3,200 image-steps: large
    next(large)                                               # running, holding the large place
    with pytest.raises(R.RequestError, match="another large diffusion request is running"):
        next(ddpm.denoise(16, 150, "ddim", 0.0, 1))
    assert len(list(ddpm.denoise(1, 10, "ddim", 0.0, 2))) == 10   # a small one runs meanwhile
    large.close()                                             # a client that leaves frees the place
    again = ddpm.denoise(16, 150, "ddim", 0.0, 1)
    next(again)
    again.close()
    monkeypatch.setattr(diffusion, "DIFFUSION_BUDGET_S", 0.0)
    with pytest.raises(R.RequestError, match="stopped after 0 s with 1 of 20 steps done"):
        list(ddpm.denoise(2, 20, "ddim", 0.0, 0))
