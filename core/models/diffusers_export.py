"""genlab's diffusion models as diffusers pipelines: the U-Net's weights under `diffusers.UNet2DModel`'s names, the
UNet2DModel config that builds the same network, and a `DDPMPipeline` folder (model_index.json, unet/, scheduler/,
README.md) for a DDPM-family model with its own sampler (a class-conditional one with a classifier-free guidance loop,
`CFG_LOOP`, since the pipeline's call passes no labels); and back, our U-Net from a UNet2DModel it can express, and a
DDPM from a diffusers folder (`import_diffusers`: weights from safetensors, the schedule from scheduler_config.json).

Our U-Net (core/models/unet.py) follows UNet2DModel block for block; the two differ in names and in one fusion:
    ours                                       diffusers
    time_mlp.0, time_mlp.2                     time_embedding.linear_1, time_embedding.linear_2
    label_embedding (K classes + ∅ = K)        class_embedding (num_class_embeds = K + 1)
    down.i.blocks.j.{temb, skip}               down_blocks.i.resnets.j.{time_emb_proj, conv_shortcut} (norm1, conv1,
                                               norm2, conv2 keep their names; the same for up and the middle)
    down.i.attentions.j.{norm, out}            down_blocks.i.attentions.j.{group_norm, to_out.0}
    ... .qkv (3C x C, rows [q; k; v])          ... .to_q, .to_k, .to_v (C x C each; heads split the same way)
    downsample.i, upsample.i                   down_blocks.i.downsamplers.0.conv, up_blocks.i.upsamplers.0.conv
    mid1, mid_attention, mid2                  mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
    norm_out                                   conv_norm_out
The label embedding needs no mapping: both add its row to the time embedding (after the MLP) before any block; only
a call without labels differs (ours takes the null label ∅ = K, diffusers raises: pass ∅ yourself).
and in options, which pick diffusers' choices equal to ours: the timestep embedding [cos(t ω_i), sin(t ω_i)] with
ω_i = 10000^(−i/(d/2)) is flip_sin_to_cos=True, freq_shift=0; GN(h + Linear(SiLU(temb))) is
resnet_time_scale_shift="default"; attention heads of `head_dim` channels scaled by 1/√head_dim are
attention_head_dim=head_dim; the stride-2 conv and nearest-upsample + conv are downsample/upsample_type="conv".
One gap: diffusers' up blocks upsample by exactly 2 (no target size), ours to the skip's size, so an image side that
does not halve evenly down to the lowest level (28 with four levels: 7 -> 4 -> 8) has no UNet2DModel equal: refused.
"""
from __future__ import annotations

import json
import inspect
import re
from pathlib import Path

import torch
from torch import Tensor

from core.checkpoint import PICKLE_SUFFIXES
from core.models.ddpm import DDPM, DDPMObjective
from core.models.unet import SelfAttention, UNet

RENAMES = [(r"^time_mlp\.0\.", "time_embedding.linear_1."), (r"^time_mlp\.2\.", "time_embedding.linear_2."),
           (r"^label_embedding\.", "class_embedding."), (r"^norm_out\.", "conv_norm_out."),
           (r"^(down|up)\.(\d+)\.blocks\.", r"\1_blocks.\2.resnets."),
           (r"^(down|up)\.(\d+)\.attentions\.", r"\1_blocks.\2.attentions."),
           (r"^downsample\.(\d+)\.", r"down_blocks.\1.downsamplers.0.conv."),
           (r"^upsample\.(\d+)\.", r"up_blocks.\1.upsamplers.0.conv."),
           (r"^mid1\.", "mid_block.resnets.0."), (r"^mid2\.", "mid_block.resnets.1."),
           (r"^mid_attention\.", "mid_block.attentions.0."),
           (r"\.temb\.", ".time_emb_proj."), (r"\.skip\.", ".conv_shortcut."),
           (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(attentions\.\d+)\.out\.", r"\1.to_out.0.")]


def diffusers_key(name: str) -> str:
    """One of our U-Net's state-dict keys under UNet2DModel's name (a fused .qkv. keeps its name here)."""
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def unet2d_state_dict(unet: UNet) -> dict[str, Tensor]:
    """Our U-Net's weights under UNet2DModel's keys, the fused qkv projection split into to_q, to_k and to_v."""
    state = {}
    for name, value in unet.state_dict().items():
        key = diffusers_key(name)
        if ".qkv." in key:
            for part, rows in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):   # (3C, ...) -> 3 x (C, ...)
                state[key.replace(".qkv.", f".{part}.")] = rows.contiguous()
        else:
            state[key] = value.contiguous()
    return state


def unet2d_config(unet: UNet, sample_size: int) -> dict:
    """The UNet2DModel options that build our network (same layers, same computation) for sample_size images."""
    levels = len(unet.channels)
    if sample_size % 2 ** (levels - 1):
        raise ValueError(f"{sample_size}-pixel images do not halve evenly {levels - 1} times: diffusers' UNet2DModel "
                         "upsamples by exactly 2 and cannot restore the odd sizes our U-Net does")
    head_dim = unet.channels[-1] // unet.mid_attention.heads
    attentions = [m for m in unet.modules() if isinstance(m, SelfAttention)]
    if any(m.heads * head_dim != m.out.in_features for m in attentions):
        raise ValueError("attention heads of different widths per level: UNet2DModel has one attention_head_dim")
    attended = [isinstance(level.attentions[0], SelfAttention) for level in unet.down]
    return dict(sample_size=sample_size, in_channels=unet.conv_in.in_channels, out_channels=unet.conv_out.out_channels,
                block_out_channels=list(unet.channels), layers_per_block=len(unet.down[0].blocks),
                down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attended],
                up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)],
                norm_num_groups=unet.norm_out.num_groups, norm_eps=unet.norm_out.eps, attention_head_dim=head_dim,
                dropout=unet.down[0].blocks[0].dropout.p, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                resnet_time_scale_shift="default", downsample_type="conv", upsample_type="conv",
                downsample_padding=1, add_attention=True, center_input_sample=False,
                num_class_embeds=unet.num_classes + 1 if unet.num_classes else None)


