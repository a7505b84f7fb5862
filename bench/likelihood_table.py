"""One bits/dim table on the Fashion-MNIST test images (issue 41), every figure from core/likelihood.py's protocol:

    python bench/likelihood_table.py --threads 1 --ddpm-images 2000 --samples 12        # about 10 minutes on one thread

Rows: the uniform model (8 bits/dim, exact); the independent per-pixel histogram (256 levels per pixel, fitted on the
60k training images with add-½ smoothing, exact); lossless codecs as the yardstick of a generic compressor (PNG,
WebP lossless, JPEG XL lossless via imagecodecs at their strongest settings: each test image encoded alone, file
bits / 784, container headers included, so a few dozen bytes per file of overhead count; libwebp takes RGB only, so
WebP gets the grey image in all three channels); the shipped `glow` if checkpoints/glow exists
(Flow.bits_per_dim, one seeded draw of uniform dequantization noise per image: an upper bound); the shipped
`pixelcnn` if checkpoints/pixelcnn exists (exact: p(k) = Σ_y p(k | y)/10 on the first --pixelcnn-images, ten passes
each, with glow's figure on the same images, and p(k | y) given the label on all); the shipped `ddpm`'s
variational bound (core.likelihood.diffusion_bound: the prior and decoder terms exactly, --samples importance-sampled
KL timesteps per image, the proposal fitted on a pilot of --pilot-images training images; --proposal uniform to
compare) on the first --ddpm-images
test images. The shipped `vae` gets a note, not a number (see NOTES). Standard errors are over test images (for the
DDPM they include the timestep sampling noise). Times are on the machine that ran it, at --threads.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import likelihood as lk  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.hub import load_model  # noqa: E402
from core.schedulers.base import predicted_x0  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CODECS = ("png", "webp", "jpegxl")
PILOT_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 999)
NOTES = """- `vae` (shipped): no number. Its decoder is a Bernoulli on grey values: −log p(x|z) is the binary cross-entropy
  of k/255 against the decoder's mean, which is not a distribution over the 256 levels of a pixel (summed over the
  levels it is not 1, and its minimum over a grey target is not 0), so its ELBO in "bits" is not a bound on
  −log₂ P(k)/D. `vae-logistic`, the same VAE with a discretized logistic decoder, has the VAE rows."""


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def histogram_bits(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Exact −log₂ P(k)/D under independent per-pixel categoricals fitted on the training images (add-½)."""
    train, test = train.flatten(1).long(), test.flatten(1).long()                   # (N, D)
    counts = torch.zeros(train.shape[1], lk.LEVELS, dtype=torch.float64)
    counts.scatter_add_(1, train.T.contiguous(), torch.ones(train.T.shape, dtype=torch.float64))
    log_probs = (counts + 0.5).log() - math.log(len(train) + 0.5 * lk.LEVELS)        # (D, 256)
    return lk.discrete_bits_per_dim(log_probs.gather(1, test.T.contiguous()).T.sum(1), train.shape[1])


def codec_bits(images: torch.Tensor, codec: str) -> torch.Tensor:
    """File bits / D for each image encoded alone, losslessly (checked by decoding it back)."""
    import imagecodecs
    import numpy as np
    encode = {"png": lambda a: imagecodecs.png_encode(a, level=9),                   # zlib's best compression
              "webp": lambda a: imagecodecs.webp_encode(np.repeat(a[..., None], 3, 2), level=100, lossless=True,
                                                        method=6),                    # libwebp takes RGB(A) only
              "jpegxl": lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9)}[codec]
    decode = {"png": imagecodecs.png_decode, "webp": imagecodecs.webp_decode, "jpegxl": imagecodecs.jpegxl_decode}
    bits = []
    for image in images[:, 0].numpy():
        data = encode(image)
        decoded = decode[codec](data)
        decoded = decoded[..., 0] if decoded.ndim == 3 else decoded                  # WebP decodes to RGB
        if not (decoded == image).all():
            raise RuntimeError(f"{codec} did not round-trip an image: not lossless")
        bits.append(8 * len(data) / image.size)
    return torch.tensor(bits, dtype=torch.float64)


def glow_bits(images: torch.Tensor, batch_size: int = 500, folder: Path = ROOT / "checkpoints" / "glow"
              ) -> torch.Tensor:
    model = load_model(folder).eval()
    generator, out = torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float() / 127.5 - 1
            out.append(model.bits_per_dim(x, None, generator).double())
    return torch.cat(out)


def pixelcnn_bits(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 250) -> torch.Tensor:
    """The shipped class-conditional PixelCNN's exact −log₂ p(k)/D = −log₂ Σ_y p(k | y)/10 /D (labels None: ten
    passes per image), or −log₂ p(k | y)/D given each image's label."""
    model, out = load_model(ROOT / "checkpoints" / "pixelcnn").eval(), []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float() / 127.5 - 1
            part = labels[start:start + batch_size] if labels is not None else None
            out.append(model.bits_per_dim(x, part).double())
    return torch.cat(out)


