"""genlab sampler: every model family in one Gradio app. `python apps/sampler.py` (or `gradio apps/sampler.py`, or a
Hugging Face Space with app_file: apps/sampler.py).

Widgets and wiring only: every model call and every input check is in core.pipeline. Models are the shipped
checkpoints named in checkpoints/index.json (or the manifest GENLAB_MANIFEST names); a model box also takes a Hub
repo id such as `owner/name@revision`. Each event has a stable api_name (see the README's API section). Events take
their inputs unprocessed (preprocess=False) so that core.pipeline sees exactly what a browser or an API client sent
and answers every bad value, upload included, with its own message.
"""
import atexit
import functools
import inspect
import logging
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                # a Space runs this file without installing the package
    sys.path.insert(0, str(ROOT))

import gradio as gr
import pandas as pd
import torch

from core import pipeline
from core.data import FASHION_CLASSES
from core.models import ddpm as diffusion
from core.models import perceptron as foundations
from core.models import stylegan as style
from core.pipeline import load_pipeline
from core.requests import MAX_SEED, RequestError
from core.schedulers import SCHEDULER_LABELS

WORKERS = 2                                  # share of the cores one model call gets (quick calls and diffusion
torch.set_num_threads(max(1, (os.cpu_count() or WORKERS) // WORKERS))   # runs go side by side)
EXAMPLES = sorted(str(path) for path in (ROOT / "apps" / "examples").glob("*.png"))
EDGE_EXAMPLES = sorted(str(path) for path in (ROOT / "apps" / "examples" / "edges").glob("*.png"))
OUTPUTS = pipeline.OutputFiles()
atexit.register(OUTPUTS.close)               # the answers' files go with the server
ADMISSION = pipeline.Admission()
CLASSES = [("all classes, in turn", -1)] + [(name, k) for k, name in enumerate(FASHION_CLASSES)]
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
TARGETS = [(name, k) for k, name in enumerate(FASHION_CLASSES)]
log = logging.getLogger("genlab.sampler")
png, gif = OUTPUTS.png, OUTPUTS.gif


def as_gradio_error(name: str, exc: Exception) -> gr.Error:
    """A refused request (RequestError) logs one line and answers with its message; anything else logs its
    traceback once and answers with a message that names no server detail. Gradio prints neither again."""
    if isinstance(exc, RequestError):
        log.info("%s refused: %s", name, str(exc)[:200])
        return gr.Error(str(exc), print_exception=False)
    log.exception("%s failed", name)
    return gr.Error(f"the server could not answer this request ({type(exc).__name__}); it has been logged",
                    print_exception=False)


def guarded(function):
    """Every exception of an event becomes a gr.Error with our message (see as_gradio_error)."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise as_gradio_error(function.__name__, exc) from exc
    else:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise as_gradio_error(function.__name__, exc) from exc
    return wrapper


# --------------------------------------------------------------------------------------------------- endpoints
@guarded
def gan_sample(model, n, seed, label):
    return png(load_pipeline(model, "gan").sample(n, seed, label))


@guarded
def gan_interpolate(model, seed_a, seed_b, steps, spherical, label):
    frames = load_pipeline(model, "gan").interpolate(seed_a, seed_b, steps, spherical, label)
    return png(pipeline.side_by_side(frames)), gif(frames)


@guarded
def gan_class_grid(model, per_class, seed):
    return png(load_pipeline(model, "gan").class_grid(per_class, seed))


@guarded
def stylegan_sample(model, n, seed, psi):
    return png(load_pipeline(model, "stylegan").sample(n, seed, psi))


@guarded
def stylegan_mix(model, row_seed, column_seed, rows, columns, crossover, psi):
    return png(load_pipeline(model, "stylegan").style_mix(row_seed, column_seed, rows, columns, crossover, psi))


@guarded
def stylegan_noise(model, seed, psi):
    variants, quiet_and_spread = load_pipeline(model, "stylegan").noise(seed, psi)
    return png(variants), png(quiet_and_spread)


@guarded
def stylegan_interpolate(model, seed_a, seed_b, steps, psi):
    return png(load_pipeline(model, "stylegan").interpolate(seed_a, seed_b, steps, psi))


@guarded
def vae_sample(model, n, seed):
    return png(load_pipeline(model, "vae").sample(n, seed))


@guarded
def vae_reconstruct(model, image):
    return tuple(png(picture) for picture in load_pipeline(model, "vae").reconstruct(image))


@guarded
def vae_interpolate(model, image_a, image_b, steps):
    return png(load_pipeline(model, "vae").interpolate(image_a, image_b, steps))


@guarded
def vae_traverse(model, image, dim, span, steps):
    return png(load_pipeline(model, "vae").traverse(image, dim, span, steps))


@guarded
def vae_compare(image, seed):
    return tuple(png(picture) for picture in pipeline.compare_autoencoders(image, seed))


@guarded
def vae_latent_plane(image):
    picture, (z1, z2) = load_pipeline("vae-2d", "vae").latent_plane(image)
    return png(picture), f"μ(x) = ({z1:.2f}, {z2:.2f}), the red ring"


def admit_diffusion(model, n, steps, scheduler, eta, seed, label, guidance_scale, request: gr.Request):
    """Runs before the request is queued (Gradio's validator): its cost, and the client's share of the queue. A
    refusal is Gradio's validation error carrying our message (gradio_client raises ValidationError with it)."""
    message, field = "", None
    try:
        pipeline.checked_spec(model, "ddpm")
        pipeline.diffusion_work(n, steps, scheduler, eta, seed, guidance_scale)
        ADMISSION.admit(request.session_hash or "")
    except Exception as exc:
        message, field = as_gradio_error("ddpm_sample admission", exc).message, getattr(exc, "field", None)
    inputs = ("model", "n", "steps", "scheduler", "eta", "seed", "label", "guidance_scale")
    shown_on = field if field in inputs else "steps"          # no single input at fault (cost, queue share): steps
    return [gr.validate(not message or name != shown_on, message) for name in inputs]


@guarded
def ddpm_sample(model, n, steps, scheduler, eta, seed, label, guidance_scale, request: gr.Request,
                progress=gr.Progress()):
    """Streams the batch of x_t while the reverse process runs, then the final images and the strip."""
    try:
        yield from denoising_updates(model, n, steps, scheduler, eta, seed, label, guidance_scale, progress)
    finally:
        ADMISSION.release(request.session_hash or "")


def denoising_updates(model, n, steps, scheduler, eta, seed, label, guidance_scale, progress):
    start = time.perf_counter()
    denoising = load_pipeline(model, "ddpm").denoise(n, steps, scheduler, eta, seed, label, guidance_scale)
    for step, total, frame, guess, strip in denoising:
        progress(step / total, desc=f"step {step}/{total}")
        status = f"step {step}/{total} · {time.perf_counter() - start:.1f} s"
        yield png(frame), png(guess), png(strip) if strip is not None else gr.skip(), status


@guarded
def foundations_train(gate, learner, activation, seed, epoch):
    picture, animation, note = pipeline.foundations_training(gate, learner, activation, seed, epoch)
    return png(picture), gif(animation, bounce=False), note


@guarded
def foundations_activation(name):
    picture, formula = pipeline.activation_picture(name)
    return png(picture), f"`{formula}`"


@guarded
def foundations_approximate(target, hidden, activation):
    picture, note = pipeline.approximation_picture(target, hidden, activation)
    return png(picture), note


@guarded
def cyclegan_translate(model, image, direction):
    seen, translated, reconstructed, inverted = load_pipeline(model, "cyclegan").translate(image, direction)
    note = "The upload had a light background and was inverted: the model knows light objects on black." if inverted \
        else ""
    return png(seen), png(translated), png(reconstructed), note


@guarded
def pix2pix_translate(model, sketch, image, source, seed):
    seen, outputs, note = load_pipeline(model, "pix2pix").translate(sketch, image, source, seed)
    return png(seen), png(outputs), note


@guarded
def simclr_nearest(model, image):
    seen, neighbours, plane, note = load_pipeline(model, "simclr").nearest(image)
    return png(seen), png(neighbours), png(plane), note


@guarded
def fgsm_attack(model, image, attack, eps, target):
    original, perturbation, adversarial, before, after = load_pipeline(model, "classifier").attack(image, attack, eps,
                                                                                                 target)
    return png(original), png(perturbation), png(adversarial), before, after


def class_picker(model, family):
    """The class picker is live only for a conditional model (private: not an API endpoint)."""
    try:
        conditional = pipeline.is_conditional(model, family)
    except RequestError:
        return gr.update(interactive=False, value=-1)
    return gr.update(interactive=conditional, value=-1 if not conditional else gr.skip())


def diffusion_defaults(model) -> tuple[tuple[str, ...], float, int]:
    """The model's schedulers (its own first), guidance scale and steps, for the layout: a diffusion model's
    defaults when there is no config."""
    try:
        return pipeline.diffusion_defaults(model)
    except RequestError:
        return tuple(diffusion.samplers_for("epsilon")), 1.0, diffusion.DDPMConfig.eval_steps


def diffusion_pickers(model):
    """The scheduler picker, guidance and steps sliders follow the chosen model (private: not an endpoint)."""
    try:
        names, guidance, steps = pipeline.diffusion_defaults(model)
    except RequestError:
        return gr.skip(), gr.skip(), gr.skip()
    return (gr.update(choices=[(SCHEDULER_LABELS[n], n) for n in names], value=names[0]), gr.update(value=guidance),
            gr.update(value=steps))


# ------------------------------------------------------------------------------------------------------ layout
def model_box(family: str, default: str, label: str = "model") -> gr.Dropdown:
    names = pipeline.model_names(family)          # (a manifest may list no model of a family: type a Hub id)
    return gr.Dropdown(names, value=default if default in names else (names or [None])[0], label=label,
                       allow_custom_value=True,
                       info="a shipped checkpoint, or type a Hub repo id (owner/name@revision)")


def image_input(label: str, example: int) -> gr.Image:
    image = gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], height=200,
                     value=EXAMPLES[example] if EXAMPLES else None)
    if EXAMPLES:
        gr.Examples(EXAMPLES, inputs=image, label="Fashion-MNIST test images", examples_per_page=10)
    return image


def about(text: str, specs: list[str]) -> None:
    with gr.Accordion("About", open=False):
        gr.Markdown(text, latex_delimiters=LATEX)
        table = pipeline.figures_markdown(specs)
        if table:
            gr.Markdown("Figures from the model cards (for generators: 10k samples vs the test set, on the features "
                        "of genlab's classifier at every depth; the off-manifold share is the fraction of samples less "
                        "realistic than 99% of real images):\n\n" + table)


def event(button, function, inputs, outputs, api_name: str, queue_group: str = "quick", limit: int = 1,
          validator=None):
    button.click(function, inputs, outputs, api_name=api_name, preprocess=False, concurrency_limit=limit,
                 concurrency_id=queue_group, validator=validator)


seed_box = lambda label="seed", value=0: gr.Number(value, label=label, precision=0, minimum=0, maximum=MAX_SEED)
count = lambda value=16: gr.Slider(1, pipeline.MAX_IMAGES, value=value, step=1, label="number of images")
picture_out = lambda label, height=None: gr.Image(label=label, type="filepath", format="png", interactive=False,
                                                  height=height)
single_out = lambda label: picture_out(label, 130)          # one enlarged 28-pixel image (84 px) and its frame

with gr.Blocks(title="genlab sampler", delete_cache=(600, 3600)) as demo:
    gr.Markdown("# genlab sampler\nGenerative models trained from scratch on Fashion-MNIST (28x28), shipped in this "
                "repository. Every button is also an API endpoint (`gradio_client`); see the README.")

    with gr.Tab("GAN"):
        with gr.Row():
            gan_model = model_box("gan", "dcgan")
            gan_label = gr.Dropdown(CLASSES, value=-1, label="class (conditional GAN only)")
            gan_seed = seed_box()
            gan_n = count(64)
        gan_button = gr.Button("Sample", variant="primary")
        gan_grid = picture_out("samples")
        with gr.Row():
            seed_a, seed_b = seed_box("seed A", 1), seed_box("seed B", 2)
            path_steps = gr.Slider(2, pipeline.MAX_PATH, value=10, step=1, label="images along the path")
            spherical = gr.Checkbox(True, label="spherical (slerp)")
        path_button = gr.Button("Interpolate")
        with gr.Row():
            path_strip, path_animation = picture_out("latent path"), picture_out("animation")
        with gr.Row():
            grid_model = model_box("gan", "cgan", "conditional model")
            per_class = gr.Slider(1, pipeline.MAX_PER_CLASS, value=10, step=1, label="samples per class")
            grid_button = gr.Button("Class x sample grid")
        class_grid = picture_out("row k: class k")
        about(r"""**GAN** (Goodfellow et al. 2014): a generator $G(z)$, $z\sim\mathcal N(0, I)$, against a
discriminator $D$. Non-saturating loss: $L_D = -\mathbb E[\log D(x)] - \mathbb E[\log(1 - D(G(z)))]$,
$L_G = -\mathbb E[\log D(G(z))]$. The cgan sees the label in both networks (Mirza & Osindero 2014) and is trained
with R3GAN's relativistic loss $f(D(G(z)) - D(x))$ plus R1 and R2 penalties. Interpolation follows the great circle
(slerp): $z_t = \frac{\sin((1-t)\theta)}{\sin\theta} z_A + \frac{\sin(t\theta)}{\sin\theta} z_B$.""",
              pipeline.model_names("gan"))
        event(gan_button, gan_sample, [gan_model, gan_n, gan_seed, gan_label], gan_grid, "gan_sample")
        event(path_button, gan_interpolate, [gan_model, seed_a, seed_b, path_steps, spherical, gan_label],
              [path_strip, path_animation], "gan_interpolate")
        event(grid_button, gan_class_grid, [grid_model, per_class, gan_seed], class_grid, "gan_class_grid")

    with gr.Tab("StyleGAN"):
        layers = style.style_layers(style.StyleGANConfig().image_size)
        with gr.Row():
            sg_model = model_box("stylegan", "stylegan")
            sg_seed = seed_box()
            sg_psi = gr.Slider(*style.PSI_RANGE, value=1.0, step=0.05, label="truncation ψ (0: the mean style w̄)")
            sg_n = count(32)
        sg_button = gr.Button("Sample", variant="primary")
        sg_grid = picture_out("samples")
        with gr.Row():
            mix_rows, mix_columns = (gr.Slider(1, pipeline.MAX_MIX_SOURCES, value=4, step=1, label=f"{side} sources")
                                     for side in ("coarse (rows)", "fine (columns)"))
            mix_row_seed, mix_column_seed = seed_box("first row seed", 10), seed_box("first column seed", 20)
            crossover = gr.Slider(1, layers - 1, value=3, step=1,
                                  label=f"crossover: rows give layers below it (of {layers}), columns the rest")
        mix_button = gr.Button("Mix styles")
        mix_grid = picture_out("style mixing: top row and left column are the sources")
        noise_button = gr.Button("Resample the noise inputs")
        with gr.Row():
            noise_variants = picture_out(f"one w, {pipeline.NOISE_DRAWS} noise draws")
            noise_spread = picture_out("without noise | where the noise acts (per-pixel spread)")
        with gr.Row():
            sg_seed_b = seed_box("seed B", 2)
            sg_steps = gr.Slider(2, pipeline.MAX_PATH, value=10, step=1, label="images along the path")
            sg_path_button = gr.Button("Interpolate from seed to seed B")
        sg_path = picture_out("straight lines in W (top) and in Z (bottom)")
        about(r"""**StyleGAN** (Karras et al. 2019; StyleGAN2 networks, Karras et al. 2020): a mapping network turns
$z$ into a style $w$; each convolution of the synthesis network is modulated by an affine map of $w$ and demodulated,
$w''_{ijk} = s_i w_{ijk} / \sqrt{\sum_{i,k} (s_i w_{ijk})^2 + \epsilon}$, and per-pixel noise adds stochastic detail.
Mixing feeds different layers different styles: the early (coarse) layers set shape and class, the late (fine) ones
shading and texture. Truncation: $w' = \bar w + \psi (w - \bar w)$ trades variety for typicality. W is less
entangled than Z, so straight lines in W change the image more evenly.""", pipeline.model_names("stylegan"))
        event(sg_button, stylegan_sample, [sg_model, sg_n, sg_seed, sg_psi], sg_grid, "stylegan_sample")
        event(mix_button, stylegan_mix, [sg_model, mix_row_seed, mix_column_seed, mix_rows, mix_columns, crossover,
                                         sg_psi], mix_grid, "stylegan_mix")
        event(noise_button, stylegan_noise, [sg_model, sg_seed, sg_psi], [noise_variants, noise_spread],
              "stylegan_noise")
        event(sg_path_button, stylegan_interpolate, [sg_model, sg_seed, sg_seed_b, sg_steps, sg_psi], sg_path,
              "stylegan_interpolate")

    with gr.Tab("VAE"):
        with gr.Row():
            vae_model = model_box("vae", "vae")
            vae_seed = seed_box()
            vae_n = count(64)
        vae_button = gr.Button("Sample from the prior", variant="primary")
        vae_grid = picture_out("samples: decoder means of z ~ p(z)")
        with gr.Row():
            with gr.Column():
                image_a = image_input("image A", 7)
            with gr.Column():
                image_b = image_input("image B", 9)
        with gr.Row():
            reconstruct_button = gr.Button("Reconstruct A")
            plane_button = gr.Button("A on the 2-D latent plane (vae-2d)")
            compare_button = gr.Button("Autoencoder vs VAE (MSE blur)")
        with gr.Row():
            vae_seen, vae_reconstruction = single_out("what the model saw"), single_out("reconstruction")
        with gr.Row():
            plane = picture_out("latent plane of vae-2d")
            with gr.Column():
                plane_note = gr.Markdown()
                compare_reconstructions = picture_out("input | autoencoder | VAE")
                compare_samples = picture_out("prior samples: autoencoder (top), VAE (bottom)")
        with gr.Row():
            vae_steps = gr.Slider(2, pipeline.MAX_PATH, value=10, step=1, label="images along the path")
            interpolate_button = gr.Button("Interpolate A -> B")
        vae_path = picture_out("decoded path from μ(A) to μ(B)")
        with gr.Row():
            dimension = gr.Slider(0, 31, value=0, step=1, label="latent dimension (vae-2d: 0 or 1)")
            span = gr.Slider(0.5, pipeline.MAX_SPAN, value=3, step=0.5, label="sweep from -span to +span")
            traverse_button = gr.Button("Traverse one dimension of A")
        vae_sweep = picture_out("decoded μ(A) with one coordinate swept")
        about(r"""**VAE** (Kingma & Welling 2013): encoder $q_\phi(z|x) = \mathcal N(\mu_\phi(x),
\operatorname{diag}\sigma^2_\phi(x))$, decoder $p_\theta(x|z)$, prior $\mathcal N(0, I)$; it maximises
$\mathrm{ELBO} = \mathbb E_q[\log p_\theta(x|z)] - \mathrm{KL}(q_\phi(z|x)\,\|\,p(z))$ with
$z = \mu + \sigma\odot\varepsilon$. The **autoencoder** minimises $\|x - \hat x\|^2$ only: its reconstructions are
the blurred mean of every image that shares a code, and its "samples" from $\mathcal N(0, I)$ land where no image
was encoded. The 2-D VAE's plane shows decoded points at equally spaced quantiles of $\mathcal N(0,1)$.
`vae-vamp` replaces $\mathcal N(0, I)$ by a VampPrior (Tomczak & Welling 2018),
$p(z) = \frac1K\sum_k q_\phi(z|u_k)$ over $K = 500$ learned pseudo-inputs $u_k$: sharper samples of every class.""",
              pipeline.model_names("vae"))
        event(vae_button, vae_sample, [vae_model, vae_n, vae_seed], vae_grid, "vae_sample")
        event(reconstruct_button, vae_reconstruct, [vae_model, image_a], [vae_seen, vae_reconstruction],
              "vae_reconstruct")
        event(plane_button, vae_latent_plane, [image_a], [plane, plane_note], "vae_latent_plane")
        event(compare_button, vae_compare, [image_a, vae_seed], [compare_reconstructions, compare_samples],
              "vae_compare")
        event(interpolate_button, vae_interpolate, [vae_model, image_a, image_b, vae_steps], vae_path,
              "vae_interpolate")
        event(traverse_button, vae_traverse, [vae_model, image_a, dimension, span, vae_steps], vae_sweep,
              "vae_traverse")

    with gr.Tab("Diffusion"):
        with gr.Row():
            ddpm_model = model_box("ddpm", "ddpm")
            samplers, guidance_scale, default_steps = diffusion_defaults(ddpm_model.value)
            scheduler = gr.Dropdown([(SCHEDULER_LABELS[n], n) for n in samplers], value=samplers[0], label="scheduler")
            steps = gr.Slider(1, diffusion.MAX_STEPS, value=default_steps, step=1, label="steps")
            eta = gr.Slider(*diffusion.ETA_RANGE, value=0, step=0.05, label="η (DDIM only: 0 deterministic, 1 DDPM-like)")
        with gr.Row():
            ddpm_n = count(16)
            ddpm_seed = seed_box()
            ddpm_label = gr.Dropdown(CLASSES, value=-1, label="class (ddpm-cond only)")
            guidance = gr.Slider(*diffusion.GUIDANCE_RANGE, value=guidance_scale,
                                 step=0.05, label="guidance scale w (1: none; a guided model starts at its card's)")
            ddpm_model.change(diffusion_pickers, ddpm_model, [scheduler, guidance, steps], api_visibility="private")
        ddpm_button = gr.Button("Denoise", variant="primary")
        ddpm_status = gr.Markdown()
        with gr.Row():
            ddpm_frame = picture_out("x_t, streamed while it runs")
            ddpm_guess = picture_out("x̂₀: what the network believes the final images will be")
        ddpm_strip = picture_out("the first images at 10 moments of the run: x_t above x̂₀")
        about(r"""**DDPM** (Ho et al. 2020): $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ with
$\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$. The shipped models predict
$v = \alpha_t\varepsilon - \sigma_t x_0$ (Salimans & Ho 2022) on the cosine schedule (Nichol & Dhariwal 2021),
trained with $\|v - v_\theta(x_t, t)\|^2$; the network's guess of the final image is
$\hat x_0 = \alpha_t x_t - \sigma_t v_\theta$, shown beside $x_t$. Predicting $\varepsilon$ instead (the paper)
gives $\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t$, which multiplies the network's errors by
$1/\alpha_t$ (about 150 at the noisiest step of the linear schedule): on our CPU budget that left about one sample in
ten as saturated speckle. Sampling runs the reverse process from pure noise: DDPM (ancestral, 1000 steps in the
paper), DDIM (Song et al. 2020, $\eta = 0$ deterministic) or DPM-Solver++ (Lu et al. 2022, 10-20 steps suffice),
as an ODE or, "SDE", drawing fresh noise at every step as DDPM does, which corrects earlier steps' errors: the
default for `ddpm` (precision 0.85 against 0.79 at the same 20 steps). `ddpm-cond` uses classifier-free guidance
(Ho & Salimans 2022): $\hat v = v_\theta(x_t) + w(v_\theta(x_t, y) - v_\theta(x_t))$. `ddpm` has no labels and
can be guided all the same, by **autoguidance** (Karras et al. 2024): a guide $v_G$, the same objective on a U-Net
a quarter the size trained for 2000 steps instead of 17000, makes the model's mistakes more often, and
$\hat v = v_G + w(v_\theta - v_G)$ steers away from them ($w = 1$: no guidance, where `ddpm`'s slider starts,
since on the longer-trained model the guide buys FID and recall with precision). A **flow-matching** model
(Lipman et al. 2023; Liu et al. 2023; give its Hub id) learns the straight path
$x_\sigma = (1-\sigma)x_0 + \sigma\varepsilon$ and its velocity $\varepsilon - x_0$; Euler or Heun integrate that
velocity from $\sigma = 1$ to $0$, and $\hat x_0 = x_\sigma - \sigma v_\theta$. An **EDM** model (Karras et al.
2022) learns the network inside the denoiser $D(x;\sigma) = c_\text{skip}x + c_\text{out}F_\theta(c_\text{in}x;
\tfrac14\ln\sigma)$ on $x_\sigma = x_0 + \sigma\varepsilon$; Heun (its Algorithm 1), Euler or DPM-Solver++ (one
network pass a step) solve $dx/d\sigma = (x - D)/\sigma$ from $\sigma = 80$ to $0$, and $\hat x_0 = D$.""",
              pipeline.model_names("ddpm"))
        event(ddpm_button, ddpm_sample, [ddpm_model, ddpm_n, steps, scheduler, eta, ddpm_seed, ddpm_label, guidance],
              [ddpm_frame, ddpm_guess, ddpm_strip, ddpm_status], "ddpm_sample", queue_group="diffusion", limit=2,
              validator=admit_diffusion)

    with gr.Tab("CycleGAN"):
        with gr.Row():
            with gr.Column():
                cycle_image = image_input("image (any size; converted to 28x28 grey)", 7)
            with gr.Column():
                cycle_model = model_box("cyclegan", "cyclegan")
                direction = gr.Dropdown([("sneaker -> ankle boot (A -> B)", "a2b"),
                                         ("ankle boot -> sneaker (B -> A)", "b2a")], value="a2b", label="direction")
                cycle_button = gr.Button("Translate", variant="primary")
                cycle_note = gr.Markdown()
        with gr.Row():
            cycle_seen = single_out("what the model saw")
            cycle_out = single_out("translation")
            cycle_back = single_out("cycle reconstruction")
        about(r"""**CycleGAN** (Zhu et al. 2017): two generators $G: A\to B$, $F: B\to A$ trained without pairs by
least-squares adversarial losses and the cycle loss
$\mathbb E_a\|F(G(a)) - a\|_1 + \mathbb E_b\|G(F(b)) - b\|_1$ (weight 10), plus an identity loss.""",
              pipeline.model_names("cyclegan"))
        event(cycle_button, cyclegan_translate, [cycle_model, cycle_image, direction],
              [cycle_seen, cycle_out, cycle_back, cycle_note], "cyclegan_translate")

    with gr.Tab("Pix2Pix"):
        with gr.Row():
            with gr.Column():
                sketch = gr.Sketchpad(label="draw an outline (pick the brush)",
                                      type="filepath", format="png", canvas_size=(280, 280), height=320,
                                      brush=gr.Brush(default_size=8, colors=["#000000"], color_mode="fixed"),
                                      layers=False)
            with gr.Column():
                pix_image = gr.Image(label="or upload a picture (its edges are computed) or an edge map",
                                     type="filepath", sources=["upload", "clipboard"], height=200,
                                     value=EDGE_EXAMPLES[7] if EDGE_EXAMPLES else None)
                pix_source = gr.Radio([("my drawing", "drawing"), ("the upload, as an edge map", "edge map"),
                                       ("the upload's edges", "picture")], value="edge map", label="translate")
                if EDGE_EXAMPLES:
                    gr.Examples([[path, "edge map"] for path in EDGE_EXAMPLES], inputs=[pix_image, pix_source],
                                label="edge maps of Fashion-MNIST test images", examples_per_page=10,
                                visible_columns=[0])
            with gr.Column():
                pix_model = model_box("pix2pix", "pix2pix-edges")
                pix_seed = seed_box()
                pix_button = gr.Button("Translate", variant="primary")
                pix_note = gr.Markdown()
        with gr.Row():
            pix_seen = single_out("the edge map the model saw")
            pix_out = picture_out("outputs (one per dropout draw)", 130)
        about(r"""**Pix2Pix** (Isola et al. 2017): a U-Net generator $G$ learns to map an input $x$ (here the Sobel edge
map of a garment) to its image $y$, against a PatchGAN discriminator $D$ that judges (input, image) pairs patch by
patch: $\min_G \max_D\ \mathbb E[\log D(x, y)] + \mathbb E[\log(1 - D(x, G(x)))] + \lambda\, \mathbb E\|y - G(x)\|_1$
with $\lambda = 100$. The L1 term alone gives the blurry average of all plausible garments; the adversarial term
makes the output sharp. The generator's only noise is dropout, kept on at sampling, so different seeds differ a
little.""", pipeline.model_names("pix2pix"))
        event(pix_button, pix2pix_translate, [pix_model, sketch, pix_image, pix_source, pix_seed],
              [pix_seen, pix_out, pix_note], "pix2pix_translate")
        sketch.change(lambda: "drawing", None, pix_source, api_visibility="private")   # drawing selects it

    with gr.Tab("SimCLR"):
        with gr.Row():
            with gr.Column():
                sim_image = image_input("image (any size; converted to 28x28 grey)", 2)
            with gr.Column():
                sim_model = model_box("simclr", "simclr")
                sim_button = gr.Button("Find similar images", variant="primary")
                sim_note = gr.Markdown()
        with gr.Row():
            sim_seen = single_out("what the model saw")
            sim_neighbours = picture_out(f"the {pipeline.NEIGHBOURS} nearest test images in the representation", 130)
        sim_plane = picture_out("the test images' representations on their two principal axes; the query ringed")
        about(r"""**SimCLR** (Chen et al. 2020) learns a representation $h = f(x)$ without labels: two random
augmentations of each image (crop, flip, contrast, noise, erasing) go through $f$ and a projection head $g$, and the
NT-Xent loss $\ell(i, j) = -\log \frac{\exp(\mathrm{sim}(z_i, z_j)/\tau)}{\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k)/\tau)}$
pulls the two views of an image together and pushes the other $2N - 2$ views of the batch away. Nothing here was
trained with a label: the classes only colour the plot.""", pipeline.model_names("simclr"))
        event(sim_button, simclr_nearest, [sim_model, sim_image], [sim_seen, sim_neighbours, sim_plane, sim_note],
              "simclr_nearest")

    with gr.Tab("FGSM"):
        with gr.Row():
            with gr.Column():
                attack_image = image_input("image", 0)
            with gr.Column():
                attack_model = model_box("classifier", "classifier", "classifier")
                attack = gr.Dropdown([("FGSM", "fgsm"), ("targeted FGSM", "fgsm_targeted"), ("PGD, 10 steps", "pgd")],
                                     value="fgsm", label="attack")
                eps = gr.Slider(0, pipeline.MAX_EPS, value=0.05, step=0.01, label="ε (fraction of the pixel range)")
                target = gr.Dropdown(TARGETS, value=8, label="target class (targeted FGSM)")
                attack_button = gr.Button("Attack", variant="primary")
        with gr.Row():
            attack_original = single_out("image")
            attack_delta = single_out("perturbation (±ε shown as black/white)")
            attack_result = single_out("adversarial image")
        with gr.Row():
            before, after = gr.Label(label="top-3 before"), gr.Label(label="top-3 after")
        gr.LinePlot(pd.DataFrame(pipeline.robustness_table(pipeline.model_names("classifier"))), x="eps", y="accuracy",
                    color="model", title="Test accuracy under FGSM vs ε (10,000 test images, from the model cards)",
                    y_lim=[0, 1], height=300)
        about(r"""**FGSM** (Goodfellow et al. 2015): $x_{adv} = \operatorname{clip}(x + \varepsilon\,
\operatorname{sign}\nabla_x J(\theta, x, y))$; targeted toward class $t$: $x - \varepsilon\,\operatorname{sign}
\nabla_x J(\theta, x, t)$. **PGD** (Madry et al. 2018) repeats the step 10 times with projection onto the
$\varepsilon$-ball. `classifier-adv` was trained on FGSM examples (with a random start) at $\varepsilon = 0.1$.""",
              pipeline.model_names("classifier"))
        event(attack_button, fgsm_attack, [attack_model, attack_image, attack, eps, target],
              [attack_original, attack_delta, attack_result, before, after], "fgsm_attack")

    with gr.Tab("Foundations"):
        with gr.Row():
            gate = gr.Dropdown(list(foundations.GATES), value="XOR", label="truth table")
            learner = gr.Dropdown(list(foundations.LEARNERS), value="two-layer MLP", label="learner")
            unit = gr.Dropdown(list(foundations.ACTIVATIONS), value="tanh", label="hidden activation (MLP)")
            unit_seed = seed_box("seed (MLP initialisation)")
        epoch = gr.Slider(0, foundations.MAX_EPOCHS, value=foundations.MAX_EPOCHS, step=1,
                          label="epoch shown (drag to watch the boundary move)")
        train_button = gr.Button("Train", variant="primary")
        train_note = gr.Markdown()
        with gr.Row():
            boundary = picture_out("decision regions at that epoch (blue: 0, orange: 1; green: hidden units' lines)")
            boundary_animation = picture_out("the whole run")
        with gr.Row():
            with gr.Column():
                curve_name = gr.Dropdown(list(foundations.ACTIVATIONS), value="sigmoid", label="activation")
                curve_button = gr.Button("Plot")
                curve_formula = gr.Markdown()
            curve = picture_out("the function (blue) and its derivative (orange)")
        with gr.Row():
            with gr.Column():
                target_curve = gr.Dropdown(list(foundations.TARGETS), value="sin", label="target on [-π, π]")
                hidden = gr.Slider(1, pipeline.MAX_HIDDEN, value=4, step=1, label="hidden units n")
                fit_unit = gr.Dropdown(list(foundations.ACTIVATIONS), value="tanh", label="activation")
                fit_button = gr.Button("Fit")
                fit_note = gr.Markdown()
            fit = picture_out("one hidden layer of n units (blue) against the target (black)")
        about(r"""**Perceptron** (Rosenblatt 1958): $\hat y = \mathrm{step}(w\cdot x + b)$, learning rule
$w \leftarrow w + \eta (y - \hat y) x$. It converges on AND and OR, and cycles forever on XOR: no line separates
XOR's classes. **Gradient descent** trains the same unit with $\hat y = \sigma(w\cdot x + b)$ on the binary
cross-entropy, whose gradient $(\hat y - y)x$ is the rule made continuous. A **two-layer MLP** with two hidden units
draws two lines and combines them, which solves XOR (from most seeds; others stall). **Universal approximation**
(Cybenko 1989): one hidden layer of enough units fits any continuous function on an interval.""", [])
        gr.on([train_button.click, epoch.release], foundations_train, [gate, learner, unit, unit_seed, epoch],
              [boundary, boundary_animation, train_note], api_name="foundations_train", preprocess=False,
              concurrency_limit=1, concurrency_id="quick")
        event(curve_button, foundations_activation, [curve_name], [curve, curve_formula], "foundations_activation")
        event(fit_button, foundations_approximate, [target_curve, hidden, fit_unit], [fit, fit_note],
              "foundations_approximate")

    for box, picker, family in ((gan_model, gan_label, "gan"), (ddpm_model, ddpm_label, "ddpm")):
        toggle = functools.partial(class_picker, family=family)
        demo.load(toggle, box, picker, api_visibility="private")
        box.change(toggle, box, picker, api_visibility="private")

demo.queue(max_size=64)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))      # a normal stop runs the atexit clean-up
    demo.launch(max_file_size="10mb", allowed_paths=[str(OUTPUTS.folder), str(ROOT / "apps" / "examples")])
