"""The SimCLR tab: the nearest gallery images to an upload in the learned representation, and where it falls on
the gallery's principal plane (core/models/simclr.py)."""
from __future__ import annotations

from PIL import Image

from core.data import FASHION_CLASSES, to_float
from core.images import scatter_plot
from core.models.simclr import principal_plane
from core.requests import RequestError, read_image, to_model_input
from core.services.base import Endpoint, ModelChoice, Output, Service, Upload
from core.services.pictures import grid_image, single_image

NEIGHBOURS = 8                 # gallery images shown for a query
PLANE_LIMIT = 4.0              # the plot's range, ± this many of the gallery's standard deviations on each axis


class SimCLRService(Service):
    """Similarity search in the model's gallery, and the gallery's 2-D principal plane (both computed at load)."""
    family, tab = "simclr", "SimCLR"
    about = r"""**SimCLR** (Chen et al. 2020) learns a representation $h = f(x)$ without labels: two random
augmentations of each image (crop, flip, contrast, noise, erasing) go through $f$ and a projection head $g$, and the
NT-Xent loss $\ell(i, j) = -\log \frac{\exp(\mathrm{sim}(z_i, z_j)/\tau)}{\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k)/\tau)}$
pulls the two views of an image together and pushes the other $2N - 2$ views of the batch away. Nothing here was
trained with a label: the classes only colour the plot."""
    endpoints = (
        Endpoint("simclr_nearest", "nearest",
                 (ModelChoice("model", "model", "simclr", "simclr"),
                  Upload("image", "image (any size; converted to 28x28 grey)", "2-pullover.png")),
                 (Output("what the model saw", height=130),
                  Output(f"the {NEIGHBOURS} nearest test images in the representation", height=130),
                  Output("the test images' representations on their two principal axes; the query ringed"),
                  Output("", "text")), "Find similar images"),
    )

    def __init__(self, model, name):
        super().__init__(model, name)
        if model.config.gallery == 0:
            raise RequestError(f"{name!r} holds no gallery of images to search")
        self.bank = model.gallery_features()
        self.mean, self.basis = principal_plane(self.bank)
        plane = (self.bank - self.mean) @ self.basis
        self.scale = plane.std(0)
        self.plane = plane / self.scale

    def nearest(self, upload) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        """(what the model saw, its NEIGHBOURS nearest gallery images, the principal plane with the query ringed, a
        note naming the neighbours' classes)."""
        x, inverted = to_model_input(read_image(upload))
        index, similarity = self.model.nearest(x[None], NEIGHBOURS, self.bank)
        index, similarity = index[0], similarity[0]
        gallery = to_float(self.model.gallery_images[index])
        query = ((self.model.representations(x[None]) - self.mean) @ self.basis / self.scale)[0]
        labels = self.model.gallery_labels
        picture = scatter_plot(self.plane, labels, list(FASHION_CLASSES), limit=PLANE_LIMIT,
                               marked=tuple(query.tolist()), axes=("PC1", "PC2"))
        names = [f"{FASHION_CLASSES[int(labels[i])]} ({float(s):.2f})" for i, s in zip(index, similarity)]
        note = ("The upload had a light background and was inverted first. " if inverted else "") + \
            f"Nearest of {len(labels):,} test images (cosine similarity): " + ", ".join(names) + "."
        return single_image(x), grid_image(gallery, NEIGHBOURS), picture, note
