"""core/services/gan.py and stylegan.py: what the GAN tabs answer in-process."""
import pytest

from core import requests as R
from core.services.gan import GANService
from core.services.pictures import SCALE
from core.services.stylegan import StyleGANService


def test_an_interpolation_is_a_strip_and_its_frames():
    strip, frames = GANService.load("dcgan").interpolate(1, 2, 5, True, -1)
    assert len(frames) == 5 and strip.size == (5 * 28 * SCALE, 28 * SCALE)
    assert all(frame.size == (28 * SCALE, 28 * SCALE) for frame in frames)
    with pytest.raises(R.RequestError, match="the class grid needs a conditional GAN"):
        GANService.load("dcgan").class_grid(2, 0)
    with pytest.raises(R.RequestError, match="this model is unconditional: label must be -1"):
        GANService.load("dcgan").sample(2, 0, 3)


def test_the_crossover_is_bounded_by_the_models_layers():
    stylegan = StyleGANService.load("stylegan")
    with pytest.raises(R.RequestError, match=f"crossover must be a whole number from 1 to {stylegan.model.num_ws - 1}"):
        stylegan.style_mix(0, 0, 1, 1, stylegan.model.num_ws, 1.0)
