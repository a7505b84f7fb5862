"""core/services/vae.py: the latent plane's ring."""
import numpy as np
import torch

from conftest import ROOT
from core.models.vae import PLANE_QUANTILES
from core.services.pictures import SCALE
from core.services.vae import PLANE_MARGIN, VAEService


def test_latent_plane_rings_the_cell_of_the_encoding():
    """The red ring's centre lies in the grid cell whose quantiles are nearest Φ(μ(x)), for several images."""
    cell, (low, high) = 30 * SCALE, PLANE_QUANTILES
    for path in sorted((ROOT / "apps" / "examples").glob("*.png"))[::3]:
        picture, (z1, z2) = VAEService.load("vae-2d").latent_plane(str(path))
        red = np.argwhere(np.all(np.asarray(picture) == (255, 0, 0), axis=-1))
        y, x = red.mean(0)
        phi = torch.distributions.Normal(0, 1).cdf(torch.tensor([z1, z2])).clamp(low, high)
        column, row = round(float(phi[0] - low) / (high - low) * 14), round(float(high - phi[1]) / (high - low) * 14)
        x, y = x - PLANE_MARGIN - 2 * SCALE, y - PLANE_MARGIN - 2 * SCALE
        assert int(x // cell) == column and int(y // cell) == row, path.name
    picture, note = VAEService.plane_of(str(ROOT / "apps" / "examples" / "7-sneaker.png"))
    assert note.startswith("μ(x) = (") and picture.size == ((15 * 30 + 2) * SCALE + 2 * PLANE_MARGIN,) * 2


def test_a_ring_at_the_planes_corner_is_drawn_whole_and_the_axes_are_labelled(monkeypatch):
    """An encoding far out in a corner is rung in the corner cell, and the whole ring fits in the picture (it was
    once cut in half by the picture's edge); the margins carry the axes' ticks (dark text on white)."""
    service = VAEService.load("vae-2d")
    for corner in ((-9.0, -9.0), (9.0, 9.0), (-9.0, 9.0)):
        monkeypatch.setattr(service.model, "encode", lambda x, z=corner: (torch.tensor([z]), None))
        picture = np.asarray(service.latent_plane(str(ROOT / "apps" / "examples" / "7-sneaker.png"))[0])
        red = np.argwhere(np.all(picture == (255, 0, 0), axis=-1))
        radius = 30 * SCALE * 0.6
        assert red.min(0).min() > 0 and red.max(0).max() < picture.shape[0] - 1
        assert np.ptp(red[:, 0]) >= 2 * radius - 4 and np.ptp(red[:, 1]) >= 2 * radius - 4     # a whole circle
    bottom, left = picture[-PLANE_MARGIN + 4:], picture[:, :PLANE_MARGIN - 4]
    assert (bottom < 100).any() and (left < 100).any()           # tick labels in the margins