def pixelcnn_rows(test, glow: torch.Tensor | None, n: int) -> list[str]:
    """p(k) on the first n test images (exact, ten passes each), glow on the same images, p(k | y) on all."""
    bits, seconds = timed(lambda: pixelcnn_bits(test.images[:n], None))
    lines = [row("pixelcnn", lk.BitsPerDim.of(bits, "exact"), seconds,
                 "p(k) = Σ_y p(k | y)/10 of the class-conditional Gated PixelCNN, 256-way softmax per pixel")]
    if glow is not None and n < len(glow):
        paired = glow[:n] - bits
        lines.append(row(f"glow, the PixelCNN's {n} images", lk.BitsPerDim.of(glow[:n], "bound"), 0.0,
                         f"same images: glow − pixelcnn = {float(paired.mean()):.3f} ± "
                         f"{float(paired.std() / math.sqrt(len(paired))):.3f} (paired)"))
    conditional, seconds = timed(lambda: pixelcnn_bits(test.images, test.labels))
    lines.append(row("pixelcnn given the label", lk.BitsPerDim.of(conditional, "exact"), seconds,
                     "p(k | y) with each test image's true label: not a likelihood of the image alone"))
    return lines


def ddpm_denoiser(model, clip: bool):
    """x̂_0 from (x_t, t) for the shipped DDPM, unguided (guidance 1: the model itself, not its autoguided mix)."""
    abar = model.noise_scheduler.alphas_cumprod

    @torch.no_grad()
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = model.predict(x_t, t, None, 1.0)
        a = abar[t].view(-1, 1, 1, 1)
        x0_hat = predicted_x0(model.config.prediction_type, output, x_t, a.sqrt(), (1 - a).sqrt())
        return x0_hat.clamp(-1, 1) if clip else x0_hat
    return denoise


def ddpm_bits(train: torch.Tensor, test: torch.Tensor, args) -> tuple[torch.Tensor, float, float, float]:
    """The shipped DDPM's bound per image, the mean timestep-sampling error, the mean decoder term L_0, and the
    pilot's seconds."""
    model = load_model(ROOT / "checkpoints" / "ddpm").eval()
    schedule = lk.DiffusionSchedule(model.noise_scheduler.alphas_cumprod, args.variance)
    denoise, generator = ddpm_denoiser(model, not args.no_clip), torch.Generator().manual_seed(0)
    start, proposal = time.perf_counter(), None
    if args.proposal == "importance":
        pilot = train[:args.pilot_images].float() / 127.5 - 1
        pilot_t = torch.tensor(PILOT_TIMESTEPS)
        rms = torch.stack([lk.step_bits(pilot, torch.full((len(pilot),), int(t)), denoise, schedule, generator)
                           .pow(2).mean().sqrt() for t in pilot_t])
        proposal = lk.importance_proposal(pilot_t, rms, schedule.steps)
    pilot_seconds = time.perf_counter() - start
    per_image, errors, decoder = [], [], []
    for begin in range(0, len(test), args.batch_size):
        x0 = test[begin:begin + args.batch_size].float() / 127.5 - 1
        bound = lk.diffusion_bound(x0, denoise, schedule, args.samples, proposal, generator)
        per_image.append(bound.bits_per_dim)
        errors.append(bound.sampling_error)
        decoder.append(bound.decoder)
    return torch.cat(per_image), float(torch.cat(errors).mean()), float(torch.cat(decoder).mean()), pilot_seconds


