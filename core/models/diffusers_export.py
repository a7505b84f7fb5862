"""genlab's diffusion models as diffusers pipelines: the U-Net's weights under `diffusers.UNet2DModel`'s names, the
UNet2DModel config that builds the same network, and a `DDPMPipeline` folder (model_index.json, unet/, scheduler/,
README.md) for a DDPM-family model with its own sampler; and back, our U-Net from a UNet2DModel it can express.

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
and in options, which pick diffusers' choices equal to ours: the timestep embedding [cos(t ω_i), sin(t ω_i)] with
ω_i = 10000^(−i/(d/2)) is flip_sin_to_cos=True, freq_shift=0; GN(h + Linear(SiLU(temb))) is
resnet_time_scale_shift="default"; attention heads of `head_dim` channels scaled by 1/√head_dim are
attention_head_dim=head_dim; the stride-2 conv and nearest-upsample + conv are downsample/upsample_type="conv".
One gap: diffusers' up blocks upsample by exactly 2 (no target size), ours to the skip's size, so an image side that
does not halve evenly down to the lowest level (28 with four levels: 7 -> 4 -> 8) has no UNet2DModel equal: refused.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

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


def from_unet2d(converted) -> UNet:
    """Our U-Net computing what a UNet2DModel computes: its config mapped by `unet_options`, its weights back under
    our names (to_q, to_k, to_v joined into qkv), loaded strictly."""
    unet = UNet(**unet_options(converted.config))
    theirs = converted.state_dict()
    state, used = {}, set()
    for name in unet.state_dict():
        key = diffusers_key(name)
        parts = [key.replace(".qkv.", f".{p}.") for p in ("to_q", "to_k", "to_v")] if ".qkv." in key else [key]
        state[name] = torch.cat([theirs[k] for k in parts])          # 3 x (C, ...) -> (3C, ...), or one tensor as is
        used.update(parts)
    if set(theirs) - used:
        raise ValueError(f"UNet2DModel weights genlab has no place for: {sorted(set(theirs) - used)[:3]}")
    unet.load_state_dict(state, strict=True)
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
    if model.conditional:
        raise ValueError("a class-conditional model needs class_labels, which DDPMPipeline does not pass "
                         "(its diffusers export with classifier-free guidance is not written yet)")


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
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [genlab, ddpm, fashion-mnist]
---
# {source or 'genlab diffusion model'} for diffusers

A denoising diffusion model (Ho et al. 2020) trained from scratch with genlab on {c.image_size}x{c.image_size}
images with {c.channels} channel(s), exported by `python -m core.hub export-diffusers`: a `UNet2DModel` (our U-Net's
weights under diffusers' names; its forward equals genlab's to 1e-5) and the model's own sampler,
`{scheduler_name}`{algorithm} ({c.prediction_type} prediction, {c.beta_schedule} β schedule, T = {c.num_train_timesteps}).

```python
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained("path/to/this/folder")
images = pipe(batch_size=16, num_inference_steps={c.eval_steps}).images   # the model's own {c.eval_steps} steps
```
With the same steps and `generator=torch.Generator().manual_seed(s)`, the images equal genlab's
`model.denoise(n, noise=x_T, generator=g)` from the same seed (tests/models/test_diffusers_export.py).{guide}
"""
