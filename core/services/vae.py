"""The VAE tab: prior samples, reconstructions, paths and traversals in the latent space, the 2-D latent plane,
and the autoencoder against the VAE (core/models/vae.py)."""
from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

from core.models.vae import PLANE_QUANTILES
from core.requests import MAX_SEED, RequestError, read_image, real_number, to_model_input, whole_number
from core.services.base import (MAX_IMAGES, MAX_PATH, Endpoint, ModelChoice, Number, Output, Service, Upload,
                                count_input, model_config, path_input, seed_input)
from core.services.pictures import SCALE, grid_image, single_image

MAX_SPAN = 10.0                # a latent sweep goes from -span to +span
PLANE_MARGIN = 40              # white pixels around the latent plane: a whole ring at its edge, the axes' ticks
PLANE_TICKS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)    # z values marked on both axes of the plane
PLANE_MODEL, AUTOENCODER, VARIATIONAL = "vae-2d", "autoencoder", "vae"    # the tab's fixed comparisons
MODEL = ModelChoice("model", "model", "vae", "vae")
SEED = seed_input()
IMAGE_A = Upload("image_a", "image A", "7-sneaker.png")
STEPS = path_input()


class VAEService(Service):
    family, tab = "vae", "VAE"
    about = r"""**VAE** (Kingma & Welling 2013): encoder $q_\phi(z|x) = \mathcal N(\mu_\phi(x),
\operatorname{diag}\sigma^2_\phi(x))$, decoder $p_\theta(x|z)$, prior $\mathcal N(0, I)$; it maximises
$\mathrm{ELBO} = \mathbb E_q[\log p_\theta(x|z)] - \mathrm{KL}(q_\phi(z|x)\,\|\,p(z))$ with
$z = \mu + \sigma\odot\varepsilon$. The **autoencoder** minimises $\|x - \hat x\|^2$ only: its reconstructions are
the blurred mean of every image that shares a code, and its "samples" from $\mathcal N(0, I)$ land where no image
was encoded. The 2-D VAE's plane shows decoded points at equally spaced quantiles of $\mathcal N(0,1)$.
`vae-vamp` replaces $\mathcal N(0, I)$ by a VampPrior (Tomczak & Welling 2018),
$p(z) = \frac1K\sum_k q_\phi(z|u_k)$ over $K = 500$ learned pseudo-inputs $u_k$: sharper samples of every class."""
    endpoints = (
        Endpoint("vae_sample", "sample", (MODEL, count_input(64), SEED),
                 (Output("samples: decoder means of z ~ p(z)"),), "Sample from the prior"),
        Endpoint("vae_reconstruct", "reconstruct", (MODEL, IMAGE_A.named("image")),
                 (Output("what the model saw", height=130), Output("reconstruction", height=130)), "Reconstruct A"),
        Endpoint("vae_latent_plane", "plane_of", (IMAGE_A.named("image"),),
                 (Output(f"latent plane of {PLANE_MODEL}"), Output("", "text")),
                 f"A on the 2-D latent plane ({PLANE_MODEL})"),
        Endpoint("vae_compare", "compare", (IMAGE_A.named("image"), SEED),
                 (Output("input | autoencoder | VAE"), Output("prior samples: autoencoder (top), VAE (bottom)")),
                 "Autoencoder vs VAE (MSE blur)"),
        Endpoint("vae_interpolate", "interpolate",
                 (MODEL, IMAGE_A, Upload("image_b", "image B", "9-ankle-boot.png"), STEPS),
                 (Output("decoded path from μ(A) to μ(B)"),), "Interpolate A -> B"),
        Endpoint("vae_traverse", "traverse",
                 (MODEL, IMAGE_A.named("image"), Number("dim", "latent dimension (vae-2d: 0 or 1)", 0, 0, 1),
                  Number("span", "sweep from -span to +span", 3, 0.5, MAX_SPAN, step=0.5), STEPS),
                 (Output("decoded μ(A) with one coordinate swept"),), "Traverse one dimension of A"),
    )

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """The traversal's dimension slider spans the model's latent dimensions."""
        try:
            latent_dim = model_config(spec, cls.family).get("latent_dim")
        except RequestError:
            return {}
        return {"dim": {"maximum": latent_dim - 1}} if isinstance(latent_dim, int) and latent_dim > 1 else {}

    def sample(self, n, seed) -> Image.Image:
        return grid_image(self.model.sample(whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)))

    def reconstruct(self, upload) -> tuple[Image.Image, Image.Image]:
        """(what the model saw, decode(μ(x)))."""
        x, _ = to_model_input(read_image(upload))
        return single_image(x), single_image(self.model.reconstruct(x[None])[0])

    def interpolate(self, upload_a, upload_b, steps) -> Image.Image:
        steps = whole_number(steps, "steps", 2, MAX_PATH)
        x_a, x_b = to_model_input(read_image(upload_a))[0], to_model_input(read_image(upload_b))[0]
        return grid_image(self.model.interpolate(x_a, x_b, steps), steps)

    def traverse(self, upload, dim, span=3.0, steps=9) -> Image.Image:
        """μ(x) with one latent coordinate swept from −span to span (Higgins et al.'s traversal), as a strip."""
        dim = whole_number(dim, "dim", 0, self.model.config.latent_dim - 1)
        span, steps = real_number(span, "span", 0.0, MAX_SPAN), whole_number(steps, "steps", 2, MAX_PATH)
        x, _ = to_model_input(read_image(upload))
        return grid_image(self.model.traverse(x, dim, span, steps), steps)

    def latent_plane(self, upload, side: int = 15) -> tuple[Image.Image, tuple[float, float]]:
        """The 2-D latent plane (decoded N(0, 1) quantiles) with μ(x) of the image marked by a red ring, inside a
        white margin (a ring at the edge stays whole) that carries the axes' z ticks. The grid's cells sit at
        equally spaced quantiles, so a point's position along an axis is Φ(z), not z."""
        vae = self.model
        if vae.config.latent_dim != 2:
            raise RequestError(f"{self.name!r} has a {vae.config.latent_dim}-D latent space; the plane needs a 2-D one")
        grid = grid_image(vae.latent_grid(side), side)
        z = vae.encode(to_model_input(read_image(upload))[0][None])[0][0]
        (low, high), cell = PLANE_QUANTILES, (vae.config.image_size + 2) * SCALE
        phi = lambda v: float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(v)).clamp(low, high))
        across = lambda p: (PLANE_MARGIN + 2 * SCALE + cell * (p - low) / (high - low) * (side - 1)
                            + (cell - 2 * SCALE) / 2)                       # a cell's centre, in pixels
        up = lambda p: across(high + low - p)                                      # z₂ rises bottom to top
        picture = Image.new("RGB", (grid.width + 2 * PLANE_MARGIN, grid.height + 2 * PLANE_MARGIN), "white")
        picture.paste(grid, (PLANE_MARGIN, PLANE_MARGIN))
        draw, font, edge = ImageDraw.Draw(picture), ImageFont.load_default(size=14), PLANE_MARGIN + grid.width
        for tick in PLANE_TICKS:
            draw.text((across(phi(tick)), edge + 4), f"{tick:g}", fill="black", font=font, anchor="mt")
            draw.text((PLANE_MARGIN - 4, up(phi(tick))), f"{tick:g}", fill="black", font=font, anchor="rm")
        draw.text((edge, edge + 22), "z1 (ticks at z; cells at equal quantiles)", fill="black", font=font, anchor="rt")
        draw.text((PLANE_MARGIN, PLANE_MARGIN - 6), "z2", fill="black", font=font, anchor="rb")
        x, y, radius = across(phi(float(z[0]))), up(phi(float(z[1]))), cell * 0.6
        for width, colour in ((7, "white"), (4, "red")):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=width)
        return picture, (float(z[0]), float(z[1]))

    @classmethod
    def plane_of(cls, upload) -> tuple[Image.Image, str]:
        """The upload on the plane of the shipped 2-D VAE, and its μ(x)."""
        picture, (z1, z2) = cls.load(PLANE_MODEL).latent_plane(upload)
        return picture, f"μ(x) = ({z1:.2f}, {z2:.2f}), the red ring"

    @classmethod
    def compare(cls, upload, seed, ae: str = AUTOENCODER, vae: str = VARIATIONAL) -> tuple[Image.Image, Image.Image]:
        """MSE blur, side by side: (input | autoencoder | VAE reconstructions, 8 prior samples of each as two rows)."""
        autoencoder, variational = cls.load(ae).model, cls.load(vae).model
        x, _ = to_model_input(read_image(upload))
        seed = whole_number(seed, "seed", 0, MAX_SEED)
        reconstructions = torch.stack([x, autoencoder.reconstruct(x[None])[0], variational.reconstruct(x[None])[0]])
        samples = torch.cat([autoencoder.sample(8, seed), variational.sample(8, seed)])
        return grid_image(reconstructions, 3), grid_image(samples, 8)
