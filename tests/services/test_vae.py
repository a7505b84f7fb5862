"""core/services/vae.py: the latent plane's ring."""
import numpy as np
import torch

from conftest import ROOT
from core.models.vae import PLANE_QUANTILES
from core.services.pictures import SCALE
from core.services.vae import VAEService


def test_latent_plane_rings_the_cell_of_the_encoding():
    """The red ring's centre lies in the grid cell whose quantiles are nearest Φ(μ(x)), for several images."""
    cell, (low, high) = 30 * SCALE, PLANE_QUANTILES
    for path in sorted((ROOT / "apps" / "examples").glob("*.png"))[::3]:
        picture, (z1, z2) = VAEService.load("vae-2d").latent_plane(str(path))
        red = np.argwhere(np.all(np.asarray(picture) == (255, 0, 0), axis=-1))
        y, x = red.mean(0)
        phi = torch.distributions.Normal(0, 1).cdf(torch.tensor([z1, z2])).clamp(low, high)
        column, row = round(float(phi[0] - low) / (high - low) * 14), round(float(high - phi[1]) / (high - low) * 14)
        assert int((x - 2 * SCALE) // cell) == column and int((y - 2 * SCALE) // cell) == row, path.name
    picture, note = VAEService.plane_of(str(ROOT / "apps" / "examples" / "7-sneaker.png"))
    assert note.startswith("μ(x) = (") and picture.size == ((15 * 30 + 2) * SCALE,) * 2
