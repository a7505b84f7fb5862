"""core/models/diffusers_export.py checked by running the export in diffusers itself (real diffusers, no mocks): the
UNet2DModel built from our config and mapped weights computes our U-Net's output to 1e-5, and DDPMPipeline on an
exported folder returns our sampler's images from the same noise and steps."""
import json
import re

import diffusers
import pytest
import torch

from core.hub import CheckpointError, load_model, main
from core.models.ddpm import DDPM, DDPMConfig
from core.models.diffusers_export import CFG_LOOP, export_pipeline, from_unet2d, to_unet2d, unet2d_config
from core.models.unet import UNet
from conftest import ROOT
from models.test_diffusion import fixed_model

SHIPPED_DDPM = ROOT / "checkpoints" / "ddpm"
DOCS = ROOT / "docs" / "diffusion.md"


def random_unet(**options) -> UNet:
    torch.manual_seed(0)
    net = UNet(**options)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)          # it starts at zero: make the output depend on all
    return net.eval()


@pytest.mark.parametrize("options", [dict(channels=(32, 64)), dict(channels=(32, 64, 64), layers_per_block=2),
                                     dict(channels=(32, 64), num_classes=3, attention_levels=(0, 1), groups=4)])
def test_unet2dmodel_computes_our_unet(options):
    """Same output to 1e-5 on random images, timesteps and labels (the null label K included); measured ≤ 5e-6."""
    ours = random_unet(**options)
    theirs = to_unet2d(ours, 16)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 437, 999])
    labels = torch.tensor([0, 2, 3]) if ours.num_classes else None
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, labels).sample, ours(x, t, labels), atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs(x, 250).sample if labels is None else theirs(x, 250, labels).sample,
                                   ours(x, torch.tensor(250), labels), atol=1e-5, rtol=0)    # a scalar timestep


def test_the_shipped_ddpm_unet_is_a_unet2dmodel():
    ours = load_model(SHIPPED_DDPM).denoiser.eval()
    theirs = to_unet2d(ours, 28)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 871])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t).sample, ours(x, t), atol=1e-5, rtol=0)


def test_sizes_that_do_not_halve_evenly_are_refused():
    with pytest.raises(ValueError, match="halve evenly"):
        unet2d_config(UNet(channels=(16, 32, 32, 32)), 28)                 # 28 -> 14 -> 7 -> 4 -> 8 != 7


def test_a_unet2dmodel_made_by_diffusers_comes_back_as_our_unet():
    """diffusers' own random initialisation (conv_out not zero), attention at two levels, 2 layers per block."""
    torch.manual_seed(1)
    theirs = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                   layers_per_block=2, norm_num_groups=8, attention_head_dim=16,
                                   down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D")).eval()
    ours = from_unet2d(theirs)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), theirs(x, t).sample, atol=1e-5, rtol=0)


def test_export_then_import_gives_our_weights_back_exactly():
    ours = load_model(SHIPPED_DDPM).denoiser
    back = from_unet2d(to_unet2d(ours, 28))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), back.state_dict().values()))
    assert list(ours.state_dict()) == list(back.state_dict())


@pytest.mark.parametrize("option, value", [("act_fn", "gelu"), ("resnet_time_scale_shift", "scale_shift"),
                                           ("down_block_types", ("DownBlock2D", "SkipDownBlock2D"))])
def test_a_unet2dmodel_we_cannot_express_is_refused_by_its_key(option, value):
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match=option):
        from_unet2d(diffusers.UNet2DModel(**{**config, option: value}))


def pipeline_and_ours(model: DDPM, folder, tmp_path, n: int, steps: int, seed: int, sampler: str | None = None):
    """Export `model` (saved to `folder` first if it is not there), then sample it both ways: DDPMPipeline with
    generator seed `seed`, ours with the x_T and the generator state that the pipeline's own draws give."""
    if not (folder / "config.json").is_file():
        model.save_pretrained(folder)
    out = tmp_path / "diffusers"
    main(["export-diffusers", str(folder), str(out)] + (["--sampler", sampler] if sampler else []))
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                  output_type="pt").images
    generator = torch.Generator().manual_seed(seed)
    c = model.config
    noise = torch.randn(n, c.channels, c.image_size, c.image_size, generator=generator)   # as randn_tensor draws x_T
    for _, x, _ in model.denoise(n, steps, sampler, noise=noise, generator=generator):
        pass
    return theirs, (x / 2 + 0.5).clamp(0, 1), pipe                  # ours in the pipeline's [0, 1]


@pytest.mark.parametrize("prediction_type, sampler", [("epsilon", None), ("epsilon", "ddpm"),
                                                      ("v_prediction", "dpm_solver_sde"), ("v_prediction", "ddim")])