def to_unet2d(unet: UNet, sample_size: int):
    """A diffusers.UNet2DModel computing what our U-Net computes, its weights loaded strictly (every key mapped)."""
    from diffusers import UNet2DModel
    converted = UNet2DModel(**unet2d_config(unet, sample_size))
    converted.load_state_dict(unet2d_state_dict(unet), strict=True)
    return converted.eval()


# ------------------------------------------------------------------------------------- and back: UNet2DModel -> ours
FIXED = dict(act_fn="silu", flip_sin_to_cos=True, freq_shift=0, resnet_time_scale_shift="default", norm_eps=1e-5,
             downsample_type="conv", upsample_type="conv", downsample_padding=1, add_attention=True,
             center_input_sample=False, time_embedding_type="positional", class_embed_type=None,
             mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1)      # the only values our U-Net computes


def unet_options(config: dict) -> dict:
    """Our UNet's arguments for a UNet2DModel config, or a ValueError naming the first key our U-Net cannot express."""
    config = {**dict(config)}
    for key, value in FIXED.items():
        if key in config and config[key] != value:
            raise ValueError(f"UNet2DModel option {key}={config[key]!r} has no genlab equal (ours: {value!r})")
    channels = tuple(config["block_out_channels"])
    down = list(config["down_block_types"])
    if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or list(config["up_block_types"]) != [
            t.replace("Down", "Up") for t in reversed(down)]:
        raise ValueError(f"UNet2DModel option down_block_types/up_block_types={down}, {config['up_block_types']}: "
                         "genlab has (Attn)DownBlock2D mirrored by (Attn)UpBlock2D only")
    if config.get("in_channels") != config.get("out_channels"):
        raise ValueError("UNet2DModel option out_channels differs from in_channels: genlab predicts an image's shape")
    if config.get("time_embedding_dim") not in (None, 4 * channels[0]) or config.get("attn_norm_num_groups") not in (
            None, config["norm_num_groups"]):
        raise ValueError("UNet2DModel option time_embedding_dim or attn_norm_num_groups has no genlab equal")
    classes = config.get("num_class_embeds")
    return dict(in_channels=config["in_channels"], channels=channels, layers_per_block=config["layers_per_block"],
                num_classes=classes - 1 if classes else 0, groups=config["norm_num_groups"],
                dropout=config.get("dropout", 0.0), head_dim=config.get("attention_head_dim") or max(channels),
                attention_levels=tuple(i for i, t in enumerate(down) if t == "AttnDownBlock2D"))


def genlab_state_dict(names, theirs: dict[str, Tensor]) -> dict[str, Tensor]:
    """UNet2DModel weights `theirs` under our U-Net's state-dict `names` (to_q, to_k, to_v joined into qkv); a
    ValueError names any weight of theirs that has no place here."""
    state, used = {}, set()
    for name in names:
        key = diffusers_key(name)
        parts = [key.replace(".qkv.", f".{p}.") for p in ("to_q", "to_k", "to_v")] if ".qkv." in key else [key]
        missing = [k for k in parts if k not in theirs]
        if missing:
            raise ValueError(f"UNet2DModel weights lack {missing[0]} (genlab's {name})")
        state[name] = torch.cat([theirs[k] for k in parts])          # 3 x (C, ...) -> (3C, ...), or one tensor as is
        used.update(parts)
    if set(theirs) - used:
        raise ValueError(f"UNet2DModel weights genlab has no place for: {sorted(set(theirs) - used)[:3]}")
    return state