def row(name: str, result: lk.BitsPerDim, seconds: float, note: str = "") -> str:
    return (f"| {name} | {result.mean:.3f} ± {result.standard_error:.3f} | {result.kind} | {result.images} | "
            f"{seconds:.1f} | {note} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm-images", type=int, default=2000, help="first N test images for the DDPM bound (0: skip)")
    parser.add_argument("--samples", type=int, default=12, help="sampled KL timesteps per image")
    parser.add_argument("--proposal", choices=("importance", "uniform"), default="importance",
                        help="how the KL timesteps are drawn: r(t) ∝ the pilot's √E[L_t²], or uniformly")
    parser.add_argument("--pilot-images", type=int, default=64, help="training images for the proposal's pilot")
    parser.add_argument("--variance", choices=lk.VARIANCES, default="small",
                        help="σ_t² of p_θ(x_{t−1}|x_t): β̃_t (small, what the ddpm samples with) or β_t")
    parser.add_argument("--no-clip", action="store_true", help="do not clip x̂_0 to [-1, 1]")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--pixelcnn-images", type=int, default=1000,
                        help="first N test images for the PixelCNN's p(k) (ten passes each; 0: skip)")
    parser.add_argument("--codec-images", type=int, default=10000, help="first N test images for the codecs")
    parser.add_argument("--vae", type=Path, default=ROOT / "checkpoints" / "vae-logistic",
                        help="a VAE with a logistic decoder (a Hub folder or a run's checkpoint; skipped if absent)")
    parser.add_argument("--vae-k", default="1,10,100,1000", help="importance samples k of its bounds (1: the ELBO)")
    parser.add_argument("--vae-images", type=int, default=1000, help="first N test images for the VAE's bounds")
    parser.add_argument("--rows", default="all", choices=("all", "glow", "vae", "ddpm"),
                        help="all rows, or one model's alone")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test_set = load_dataset("fashion-mnist", "test")
    test, train = test_set.images, load_dataset("fashion-mnist", "train").images
    lines = ["| model | bits/dim (± s.e.) | exact / bound | images | seconds | how |", "|---|---|---|---|---|---|"]
    if args.rows == "all":
        lines += baseline_rows(train, test, args)
    glow = None
    if args.rows in ("all", "glow") and (ROOT / "checkpoints" / "glow").is_dir():
        glow, seconds = timed(lambda: glow_bits(test))
        lines.append(row("glow", lk.BitsPerDim.of(glow, "bound"), seconds,
                         "uniform dequantization, one seeded draw per image"))
    if args.rows == "all" and args.pixelcnn_images and (ROOT / "checkpoints" / "pixelcnn").is_dir():
        lines += pixelcnn_rows(test_set, glow, args.pixelcnn_images)
    if args.rows in ("all", "vae") and args.vae.is_dir():
        lines += vae_rows(test, args)
    if args.ddpm_images and args.rows in ("all", "ddpm"):
        lines += ddpm_rows(train, test, glow, args)
    print(f"python bench/likelihood_table.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip())
    print("\n".join(lines))
    print("\n" + NOTES)


def baseline_rows(train: torch.Tensor, test: torch.Tensor, args) -> list[str]:
    dims, lines = test[0].numel(), []
    uniform, seconds = timed(lambda: lk.discrete_bits_per_dim(torch.full((len(test),), -dims * math.log(256),
                                                                         dtype=torch.float64), dims))
    lines.append(row("uniform", lk.BitsPerDim.of(uniform, "exact"), seconds, "P(k) = 256^−D"))
    hist, seconds = timed(lambda: histogram_bits(train, test))
    lines.append(row("per-pixel histogram", lk.BitsPerDim.of(hist, "exact"), seconds,
                     "independent 256-way categorical per pixel, fitted on the 60k training images (add-½)"))
    for codec in CODECS:
        bits, seconds = timed(lambda: codec_bits(test[:args.codec_images], codec))
        lines.append(row(f"{codec} lossless", lk.BitsPerDim.of(bits, "exact"), seconds,
                         "file size of each image alone, container header included"))
    return lines


def vae_rows(test: torch.Tensor, args) -> list[str]:
    """−L_k/(D ln 2) of a VAE whose decoder is a distribution over the 8-bit levels, at each k, on the first
    --vae-images (each image's k latents drawn from one seeded generator): the bound tightens as k grows."""
    model = load_model(args.vae).eval()
    x, lines = test[:args.vae_images].float() / 127.5 - 1, []
    for k in (int(k) for k in args.vae_k.split(",")):
        bits, seconds = timed(lambda: model.bits_per_dim(x, generator=torch.Generator().manual_seed(0), k=k))
        lines.append(row(f"{args.vae.name}, k = {k}", lk.BitsPerDim.of(bits, "bound"), seconds,
                         "−ELBO" if k == 1 else "−L_k, the importance-weighted bound (Burda et al. 2015)"))
    return lines


def ddpm_rows(train: torch.Tensor, test: torch.Tensor, glow: torch.Tensor | None, args) -> list[str]:
    """The DDPM's bound on the first --ddpm-images, and the glow's figure on the same images beside it."""
    (bits, sampling, decoder, pilot_s), seconds = timed(lambda: ddpm_bits(train, test[:args.ddpm_images], args))
    clip = "x̂_0 unclipped" if args.no_clip else "x̂_0 clipped to [-1, 1]"
    lines = [row("ddpm", lk.BitsPerDim.of(bits, "bound"), seconds,
                 f"variational bound, σ² = {'β̃_t' if args.variance == 'small' else 'β_t'}, {clip}, "
                 f"{args.samples} {args.proposal}-sampled timesteps per image (mean sampling s.e. per image "
                 f"{sampling:.3f}); of it the decoder L_0 {decoder:.3f}"
                 + (f"; pilot {pilot_s:.0f} s on {args.pilot_images} training images"
                    if args.proposal == "importance" else ""))]
    if glow is not None and args.ddpm_images < len(glow):
        paired = glow[:args.ddpm_images] - bits
        lines.append(row(f"glow, the DDPM's {args.ddpm_images} images", lk.BitsPerDim.of(glow[:len(bits)], "bound"),
                         0.0, f"the rows above, same images: glow − ddpm = {float(paired.mean()):.3f} ± "
                              f"{float(paired.std() / math.sqrt(len(paired))):.3f} (paired)"))
    return lines


if __name__ == "__main__":
    main()
