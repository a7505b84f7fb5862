"""The Pix2Pix tab: a drawing, an edge map or a picture's edges translated to a garment (core/models/pix2pix.py)."""
from __future__ import annotations

import torch
from PIL import Image

from core.data import edge_map, image_to_tensor, to_float, to_uint8
from core.requests import MAX_SEED, RequestError, one_of, read_image, to_model_input, whole_number
from core.services.base import Choice, Endpoint, ModelChoice, Output, Service, Sketch, Upload, seed_input
from core.services.pictures import grid_image, single_image

SOURCES = (("my drawing", "drawing"), ("the upload, as an edge map", "edge map"), ("the upload's edges", "picture"))
EDGE_SOURCES = tuple(value for _, value in SOURCES)   # a sketch pad, an uploaded edge map as is, a picture's edges
PIX2PIX_OUTPUTS = 4            # outputs per request, one per dropout draw (the generator's noise)
INK = 40                       # a drawing's pixels brighter than this (of 255, lines light on dark) are ink
EMPTY_DRAWING = ("the drawing is empty: pick the brush (the pen left of the pad), then draw the outline of a garment "
                 "(dark lines on the white pad)")


def sketch_file(value):
    """The file a sketch pad sends: the flattened `composite` of Gradio's editor value, or a plain upload."""
    return value.get("composite") if isinstance(value, dict) and "composite" in value else value


def drawn_edges(image: Image.Image, crop: bool) -> torch.Tensor:
    """A drawing or an edge map (dark lines on light or light lines on dark) as the edges model reads one: white
    lines on black, 28x28, in {-1, 1}. A transparent background (a sketch pad's) counts as white. `crop`: cut to the
    drawn lines first, so a small drawing fills the frame as a Fashion-MNIST item does."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    x, _ = to_model_input(image)
    if crop:
        grey = Image.fromarray(to_uint8(x)[0].numpy())
        box = grey.point(lambda v: 255 if v > INK else 0).getbbox()
        if box is None:
            raise RequestError(EMPTY_DRAWING, "sketch")
        x = to_float(image_to_tensor(grey.crop(box), 28))
    return torch.where(x > INK / 127.5 - 1, 1.0, -1.0)


ABOUT = r"""**Pix2Pix** (Isola et al. 2017): a U-Net generator $G$ learns to map an input $x$ (here the Sobel edge
map of a garment) to its image $y$, against a PatchGAN discriminator $D$ that judges (input, image) pairs patch by
patch: $\min_G \max_D\ \mathbb E[\log D(x, y)] + \mathbb E[\log(1 - D(x, G(x)))] + \lambda\, \mathbb E\|y - G(x)\|_1$
with $\lambda = 100$. The L1 term alone gives the blurry average of all plausible garments; the adversarial term
makes the output sharp. The generator's only noise is dropout, kept on at sampling, so different seeds differ a
little."""


class Pix2PixService(Service):
    family, tab = "pix2pix", "Pix2Pix"
    about = ABOUT
    endpoints = (
        Endpoint("pix2pix_translate", "translate",
                 (ModelChoice("model", "model", "pix2pix-edges", "pix2pix"),
                  Sketch("sketch", "draw an outline (pick the brush)", selects=("source", "drawing")),
                  Upload("image", "or upload a picture (its edges are computed) or an edge map", "7-sneaker.png",
                         examples="edges", gallery="edge maps of Fashion-MNIST test images",
                         selects=("source", "edge map"), upload_selects="picture"),
                  Choice("source", "translate", "edge map", SOURCES, radio=True), seed_input()),
                 (Output("the edge map the model saw", height=130),
                  Output("outputs (one per dropout draw)", height=130), Output("", "text")), "Translate"),
    )

    def translate(self, sketch, upload, source, seed) -> tuple[Image.Image, Image.Image, str]:
        """(the edge map the model saw, PIX2PIX_OUTPUTS outputs, a note). `source`: "drawing" reads the sketch pad,
        "edge map" takes the upload as an edge map, "picture" computes the upload's edges (core.data.edge_map)."""
        source = one_of(source, "source", EDGE_SOURCES)
        seed = whole_number(seed, "seed", 0, MAX_SEED)
        if self.model.config.task != "edges":
            raise RequestError(f"this tab draws edge maps, but {self.name} was trained for the "
                               f"{self.model.config.task!r} task")
        note = ""
        if source == "picture":
            x, inverted = to_model_input(read_image(upload))
            edges = edge_map(x[None])[0]
            note = "The picture had a light background and was inverted first. " if inverted else ""
        elif source == "drawing":
            if sketch_file(sketch) is None:             # a pad never drawn on (or cleared) sends no picture
                raise RequestError(EMPTY_DRAWING, "sketch")
            edges = drawn_edges(read_image(sketch_file(sketch)), crop=True)
        else:
            edges = drawn_edges(read_image(upload), crop=False)
        outputs = self.model.translate(edges[None].expand(PIX2PIX_OUTPUTS, -1, -1, -1), seed=seed)
        note += (f"{PIX2PIX_OUTPUTS} outputs from seed {seed}: they differ only by the generator's dropout noise, "
                 "which Pix2Pix keeps on at sampling.")
        return single_image(edges), grid_image(outputs, nrow=PIX2PIX_OUTPUTS), note