def from_unet2d(converted) -> UNet:
    """Our U-Net computing what a UNet2DModel computes: its config mapped by `unet_options`, its weights back under
    our names (`genlab_state_dict`), loaded strictly."""
    unet = UNet(**unet_options(converted.config))
    unet.load_state_dict(genlab_state_dict(unet.state_dict(), converted.state_dict()), strict=True)
    return unet.eval()


def check_exportable(model) -> None:
    """Refuse, with the reason, a model that diffusers' DDPMPipeline cannot run as genlab samples it."""
    if not isinstance(model, DDPM):
        raise ValueError(f"export-diffusers writes diffusion models (DDPM); this is a {type(model).__name__}")
    kind = model.config.prediction_type
    if kind == "edm":
        raise ValueError("an EDM model scales the network's input by c_in (scale_model_input) and x_T by σ_max "
                         "(init_noise_sigma); DDPMPipeline's loop does neither, so it cannot sample it")
    if not isinstance(model.objective, DDPMObjective):
        raise ValueError(f"a {model.objective.kind} model ({kind}) is not exported: only ε, x_0 and v prediction "
                         "(the DDPM family) are tested against DDPMPipeline here")


def diffusers_scheduler(model: DDPM, name: str | None = None):
    """diffusers' scheduler of the class and options of the model's own sampler (`name`: another of its samplers)."""
    import diffusers
    ours = model.scheduler(name)
    return getattr(diffusers, type(ours).__name__).from_config(dict(ours.config))


def export_pipeline(model: DDPM, out: str | Path, source: str = "", sampler: str | None = None) -> Path:
    """Write `out` as a DDPMPipeline folder (model_index.json, unet/config.json + diffusion_pytorch_model.safetensors,
    scheduler/scheduler_config.json) with the model's own sampler, and its README.md."""
    from diffusers import DDPMPipeline
    check_exportable(model)
    unet = to_unet2d(model.denoiser, model.config.image_size)
    scheduler = diffusers_scheduler(model, sampler)
    if "generator" not in inspect.signature(scheduler.step).parameters:     # DDPMPipeline passes one to every step
        raise ValueError(f"DDPMPipeline calls scheduler.step(..., generator=...), which diffusers' "
                         f"{type(scheduler).__name__} does not take: export with another --sampler "
                         f"(one of {sorted(model.samplers)}) and switch schedulers after loading")
    out = Path(out)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(card(model, source, type(scheduler).__name__, scheduler.config))
    return out


def card(model: DDPM, source: str, scheduler_name: str, scheduler_config) -> str:
    """The exported folder's model card: what it is, how to sample it as genlab does, and what is left out."""
    c = model.config
    algorithm = f", algorithm_type={scheduler_config['algorithm_type']!r}" if "algorithm_type" in scheduler_config else ""
    guide = ("\n\nLeft out: the genlab checkpoint carries an autoguidance guide (Karras et al. 2024; a smaller U-Net of "
             f"widths {c.guide_widths}), which diffusers' pipelines do not have. "
             + ("Its guidance scale is 1, where the guide changes nothing: these are genlab's own samples."
                if model.guidance_scale == 1.0 else
                f"genlab samples it at guidance {model.guidance_scale:g}; this pipeline samples the model alone "
                "(guidance 1).")) if model.guide is not None else ""
    usage = conditional_usage(model) if model.conditional else f"""```python
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained("path/to/this/folder")
images = pipe(batch_size=16, num_inference_steps={c.eval_steps}).images   # the model's own {c.eval_steps} steps
```
With the same steps and `generator=torch.Generator().manual_seed(s)`, the images equal genlab's
`model.denoise(n, noise=x_T, generator=g)` from the same seed (tests/models/test_diffusers_export.py)."""
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [genlab, ddpm, fashion-mnist{', class-conditional' if model.conditional else ''}]
---
# {source or 'genlab diffusion model'} for diffusers

