"""The StyleGAN tab: samples with truncation, style mixing, the noise inputs' effect, paths in W and Z
(core/models/stylegan.py)."""
from __future__ import annotations

import torch
from PIL import Image

from core.models import stylegan as style
from core.requests import MAX_SEED, real_number, whole_number
from core.services.base import (MAX_IMAGES, MAX_PATH, Endpoint, ModelChoice, Number, Output, Service, count_input,
                                path_input, seed_input)
from core.services.pictures import grid_image

MAX_MIX_SOURCES = 6            # sources along each side of a style-mixing grid
NOISE_DRAWS = 8                # noise draws shown for one w
LAYERS = style.style_layers(style.StyleGANConfig().image_size)
MODEL = ModelChoice("model", "model", "stylegan", "stylegan")
SEED = seed_input()
PSI = Number("psi", "truncation ψ (1: none; 0: the mean style w̄; < 0: the opposite side of w̄)", 1.0,
             *style.PSI_RANGE, step=0.05)


class StyleGANService(Service):
    family, tab = "stylegan", "StyleGAN"
    about = r"""**StyleGAN** (Karras et al. 2019; StyleGAN2 networks, Karras et al. 2020): a mapping network turns
$z$ into a style $w$; each convolution of the synthesis network is modulated by an affine map of $w$ and demodulated,
$w''_{ijk} = s_i w_{ijk} / \sqrt{\sum_{i,k} (s_i w_{ijk})^2 + \epsilon}$, and per-pixel noise adds stochastic detail.
Mixing feeds different layers different styles: the early (coarse) layers set shape and class, the late (fine) ones
shading and texture. Truncation: $w' = \bar w + \psi (w - \bar w)$ trades variety for typicality:
$0 < \psi < 1$ pulls each style towards the mean $\bar w$, $\psi = 0$ gives every seed the mean's image, $\psi < 0$
reflects the style through $\bar w$ (the "opposite" garment: the shape and shading that differ from the mean the
other way), and $\psi > 1$ exaggerates it. W is less
entangled than Z, so straight lines in W change the image more evenly."""
    endpoints = (
        Endpoint("stylegan_sample", "sample", (MODEL, count_input(32), SEED, PSI), (Output("samples"),), "Sample"),
        Endpoint("stylegan_mix", "style_mix",
                 (MODEL, seed_input("row_seed", "first row seed", 10), seed_input("column_seed", "first column seed", 20),
                  Number("rows", "coarse (rows) sources", 4, 1, MAX_MIX_SOURCES),
                  Number("columns", "fine (columns) sources", 4, 1, MAX_MIX_SOURCES),
                  Number("crossover", f"crossover: rows give layers below it (of {LAYERS}), columns the rest", 3, 1,
                         LAYERS - 1), PSI),
                 (Output("style mixing: top row and left column are the sources"),), "Mix styles"),
        Endpoint("stylegan_noise", "noise", (MODEL, SEED, PSI),
                 (Output(f"one w, {NOISE_DRAWS} noise draws"),
                  Output("without noise | where the noise acts (per-pixel spread)")), "Resample the noise inputs"),
        Endpoint("stylegan_interpolate", "interpolate",
                 (MODEL, SEED.named("seed_a"), seed_input("seed_b", "seed B", 2), path_input(), PSI),
                 (Output("straight lines in W (top) and in Z (bottom)"),), "Interpolate from seed to seed B"),
    )

    def psi(self, value) -> float:
        return real_number(value, "psi", *style.PSI_RANGE)

    def sample(self, n, seed, psi) -> Image.Image:
        n, seed = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        return grid_image(self.model.sample(n, seed, self.psi(psi)))

    def style_mix(self, row_seed, column_seed, rows, columns, crossover, psi) -> Image.Image:
        """Rows take the coarse styles (layers before `crossover`) of sources A = row_seed, row_seed + 1, ...;
        columns the fine styles of sources B = column_seed, ...; the sources themselves along the top and left."""
        row_seed = whole_number(row_seed, "row_seed", 0, MAX_SEED - MAX_MIX_SOURCES)
        column_seed = whole_number(column_seed, "column_seed", 0, MAX_SEED - MAX_MIX_SOURCES)
        rows, columns = (whole_number(v, name, 1, MAX_MIX_SOURCES) for v, name in ((rows, "rows"), (columns, "columns")))
        crossover = whole_number(crossover, "crossover", 1, self.model.num_ws - 1)
        grid = self.model.style_mix(list(range(row_seed, row_seed + rows)),
                                    list(range(column_seed, column_seed + columns)), crossover, self.psi(psi))
        return grid_image(grid, columns + 1)

    def noise(self, seed, psi) -> tuple[Image.Image, Image.Image]:
        """(NOISE_DRAWS images of one w with different noise, [no noise, per-pixel spread over the draws])."""
        variants, quiet, spread = self.model.noise_variants(whole_number(seed, "seed", 0, MAX_SEED), NOISE_DRAWS,
                                                            self.psi(psi))
        return grid_image(variants, NOISE_DRAWS), grid_image(torch.cat([quiet, spread]), 2)

    def interpolate(self, seed_a, seed_b, steps, psi) -> Image.Image:
        """Two strips: the straight line between the seeds in W (top) and in Z (bottom)."""
        seed_a, seed_b = whole_number(seed_a, "seed_a", 0, MAX_SEED), whole_number(seed_b, "seed_b", 0, MAX_SEED)
        steps, psi = whole_number(steps, "steps", 2, MAX_PATH), self.psi(psi)
        return grid_image(torch.cat([self.model.interpolate(seed_a, seed_b, steps, space, psi)
                                     for space in ("w", "z")]), steps)