def test_ddpm_pipeline_returns_our_samples(prediction_type, sampler, tmp_path):
    """Same images to 1e-5 in [0, 1] (float32; the two U-Nets differ by ~1e-6 per call: our channels_last convolutions
    and fused qkv round differently), with the model's own sampler (DPM-Solver++ with thresholding for ε) and with
    stochastic ones whose step noise comes from the same generator."""
    model = fixed_model(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    theirs, ours, pipe = pipeline_and_ours(model, tmp_path / "model", tmp_path, 4, 12, seed=7, sampler=sampler)
    own = type(model.scheduler(sampler)).__name__
    assert type(pipe.scheduler).__name__ == own and pipe.scheduler.config.prediction_type == prediction_type
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert ours.std() > 0.05                                           # images, not a constant


def test_ddpm_pipeline_samples_the_shipped_ddpm_as_we_do(tmp_path):
    """The shipped v-prediction model with its own DPM-Solver++ SDE (6 steps here; measured 7.8e-6 at its 40 steps for
    4 images, 3.8e-6 for 16)."""
    model = load_model(SHIPPED_DDPM)
    theirs, ours, pipe = pipeline_and_ours(model, SHIPPED_DDPM, tmp_path, 1, 6, seed=3)
    assert pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    card = (tmp_path / "diffusers" / "README.md").read_text()
    assert "autoguidance guide" in card and "guidance scale is 1" in card


@pytest.mark.parametrize("options, message", [(dict(prediction_type="edm"), "EDM model"),
                                              (dict(prediction_type="flow_prediction"), "flow-matching")])
def test_export_refuses_what_ddpm_pipeline_cannot_run(options, message, tmp_path, capsys):
    DDPM(DDPMConfig(image_size=8, widths="16,32", **options)).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:
        main(["export-diffusers", str(tmp_path / "model"), str(tmp_path / "out")])
    assert str(exit_info.value).startswith("error: ") and message in str(exit_info.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_model_of_another_family(tmp_path):
    with pytest.raises(SystemExit, match="error: .*writes diffusion models"):
        main(["export-diffusers", str(ROOT / "checkpoints" / "classifier"), str(tmp_path / "out")])


# ------------------------------------------------------------------------ class-conditional: the documented CFG loop
def documented_cfg_loop() -> str:
    """The python block of docs/diffusion.md that holds CFG_LOOP (the one the exported card prints)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if "torch.cat([labels, null])" in b]
    assert len(blocks) == 1 and blocks[0].endswith(CFG_LOOP)
    return blocks[0]


@pytest.mark.parametrize("shipped, sampler", [(True, None), (False, "dpm_solver_sde")])
def test_the_documented_cfg_loop_samples_as_we_do(shipped, sampler, tmp_path, monkeypatch):
    """docs/diffusion.md's loop, run on the exported folder (its settings line swapped for 2 labels and 3 steps),
    returns our sampler's images with the same guidance, x_T and generator: to 1e-5 in [0, 1] (measured 2.8e-6 on
    ddpm-cond, 10 classes, its 20 steps). The shipped ddpm-cond with its own DPM-Solver++ 2M; a tiny ε model with
    DPM-Solver++ SDE (the step noise from the loop's generator)."""
    model = load_model("ddpm-cond") if shipped else fixed_model(num_classes=3, beta_schedule="squaredcos_cap_v2")
    folder = ROOT / "checkpoints" / "ddpm-cond" if shipped else tmp_path / "model"
    if not shipped:
        model.save_pretrained(folder)
    main(["export-diffusers", str(folder), str(tmp_path / "exported")] + (["--sampler", sampler] if sampler else []))
    block = documented_cfg_loop()
    settings = re.search(r"^folder, steps, w, labels = .*$", block, re.M)
    w, labels = 2.5, torch.tensor([2, 0])
    code = block.replace(settings.group(0), "folder, steps, w, labels = FOLDER, 3, W, LABELS")
    namespace = {"FOLDER": str(tmp_path / "exported"), "W": w, "LABELS": labels}
    exec(compile(code, "docs/diffusion.md", "exec"), namespace)
    generator = torch.Generator().manual_seed(0)
    c = model.config
    noise = torch.randn(2, c.channels, c.image_size, c.image_size, generator=generator)
    for _, x, _ in model.denoise(2, 3, sampler, guidance_scale=w, label=labels, noise=noise, generator=generator):
        pass
    ours = (x / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(namespace["images"], ours, atol=1e-5, rtol=0)
    assert ours.std() > 0.05 and type(namespace["scheduler"]).__name__ == "DPMSolverMultistepScheduler"
    card = (tmp_path / "exported" / "README.md").read_text()
    assert CFG_LOOP in card and f"torch.arange({c.num_classes})" in card


# --------------------------------------------------------------------------------- import: diffusers folders here
def diffusers_unet(**options):
    """A UNet2DModel that diffusers initialises (conv_out not zero) in a configuration genlab's DDPM builds."""
    torch.manual_seed(2)
    config = dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                  norm_num_groups=8, attention_head_dim=32, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return diffusers.UNet2DModel(**{**config, **options}).eval()


@pytest.mark.parametrize("num_class_embeds", [None, 4])
def test_load_model_takes_a_unet2dmodel_that_diffusers_saved(num_class_embeds, tmp_path):
    theirs = diffusers_unet(num_class_embeds=num_class_embeds)
    theirs.save_pretrained(tmp_path / "unet", safe_serialization=True)
    ours = load_model(tmp_path / "unet")
    assert isinstance(ours, DDPM) and ours.config.num_classes == (3 if num_class_embeds else 0)
    assert ours.config.prediction_type == "epsilon" and ours.default_sampler == "ddpm"   # DDPMPipeline's default
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 500, 999])
    labels = torch.tensor([0, 2, 3]) if num_class_embeds else None
    with torch.no_grad():
        torch.testing.assert_close(ours.denoiser(x, t, labels), theirs(x, t, labels).sample, atol=1e-5, rtol=0)


def test_load_model_reads_a_pipeline_folders_scheduler(tmp_path):
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                        rescale_betas_zero_snr=True, timestep_spacing="trailing")
    diffusers.DDPMPipeline(unet=diffusers_unet(), scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    c = load_model(tmp_path / "pipe").config
    assert (c.eval_sampler, c.prediction_type, c.beta_schedule, c.zero_terminal_snr) == (
        "ddim", "v_prediction", "squaredcos_cap_v2", True)
    sde = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    diffusers.DDPMPipeline(unet=diffusers_unet(), scheduler=sde).save_pretrained(tmp_path / "sde")
    assert load_model(tmp_path / "sde").config.eval_sampler == "dpm_solver_sde"


@pytest.mark.parametrize("make, key", [
    (lambda: diffusers.UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), norm_num_groups=8,
                                            cross_attention_dim=32, layers_per_block=1, attention_head_dim=8,
                                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), "_class_name"),
    (lambda: diffusers_unet(norm_num_groups=16), "norm_num_groups"),
    (lambda: diffusers_unet(attention_head_dim=8), "attention_head_dim"),
    (lambda: diffusers_unet(down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D")), "down_block_types"),
    (lambda: diffusers_unet(down_block_types=("DownBlock2D", "AttnSkipDownBlock2D"),
                            up_block_types=("AttnSkipUpBlock2D", "UpBlock2D")), "down_block_types"),
    (lambda: diffusers_unet(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift")])
def test_a_diffusers_folder_we_cannot_express_is_refused_by_its_key(make, key, tmp_path):
    make().save_pretrained(tmp_path / "unet", safe_serialization=True)
    with pytest.raises(CheckpointError, match=f"diffusers.*{key}"):
        load_model(tmp_path / "unet")


def test_a_pickled_or_unusual_scheduler_folder_is_refused(tmp_path):
    diffusers_unet().save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors .*never unpickles"):
        load_model(tmp_path / "bin")
    euler = diffusers.EulerDiscreteScheduler()
    diffusers.DDPMPipeline(unet=diffusers_unet(), scheduler=euler).save_pretrained(tmp_path / "euler")
    with pytest.raises(CheckpointError, match="_class_name='EulerDiscreteScheduler'"):
        load_model(tmp_path / "euler")


def shipped_diffusion_models(consistency: bool) -> list[str]:
    entries = json.loads((ROOT / "checkpoints" / "index.json").read_text())["models"]
    config = lambda e: json.loads((ROOT / "checkpoints" / e["folder"] / "config.json").read_text())
    return [e["name"] for e in entries if e["family"] == "ddpm" and bool(config(e).get("consistency")) == consistency]


@pytest.mark.parametrize("name", shipped_diffusion_models(consistency=True))
def test_a_consistency_student_is_refused_at_export_with_the_reason(name, tmp_path):
    """Not done yet: DDPMPipeline could drive diffusers' LCMScheduler, but the folder would not load back as one."""
    with pytest.raises(SystemExit, match="a consistency model .* is not exported"):
        main(["export-diffusers", name, str(tmp_path / "exported")])
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("name", shipped_diffusion_models(consistency=False))
def test_every_shipped_diffusion_model_comes_back_exactly(name, tmp_path):
    """export-diffusers, then load_model on the folder: the same weights (torch.equal), network and sampler."""
    ours = load_model(name)
    main(["export-diffusers", name, str(tmp_path / "exported")])
    back = load_model(tmp_path / "exported")
    mine, theirs = ours.denoiser.state_dict(), back.denoiser.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    same = ("channels", "image_size", "widths", "num_classes", "prediction_type", "beta_schedule", "num_train_timesteps")
    assert all(getattr(back.config, k) == getattr(ours.config, k) for k in same)
    assert back.default_sampler == ours.default_sampler and back.guide is None


def test_a_sampler_ddpmpipeline_cannot_drive_is_refused_at_export(tmp_path):
    """DDPMPipeline passes a generator to scheduler.step; diffusers' UniPC takes none, so its folder would fail when run."""
    model = load_model("ddpm")
    with pytest.raises(ValueError, match="does not take: export with another --sampler"):
        export_pipeline(model, tmp_path / "out", sampler="unipc")
    assert not (tmp_path / "out").exists()
