"""core/services/pix2pix.py: drawings and pictures become the edge maps the model was trained on."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import ROOT
from core import requests as R
from core.data import edge_map
from core.models.pix2pix import Pix2Pix, Pix2PixConfig
from core.services.pictures import SCALE, single_image
from core.services.pix2pix import PIX2PIX_OUTPUTS, Pix2PixService, drawn_edges


def test_a_drawing_becomes_a_cropped_edge_map_like_the_training_inputs(tmp_path, monkeypatch):
    """A sketch pad's picture (dark strokes on a transparent canvas) comes out as white lines on black, cut to what
    was drawn; an empty pad is refused; a picture's edges are the training inputs' (core.data.edge_map)."""
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).rectangle((100, 60, 180, 220), outline=(0, 0, 0, 255), width=12)   # a small outline
    edges = drawn_edges(canvas, crop=True)[0] > 0
    assert edges.shape == (28, 28) and set(drawn_edges(canvas, crop=True).unique().tolist()) == {-1.0, 1.0}
    columns = edges.any(0).nonzero().flatten()
    assert edges[0].any() and edges[-1].any()              # cropped: the tall outline spans the frame's height,
    assert 12 <= len(columns) <= 16 and 5 <= columns[0] <= 8   # half as wide, centred
    assert not edges[8:20, 12:16].any()                    # its inside stays black
    with pytest.raises(R.RequestError, match="the drawing is empty"):
        drawn_edges(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), crop=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    canvas.save(cache / "drawing.png")
    service = Pix2PixService(Pix2Pix(Pix2PixConfig(width=4)).eval(), "tiny")
    seen, outputs, note = service.translate({"composite": {"path": str(cache / "drawing.png")}, "layers": []},
                                            None, "drawing", 3)
    assert seen.size == (28 * SCALE,) * 2 and outputs.size == ((PIX2PIX_OUTPUTS * 30 + 2) * SCALE, 32 * SCALE)
    assert "dropout" in note
    for untouched in (None, {"composite": None, "layers": []}):    # a pad never drawn on, cleared or never opened
        with pytest.raises(R.RequestError, match="the drawing is empty: pick the brush") as refused:
            service.translate(untouched, None, "drawing", 0)
        assert refused.value.field == "sketch"
    sneaker = str(ROOT / "apps" / "examples" / "7-sneaker.png")
    seen, _, _ = service.translate(None, sneaker, "picture", 0)
    x, _ = R.to_model_input(Image.open(sneaker))
    expected = single_image(edge_map(x[None])[0])
    assert np.array_equal(np.asarray(seen), np.asarray(expected))
    with pytest.raises(R.RequestError, match="source must be one of drawing, edge map, picture"):
        service.translate(None, sneaker, "photo", 0)
    with pytest.raises(R.RequestError, match="not uploaded to this app"):
        service.translate({"composite": {"path": "/etc/passwd"}}, None, "drawing", 0)
    inpainter = Pix2PixService(Pix2Pix(Pix2PixConfig(width=4, task="inpaint")).eval(), "inpainter")
    with pytest.raises(R.RequestError, match="trained for the 'inpaint' task"):
        inpainter.translate(None, sneaker, "picture", 0)


def test_the_shipped_edge_examples_are_the_examples_edge_maps():
    shipped = sorted((ROOT / "apps" / "examples" / "edges").glob("*.png"))
    assert [p.name for p in shipped] == sorted(p.name for p in (ROOT / "apps" / "examples").glob("*.png"))
    for path in shipped:
        x, _ = R.to_model_input(Image.open(ROOT / "apps" / "examples" / path.name))
        made = ((edge_map(x[None])[0, 0] + 1) * 127.5).round().byte().numpy()
        assert np.array_equal(np.asarray(Image.open(path)), made), path.name
