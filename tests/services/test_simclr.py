"""core/services/simclr.py: similarity search in the gallery, with the query on the principal plane."""
import pytest
import torch

from conftest import ROOT
from core import requests as R
from core.data import ImageData
from core.models.simclr import SimCLR, SimCLRConfig
from core.services.pictures import SCALE
from core.services.simclr import NEIGHBOURS, SimCLRService


def test_similar_images_come_from_the_gallery_with_the_query_on_the_plane():
    torch.manual_seed(0)
    gallery = ImageData(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), torch.arange(40) % 10,
                        tuple(str(k) for k in range(10)))
    model = SimCLR(SimCLRConfig(width=4, projection_dim=8)).eval()
    service = SimCLRService(model.with_gallery(gallery, per_class=3).eval(), "tiny")
    seen, neighbours, plane, note = service.nearest(str(ROOT / "apps" / "examples" / "7-sneaker.png"))
    assert seen.size == (28 * SCALE,) * 2 and neighbours.size == ((NEIGHBOURS * 30 + 2) * SCALE, 32 * SCALE)
    assert plane.size[0] > 500 and note.count(")") == NEIGHBOURS + 1 and note.startswith("Nearest of 30 ")
    assert service.plane.std(0).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(R.RequestError, match="holds no gallery"):
        SimCLRService(model, "bare")