A denoising diffusion model (Ho et al. 2020) trained from scratch with genlab on {c.image_size}x{c.image_size}
images with {c.channels} channel(s), exported by `python -m core.hub export-diffusers`: a `UNet2DModel` (our U-Net's
weights under diffusers' names; its forward equals genlab's to 1e-5) and the model's own sampler,
`{scheduler_name}`{algorithm} ({c.prediction_type} prediction, {c.beta_schedule} β schedule, T = {c.num_train_timesteps}).

{usage}{guide}
"""


# Classifier-free guidance through diffusers (Ho & Salimans 2022, Eq. 6 with genlab's w: f̃ = f(∅) + w (f(y) − f(∅))),
# which DDPMPipeline's call does not do: it passes no labels. The card prints it after a line setting folder, steps, w
# and labels; docs/diffusion.md shows it, and tests/models/test_diffusers_export.py runs that copy against ours.
CFG_LOOP = """pipe = DDPMPipeline.from_pretrained(folder)     # the UNet2DModel and scheduler; pipe() itself passes no labels
unet, scheduler = pipe.unet, pipe.scheduler
null = torch.full_like(labels, unet.config.num_class_embeds - 1)              # the null label ∅ = K
generator = torch.Generator().manual_seed(0)
size = (len(labels), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
x = torch.randn(size, generator=generator) * scheduler.init_noise_sigma
scheduler.set_timesteps(steps)
for t in scheduler.timesteps:
    with torch.no_grad():
        both = unet(scheduler.scale_model_input(torch.cat([x, x]), t), t, torch.cat([labels, null])).sample
    conditional, unconditional = both.chunk(2)
    x = scheduler.step(unconditional + w * (conditional - unconditional), t, x, generator=generator).prev_sample
images = (x / 2 + 0.5).clamp(0, 1)                                          # (N, C, H, W) in [0, 1]
"""


def cfg_settings(folder: str, steps: int, w: float, classes: int) -> str:
    """The lines before CFG_LOOP: imports, and the folder, steps, guidance scale and labels it samples."""
    return (f"import torch\nfrom diffusers import DDPMPipeline\n"
            f"folder, steps, w, labels = {json.dumps(folder)}, {steps}, {w:g}, torch.arange({classes})   # labels 0..{classes - 1}\n")


def conditional_usage(model: DDPM) -> str:
    """The card's sampling loop for a class-conditional model (CFG_LOOP at genlab's steps and guidance)."""
    c = model.config
    return f"""Class-conditional with classifier-free guidance: labels 0..{c.num_classes - 1} are the classes and label
{c.num_classes} (`num_class_embeds - 1`) is the null label ∅. `DDPMPipeline.from_pretrained` loads the U-Net and
the scheduler, but calling the pipeline passes no labels; sample with this loop (genlab's guidance scale
{model.guidance_scale:g} and {c.eval_steps} steps):
```python
{cfg_settings("path/to/this/folder", c.eval_steps, model.guidance_scale, c.num_classes)}{CFG_LOOP}```
From the same seed, the images equal genlab's `model.denoise(n, guidance_scale=w, label=labels, noise=x_T,
generator=g)` with x_T drawn first from g (tests/models/test_diffusers_export.py)."""


# -------------------------------------------------------------------- import: a diffusers folder as a genlab DDPM
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DDPM_UNET = dict(groups=8, head_dim=32)       # what DDPM builds its U-Net with (diffusion.py): no config option sets them


def diffusers_folders(folder: str | Path) -> tuple[Path, Path | None] | None:
    """(the UNet2DModel folder, the folder of its scheduler_config.json or None) when `folder` is a diffusers folder:
    a pipeline (model_index.json, unet/, scheduler/) or a model saved by diffusers (config.json naming
    _diffusers_version); None for anything else (a genlab checkpoint)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder / "unet", folder / "scheduler"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "_diffusers_version" not in config:
        return None
    return folder, folder if (folder / "scheduler_config.json").is_file() else None


def read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.parent.name}/{path.name} is missing or not JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path.parent.name}/{path.name} is not a JSON object")
    return config


def ddpm_unet_options(unet_config: dict) -> dict:
    """DDPMConfig's network options for a UNet2DModel config, or a ValueError naming the key DDPM cannot express: our
    U-Net takes any groups, head width and attention levels, but a DDPM checkpoint builds it with `DDPM_UNET` and
    attention at the lowest resolution only."""
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"_class_name={unet_config['_class_name']!r}: genlab imports UNet2DModel only (no "
                         "cross-attention, no text conditioning)")
    options = unet_options(unet_config)
    channels, levels = options["channels"], len(options["channels"])
    width, head_dim = channels[-1], options["head_dim"]
    if options["groups"] != DDPM_UNET["groups"]:
        raise ValueError(f"UNet2DModel option norm_num_groups={options['groups']}: genlab's DDPM uses 8")
    if width % head_dim or width // head_dim != max(1, width // DDPM_UNET["head_dim"]):
        raise ValueError(f"UNet2DModel option attention_head_dim={head_dim}: genlab's DDPM attends with heads of 32 "
                         f"channels ({max(1, width // 32)} at width {width})")
    if options["attention_levels"] != (levels - 1,):
        raise ValueError(f"UNet2DModel option down_block_types={unet_config['down_block_types']}: genlab's DDPM "
                         "attends at the lowest resolution only (AttnDownBlock2D last)")
    size = unet_config.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if not isinstance(size, int):
        raise ValueError(f"UNet2DModel option sample_size={unet_config.get('sample_size')!r}: genlab's images are square")
    return dict(channels=options["in_channels"], image_size=size, widths=",".join(map(str, channels)),
                layers_per_block=options["layers_per_block"], dropout=options["dropout"],
                num_classes=options["num_classes"])


def ddpm_schedule_options(config: dict) -> dict:
    """DDPMConfig's schedule and own sampler for a diffusers scheduler_config.json (None: DDPMPipeline's default
    DDPMScheduler()), or a ValueError naming the key genlab cannot express. The sampler is genlab's of the same
    class and algorithm, with genlab's options for it (DDPMObjective.sampler_options), not the file's other options."""
    from core.models.ddpm import DDPMObjective
    from core.schedulers import SCHEDULER_OPTIONS
    from core.schedulers.base import BETA_SCHEDULES
    config = config or {"_class_name": "DDPMScheduler"}
    names = [name for name, cls in DDPMObjective.samplers.items() if cls.__name__ == config.get("_class_name")]
    names.sort(key=lambda name: -len(SCHEDULER_OPTIONS.get(name, {})))          # the most specific name first
    names = [n for n in names if all(config.get(k) == v for k, v in SCHEDULER_OPTIONS.get(n, {}).items())]
    if not names:
        raise ValueError(f"scheduler _class_name={config.get('_class_name')!r} has no genlab sampler for diffusion "
                         f"models (genlab has {sorted({c.__name__ for c in DDPMObjective.samplers.values()})})")
    DDPMObjective.samplers[names[0]].from_config(config)         # refuses, by name, options genlab does not have
    checks = [("prediction_type", ("epsilon", "sample", "v_prediction")), ("beta_schedule", BETA_SCHEDULES),
              ("trained_betas", (None,))]
    for key, allowed in checks:
        if config.get(key, allowed[0]) not in allowed:
            raise ValueError(f"scheduler option {key}={config[key]!r} has no genlab equal (genlab: {allowed})")
    return dict(prediction_type=config.get("prediction_type", "epsilon"), eval_sampler=names[0],
                num_train_timesteps=config.get("num_train_timesteps", 1000),
                beta_schedule=config.get("beta_schedule", "linear"), beta_start=config.get("beta_start", 0.0001),
                beta_end=config.get("beta_end", 0.02), zero_terminal_snr=bool(config.get("rescale_betas_zero_snr")))


def ddpm_config(folder: str | Path):
    """The DDPMConfig a diffusers folder (`diffusers_folders`) loads as: the network from unet/config.json, the
    schedule and own sampler from scheduler_config.json; a ValueError names what genlab cannot express."""
    from core.models.ddpm import DDPMConfig
    unet_folder, scheduler_folder = diffusers_folders(folder)
    schedule = read_json(scheduler_folder / "scheduler_config.json") if scheduler_folder else None
    return DDPMConfig(**ddpm_unet_options(read_json(unet_folder / "config.json")),
                      **ddpm_schedule_options(schedule), ema_decay=0.0)


def import_diffusers(folder: str | Path) -> DDPM:
    """A genlab DDPM from a diffusers folder: its `ddpm_config`, and the weights from
    diffusion_pytorch_model.safetensors only (a pickled .bin is refused), mapped back under our names and loaded
    strictly."""
    import safetensors.torch
    config = ddpm_config(folder)
    unet_folder = diffusers_folders(folder)[0]
    weights = unet_folder / DIFFUSERS_WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in unet_folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
        raise ValueError(f"{unet_folder.name}/ has no {DIFFUSERS_WEIGHTS}" + (
            f" (only {', '.join(pickles)}: genlab never unpickles weights)" if pickles else ""))
    model = DDPM(config)
    model.unet.load_state_dict(genlab_state_dict(model.unet.state_dict(), safetensors.torch.load_file(weights)))
    return model.eval()
