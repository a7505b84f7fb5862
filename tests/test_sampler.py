"""apps/sampler.py through its API: gradio_client as a user scripts it, raw HTTP for what gradio_client cannot send
(NaN), and 16 concurrent clients. The server is the session fixture `sampler_url` (conftest.py)."""
import json
import math
import signal
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image

from conftest import ROOT
from core.services.diffusion import STREAM_FRAMES
from core.services.pictures import SCALE
from core.services.pix2pix import PIX2PIX_OUTPUTS
from core.services.simclr import NEIGHBOURS
from core.services.stylegan import NOISE_DRAWS
from core import requests as R

SNEAKER = str(ROOT / "apps" / "examples" / "7-sneaker.png")
SNEAKER_EDGES = str(ROOT / "apps" / "examples" / "edges" / "7-sneaker.png")
BOOT = str(ROOT / "apps" / "examples" / "9-ankle-boot.png")
SIDE = lambda cells: (cells * 30 + 2) * SCALE          # a grid of `cells` 28-pixel images with 2-pixel gaps


@pytest.fixture(scope="module")
def client(sampler_url):
    return Client(sampler_url, verbose=False)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.width > 0 and image.height > 0
        return np.asarray(image.convert("L"))


def size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()                                   # a complete, valid file
        return image.size


def test_every_endpoint_returns_images_of_the_right_size(client):
    assert size(client.predict("dcgan", 64, 0, -1, api_name="/gan_sample")) == (SIDE(8), SIDE(8))
    strip, animation = client.predict("cgan", 1, 2, 10, True, 3, api_name="/gan_interpolate")
    assert size(strip) == (10 * 28 * SCALE, 28 * SCALE)
    with Image.open(animation) as gif:
        assert gif.format == "GIF" and gif.n_frames == 18           # 10 there, 8 back
    assert size(client.predict("cgan", 10, 0, api_name="/gan_class_grid")) == (SIDE(10), SIDE(10))
    assert size(client.predict("vae", 64, 0, api_name="/vae_sample")) == (SIDE(8), SIDE(8))
    seen, reconstruction = client.predict("vae", handle_file(SNEAKER), api_name="/vae_reconstruct")
    assert size(seen) == size(reconstruction) == (28 * SCALE, 28 * SCALE)
    path = client.predict("vae", handle_file(SNEAKER), handle_file(BOOT), 10, api_name="/vae_interpolate")
    assert size(path) == (SIDE(10), SIDE(1))
    plane, note = client.predict(handle_file(SNEAKER), api_name="/vae_latent_plane")
    assert size(plane) == (SIDE(15) + 80, SIDE(15) + 80) and note.startswith("μ(x) = (")   # 40 px margins
    sweep = client.predict("vae", handle_file(SNEAKER), 5, 3.0, 9, api_name="/vae_traverse")
    assert size(sweep) == (SIDE(9), SIDE(1))
    both, samples = client.predict(handle_file(SNEAKER), 0, api_name="/vae_compare")
    assert size(both) == (SIDE(3), SIDE(1)) and size(samples) == (SIDE(8), SIDE(2))
    assert size(client.predict("glow", 16, 0, 0.7, -1, api_name="/flow_sample")) == (SIDE(4), SIDE(4))
    path, note = client.predict("glow", handle_file(SNEAKER), handle_file(BOOT), 8, -1, api_name="/flow_interpolate")
    assert size(path) == (SIDE(8), SIDE(1)) and note.startswith("bits/dim: A ")
    latents, note = client.predict("glow", handle_file(SNEAKER), -1, api_name="/flow_latents")
    assert size(latents)[1] == 2 * SIDE(1) and note.startswith("bits/dim ")
    frame, guess, strip, status = client.predict("ddpm", 16, 20, "dpm_solver", 0, 0, -1, 1.25,
                                                 api_name="/ddpm_sample")
    assert size(frame) == size(guess) == (SIDE(4), SIDE(4)) and size(strip) == (SIDE(10), SIDE(8))
    assert status.startswith("step 20/20 · ") and status.endswith(" s")
    status, grid = client.predict("pixelcnn", 4, 0, 1.0, -1, api_name="/pixelcnn_sample")
    assert size(grid) == (SIDE(2), SIDE(2)) and status.startswith("4 images, 3,136 pixels drawn one at a time in ")
    note, grid = client.predict("pixelcnn", handle_file(SNEAKER), 20, 2, 0, 1.0, -1, api_name="/pixelcnn_complete")
    assert size(grid) == (SIDE(3), SIDE(1)) and note.startswith("p(y | top 20 rows): ")
    table, seen = client.predict("pixelcnn", handle_file(SNEAKER), api_name="/pixelcnn_compress")
    assert size(seen) == (28 * SCALE, 28 * SCALE) and "decoded back bit for bit" in table
    status, grid = client.predict("vqvae", 4, 0, 1.0, -1, api_name="/vqvae_sample")
    assert size(grid) == (SIDE(2), SIDE(2)) and status == "4 images: 196 codes drawn one at a time, decoded"
    note, both, codes = client.predict("vqvae", handle_file(SNEAKER), -1, api_name="/vqvae_reconstruct")
    assert size(both) == (SIDE(2), SIDE(1)) and size(codes) == (7 * 28, 7 * 28)
    assert note.startswith("Reconstruction MSE **") and "bits per code" in note
    status, grid = client.predict("jem", 4, 10, 0, 9, api_name="/jem_sgld")
    assert size(grid) == (SIDE(2), SIDE(2)) and status.startswith("4 chains on E(x, ankle boot), 10 steps in ")
    verdict, scores, picture = client.predict("jem", handle_file(SNEAKER), api_name="/jem_judge")
    assert verdict.startswith("**E(x) = ") and scores["label"] == "sneaker" and size(picture) == (820, 260)
    outputs = client.predict("cyclegan", handle_file(SNEAKER), "a2b", api_name="/cyclegan_translate")
    assert [size(p) for p in outputs[:3]] == [(28 * SCALE, 28 * SCALE)] * 3
    assert outputs[3].startswith("The classifier sees: sneaker")
    seen, outputs, note = client.predict("pix2pix-edges", None, handle_file(SNEAKER_EDGES), "edge map", 0,
                                         api_name="/pix2pix_translate")
    assert size(seen) == (28 * SCALE, 28 * SCALE) and size(outputs) == (SIDE(PIX2PIX_OUTPUTS), SIDE(1))
    assert "dropout" in note
    assert size(client.predict("stylegan", 16, 0, 0.7, api_name="/stylegan_sample")) == (SIDE(4), SIDE(4))
    assert size(client.predict("stylegan", 10, 20, 3, 5, 3, 1.0, api_name="/stylegan_mix")) == (SIDE(6), SIDE(4))
    variants, spread = client.predict("stylegan", 0, 1.0, api_name="/stylegan_noise")
    assert size(variants) == (SIDE(NOISE_DRAWS), SIDE(1)) and size(spread) == (SIDE(2), SIDE(1))
    assert size(client.predict("stylegan", 1, 2, 7, 1.0, api_name="/stylegan_interpolate")) == (SIDE(7), SIDE(2))
    seen, neighbours, plane, note = client.predict("simclr", handle_file(SNEAKER), api_name="/simclr_nearest")
    assert size(seen) == (28 * SCALE, 28 * SCALE) and size(neighbours) == (SIDE(NEIGHBOURS), SIDE(1))
    assert size(plane)[0] > 500 and note.startswith("Nearest of ")
    *images, before, after = client.predict("classifier", handle_file(SNEAKER), "fgsm", 0.05, 0,
                                            api_name="/fgsm_attack")
    assert [size(p) for p in images] == [(28 * SCALE, 28 * SCALE)] * 3
    assert len(before["confidences"]) == len(after["confidences"]) == 3
    boundary, animation, note = client.predict("XOR", "two-layer MLP", "tanh", 0, 300, api_name="/foundations_train")
    assert size(boundary) == size(animation) == (360, 360) and note == "All four points right from epoch 37."
    curve, formula = client.predict("relu", api_name="/foundations_activation")
    assert size(curve) == (360, 360) and "ReLU'(a)" in formula
    fit, error = client.predict("sin", 8, "tanh", api_name="/foundations_approximate")
    assert size(fit) == (360, 360) and error.startswith("mean squared error ")


def test_same_seed_same_images_and_another_seed_others(client):
    grid = lambda seed: pixels(client.predict("dcgan", 16, seed, -1, api_name="/gan_sample"))
    assert np.array_equal(grid(3), grid(3)) and not np.array_equal(grid(3), grid(4))
    ddpm = lambda seed: pixels(client.predict("ddpm-cond", 4, 10, "ddim", 0.0, seed, 5, 2.0,
                                              api_name="/ddpm_sample")[0])
    assert np.array_equal(ddpm(1), ddpm(1)) and not np.array_equal(ddpm(1), ddpm(2))


def test_denoising_streams_frames_before_the_result(client):
    job = client.submit("ddpm", 4, 40, "ddim", 0.0, 0, -1, 1, api_name="/ddpm_sample")
    job.result()
    statuses = [output[3] for output in job.outputs()]
    assert len(statuses) == STREAM_FRAMES and statuses[0].startswith("step 2/40") and statuses[-1].startswith("step 40/40")
    first, last = pixels(job.outputs()[0][0]), pixels(job.outputs()[-1][0])
    assert first.std() > last.std() * 0.5 and not np.array_equal(first, last)     # noise first, garments last
    distance = lambda a, b: np.abs(a.astype(int) - b.astype(int)).mean()
    middle = len(job.outputs()) // 2
    x_t, guess = pixels(job.outputs()[middle][0]), pixels(job.outputs()[middle][1])
    assert distance(guess, last) < distance(x_t, last)       # halfway, x̂_0 is nearer the final images than x_t


def test_pixelcnn_samples_stream_row_by_row(client):
    """A frame per row drawn (the rows below still grey), then the samples."""
    job = client.submit("pixelcnn", 1, 0, 1.0, 7, api_name="/pixelcnn_sample")
    job.result()
    statuses = [output[0] for output in job.outputs()]
    assert len(statuses) == 28 and statuses[0].startswith("row 1/28 · ") and statuses[-2].startswith("row 27/28 · ")
    assert statuses[-1].startswith("1 image, 784 pixels drawn one at a time in ")
    first, last = pixels(job.outputs()[0][1]), pixels(job.outputs()[-1][1])
    assert (first[(2 + 2) * SCALE:(2 + 28) * SCALE, 2 * SCALE:30 * SCALE] == 128).all()     # rows 2-27 of the cell
    assert not (last[(2 + 2) * SCALE:(2 + 28) * SCALE, 2 * SCALE:30 * SCALE] == 128).all()


def test_attacks_change_the_standard_classifier_and_respect_epsilon(client):
    eps = 0.1
    original, _, adversarial, before, after = client.predict("classifier", handle_file(SNEAKER), "fgsm", eps, 0,
                                                             api_name="/fgsm_attack")
    assert before["label"] == "sneaker" and after["label"] != "sneaker"
    change = np.abs(pixels(adversarial).astype(int) - pixels(original).astype(int)).max()
    assert change <= math.ceil(eps * 255) + 1                            # L∞ ≤ ε of the pixel range
    *_, start, towards = client.predict("classifier", handle_file(SNEAKER), "fgsm_targeted", 0.02, 9,
                                        api_name="/fgsm_attack")                # toward "ankle boot"
    boot = lambda top: {c["label"]: c["confidence"] for c in top["confidences"]}.get("ankle boot", 0.0)
    assert boot(towards) > 100 * boot(start)                     # measured here: 5.5e-5 -> 0.10
    *_, robust = client.predict("classifier-adv", handle_file(SNEAKER), "pgd", 0.02, 0, api_name="/fgsm_attack")
    assert robust["label"] == "sneaker"                    # the adversarially trained model holds at small ε


def test_a_light_background_photo_is_inverted_before_translation(client, tmp_path):
    photo = Image.open(SNEAKER).convert("L").point(lambda v: 255 - v).resize((300, 200))   # dark shoe on white
    photo.save(tmp_path / "photo.jpg")
    seen, _, _, note = client.predict("cyclegan", handle_file(str(tmp_path / "photo.jpg")), "a2b",
                                      api_name="/cyclegan_translate")
    assert "inverted" in note and pixels(seen)[0].mean() < 30         # what the model saw: black border


# --------------------------------------------------------------------------------------------- bad input
def bad_files(folder):
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image at all")
    data = (ROOT / "apps" / "examples" / "7-sneaker.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("L", (10_000, 10_000)).save(folder / "huge.png")            # 100 M pixels, ~100 kB on disk
    return {name: handle_file(str(folder / f"{name}.png")) for name in ("empty", "text", "truncated", "huge")}


BAD = [   # (api_name, arguments, a part of the message); files are filled in by the test
    ("/gan_sample", ("dcgan", 65, 0, -1), "n must be a whole number from 1 to 64"),
    ("/gan_sample", ("dcgan", 0, 0, -1), "n must be a whole number from 1 to 64"),
    ("/gan_sample", ("dcgan", 2.5, 0, -1), "n must be a whole number"),
    ("/gan_sample", ("dcgan", "many", 0, -1), "n must be a whole number"),
    ("/gan_sample", ("dcgan", None, 0, -1), "n must be a whole number"),
    ("/gan_sample", ("dcgan", 8, -1, -1), "seed must be a whole number from 0"),
    ("/gan_sample", ("dcgan", 8, 2**40, -1), "seed must be a whole number from 0"),
    ("/gan_sample", ("no-such-model", 8, 0, -1), "model must be one of mlp-gan, dcgan, cgan or a Hub repo id"),
    ("/gan_sample", ("/etc", 8, 0, -1), "model must be one of mlp-gan, dcgan, cgan or a Hub repo id"),
    ("/gan_sample", ("../checkpoints/dcgan", 8, 0, -1), "model must be one of"),
    ("/gan_sample", ("someone/gan@main", 8, 0, -1), "cannot load model 'someone/gan@main'"),   # Hub unreachable
    ("/gan_sample", ("ddpm", 8, 0, -1), "is a DDPM; this needs a GAN"),
    ("/gan_sample", ("dcgan", 8, 0, 3), "this model is unconditional"),
    ("/gan_sample", ("cgan", 8, 0, 10), "label must be a whole number from -1 to 9"),
    ("/gan_interpolate", ("dcgan", 1, 2, 1, True, -1), "steps must be a whole number from 2 to 32"),
    ("/gan_interpolate", ("dcgan", 1, 2, 8, "yes", -1), "spherical must be true or false"),
    ("/gan_class_grid", ("dcgan", 10, 0), "the class grid needs a conditional GAN"),
    ("/gan_sample", ("checkpoints/dcgan", 8, 0, -1), "cannot load model 'checkpoints/dcgan'"),   # no local folders
    ("/gan_class_grid", ("cgan", 11, 0), "per_class must be a whole number from 1 to 10"),
    ("/vae_sample", ("vae", 1e9, 0), "n must be a whole number from 1 to 64"),
    ("/vae_reconstruct", ("vae", None), "no image"),
    ("/vae_reconstruct", ("vae", "empty"), "the file is empty or larger than 10 MB"),
    ("/vae_reconstruct", ("vae", "text"), "the file is not a readable image"),
    ("/vae_reconstruct", ("vae", "truncated"), "the file is not a readable image"),
    ("/vae_latent_plane", ("huge",), "the image is 10000x10000 pixels"),
    ("/vae_interpolate", ("vae", SNEAKER, BOOT, 100), "steps must be a whole number from 2 to 32"),
    ("/vae_compare", ("text", 0), "the file is not a readable image"),
    ("/ddpm_sample", ("ddpm", 1, 1000, "dpm_solver", 0, 0, -1, 1), "repeats timesteps"),
    ("/vae_traverse", ("vae", SNEAKER, 32, 3.0, 9), "dim must be a whole number from 0 to 31"),
    ("/flow_sample", ("glow", 8, 0, 1.5, -1), "temperature must be a number from 0 to 1.2"),
    ("/flow_sample", ("glow", 8, 0, -0.5, -1), "temperature must be a number from 0 to 1.2"),
    ("/flow_sample", ("glow", 65, 0, 0.7, -1), "n must be a whole number from 1 to 64"),
    ("/flow_sample", ("glow", 8, 0, 0.7, 4), "this model is unconditional"),
    ("/flow_sample", ("vae", 8, 0, 0.7, -1), "is a VAE; this needs a Flow"),
    ("/flow_interpolate", ("glow", SNEAKER, BOOT, 40, -1), "steps must be a whole number from 2 to 32"),
    ("/flow_interpolate", ("glow", SNEAKER, "truncated", 8, -1), "the file is not a readable image"),
    ("/flow_latents", ("glow", "huge", -1), "the image is 10000x10000 pixels"),
    ("/flow_latents", ("glow", None, -1), "no image"),
    ("/vae_traverse", ("vae-2d", SNEAKER, 2, 3.0, 9), "dim must be a whole number from 0 to 1"),
    ("/vae_traverse", ("vae", SNEAKER, 0, -1.0, 9), "span must be a number from 0 to 10"),
    ("/ddpm_sample", ("ddpm", 4, 1001, "ddim", 0, 0, -1, 1), "steps must be a whole number from 1 to 1000"),
    ("/ddpm_sample", ("ddpm", 4, 0, "ddim", 0, 0, -1, 1), "steps must be a whole number from 1 to 1000"),
    ("/ddpm_sample", ("ddpm", 64, 1000, "ddim", 0, 0, -1, 1), "n x steps x passes must be at most 16,000"),
    ("/ddpm_sample", ("ddpm", 4, 20, "lms", 0, 0, -1, 1), "scheduler must be one of ddpm, ddim, dpm_solver, dpm_solver_sde, unipc, lcm, euler"),
    ("/ddpm_sample", ("ddpm", 4, 20, "heun", 0, 0, -1, 1), "a diffusion model samples with a scheduler of"),
    ("/ddpm_sample", ("ddpm", 4, 20, "lcm", 0, 0, -1, 1), "a diffusion model samples with a scheduler of"),
    ("/ddpm_sample", ("ddpm-fast", 4, 4, "ddim", 0, 0, -1, 1), "a consistency model samples with a scheduler of"),
    ("/ddpm_sample", ("ddpm-fast", 4, 51, "lcm", 0, 0, -1, 1), "num_inference_steps must be an integer from 1 to 50"),
    ("/ddpm_sample", ("ddpm", 4, 20, "edm_heun", 0, 0, -1, 1), "a diffusion model samples with a scheduler of"),
    ("/ddpm_sample", ("ddpm", 4, 20, "ddim", 1.5, 0, -1, 1), "eta must be a number from 0 to 1"),
    ("/ddpm_sample", ("ddpm-cond", 4, 20, "ddim", 0, 0, 3, 21), "guidance_scale must be a number from 0 to 20"),
    ("/pixelcnn_sample", ("pixelcnn", 65, 0, 1.0, -1), "n must be a whole number from 1 to 64"),
    ("/pixelcnn_sample", ("pixelcnn", 4, 0, 1.5, -1), "temperature must be a number from 0.5 to 1.2"),
    ("/pixelcnn_sample", ("pixelcnn", 4, 0, 1.0, 10), "label must be a whole number from -1 to 9"),
    ("/pixelcnn_sample", ("glow", 4, 0, 1.0, -1), "is a Flow; this needs a PixelCNN"),
    ("/pixelcnn_complete", ("pixelcnn", SNEAKER, 29, 4, 0, 1.0, -1), "known_rows must be a whole number from 0 to 28"),
    ("/pixelcnn_complete", ("pixelcnn", SNEAKER, 14, 9, 0, 1.0, -1), "per_image must be a whole number from 1 to 8"),
    ("/pixelcnn_complete", ("pixelcnn", "truncated", 14, 2, 0, 1.0, -1), "the file is not a readable image"),
    ("/pixelcnn_compress", ("pixelcnn", "huge"), "the image is 10000x10000 pixels"),
    ("/pixelcnn_compress", ("pixelcnn", None), "no image"),
    ("/vqvae_sample", ("vqvae", 65, 0, 1.0, -1), "n must be a whole number from 1 to 64"),
    ("/vqvae_sample", ("vqvae", 4, 0, 0.4, -1), "temperature must be a number from 0.5 to 1.5"),
    ("/vqvae_sample", ("vqvae", 4, -1, 1.0, -1), "seed must be a whole number from 0"),
    ("/vqvae_sample", ("vqvae", 4, 0, 1.0, 10), "label must be a whole number from -1 to 9"),
    ("/vqvae_sample", ("pixelcnn", 4, 0, 1.0, -1), "is a PixelCNN; this needs a VQVAE"),
    ("/vqvae_reconstruct", ("vqvae", None, -1), "no image"),
    ("/vqvae_reconstruct", ("vqvae", "truncated", -1), "the file is not a readable image"),
    ("/vqvae_reconstruct", ("vqvae", "huge", -1), "the image is 10000x10000 pixels"),
    ("/vqvae_reconstruct", ("vqvae", SNEAKER, 10), "label must be a whole number from -1 to 9"),
    ("/jem_sgld", ("jem", 65, 10, 0, 0), "n must be a whole number from 1 to 64"),
    ("/jem_sgld", ("jem", 16, 300, 0, 0), "images x steps must be at most 3,200"),
    ("/jem_sgld", ("jem", 4, 10, 0, 10), "label must be a whole number from -1 to 9"),
    ("/jem_sgld", ("glow", 4, 10, 0, 0), "is a Flow; this needs a JEM"),
    ("/jem_judge", ("jem", None), "no image"),
    ("/jem_judge", ("jem", "truncated"), "the file is not a readable image"),
    ("/likelihood_judge", (None,), "no image"),
    ("/likelihood_judge", ("truncated",), "the file is not a readable image"),
    ("/cyclegan_translate", ("cyclegan", SNEAKER, "sideways"), "direction must be one of a2b, b2a"),
    ("/cyclegan_translate", ("cyclegan", "huge", "a2b"), "the image is 10000x10000 pixels"),
    ("/pix2pix_translate", ("pix2pix-edges", None, SNEAKER, "photo", 0), "source must be one of drawing, edge map"),
    ("/pix2pix_translate", ("pix2pix-edges", None, SNEAKER, "picture", -1), "seed must be a whole number from 0"),
    ("/pix2pix_translate", ("pix2pix-edges", None, None, "drawing", 0), "the drawing is empty: pick the brush"),
    ("/pix2pix_translate", ("pix2pix-edges", None, "huge", "picture", 0), "the image is 10000x10000 pixels"),
    ("/pix2pix_translate", ("pix2pix-edges", None, "text", "edge map", 0), "the file is not a readable image"),
    ("/pix2pix_translate", ("cyclegan", None, SNEAKER, "picture", 0), "is a CycleGAN; this needs a Pix2Pix"),
    ("/stylegan_sample", ("stylegan", 8, 0, 2.0), "psi must be a number from -1 to 1.5"),
    ("/stylegan_sample", ("dcgan", 8, 0, 1.0), "is a GAN; this needs a StyleGAN"),
    ("/stylegan_mix", ("stylegan", 0, 0, 7, 2, 3, 1.0), "rows must be a whole number from 1 to 6"),
    ("/stylegan_mix", ("stylegan", 0, 0, 2, 2, 7, 1.0), "crossover must be a whole number from 1 to 6"),
    ("/stylegan_mix", ("stylegan", 2**31 - 2, 0, 2, 2, 3, 1.0), "row_seed must be a whole number from 0"),
    ("/stylegan_noise", ("stylegan", 0, "high"), "psi must be a number"),
    ("/stylegan_interpolate", ("stylegan", 1, 2, 33, 1.0), "steps must be a whole number from 2 to 32"),
    ("/simclr_nearest", ("simclr", "truncated"), "the file is not a readable image"),
    ("/simclr_nearest", ("simclr", None), "no image"),
    ("/simclr_nearest", ("ddpm", SNEAKER), "is a DDPM; this needs a SimCLR"),
    ("/fgsm_attack", ("classifier", SNEAKER, "fgsm", 0.9, 0), "eps must be a number from 0 to 0.5"),
    ("/fgsm_attack", ("classifier", SNEAKER, "cw", 0.1, 0), "attack must be one of fgsm, fgsm_targeted, pgd"),
    ("/fgsm_attack", ("classifier", SNEAKER, "fgsm_targeted", 0.1, 12), "target must be a whole number from 0 to 9"),
    ("/fgsm_attack", ("dcgan", SNEAKER, "fgsm", 0.1, 0), "is a GAN; this needs a Classifier"),
    ("/foundations_train", ("NAND", "perceptron rule", "tanh", 0, 10), "gate must be one of AND, OR, XOR"),
    ("/foundations_train", ("XOR", "svm", "tanh", 0, 10), "learner must be one of perceptron rule"),
    ("/foundations_train", ("XOR", "two-layer MLP", "gelu", 0, 10), "activation must be one of sigmoid, tanh"),
    ("/foundations_train", ("XOR", "two-layer MLP", "tanh", 0, 301), "epoch must be a whole number from 0 to 300"),
    ("/foundations_train", ("XOR", "two-layer MLP", "tanh", -3, 1), "seed must be a whole number from 0"),
    ("/foundations_activation", ("/etc/passwd",), "activation must be one of sigmoid"),
    ("/foundations_approximate", ("sin", 65, "tanh"), "hidden units must be a whole number from 1 to 64"),
    ("/foundations_approximate", ("cos", 4, "tanh"), "target must be one of sin, step"),
]


def test_diffusion_refusal_is_shown_on_the_input_at_fault(client):
    """Admission refuses before queueing; its message goes to the offending input, a cost over the cap to steps."""
    good = dict(model="ddpm", n=4, steps=20, scheduler="ddim", eta=0.0, seed=0, label=-1, guidance_scale=1.0)
    for name, value, message in [("n", 10 ** 9, "n must be"), ("scheduler", {"path": "/etc/passwd"}, "scheduler must"),
                                 ("model", "/etc/passwd", "model must be"), ("eta", 7.0, "eta must be"),
                                 ("guidance_scale", 1e308, "guidance_scale must be"),
                                 ("steps", 1000, "n x steps x passes")]:
        arguments = {**good, name: value, **({"n": 64} if name == "steps" else {})}
        with pytest.raises(ValidationError) as caught:
            client.predict(*arguments.values(), api_name="/ddpm_sample")
        assert f"- {name}: {message}" in str(caught.value), str(caught.value)


def test_bad_input_answers_with_what_is_allowed(client, sampler_url, tmp_path):
    files = bad_files(tmp_path)
    image = lambda a: files[a] if a in files else handle_file(a) if isinstance(a, str) and a.endswith(".png") else a
    for api_name, arguments, message in BAD:     # diffusion's cost is refused at admission, before queueing
        costed = api_name in ("/ddpm_sample", "/pixelcnn_sample", "/vqvae_sample", "/jem_sgld")
        with pytest.raises((AppError, ValidationError) if costed else AppError) as caught:
            client.predict(*map(image, arguments), api_name=api_name)
        assert message in str(caught.value), (api_name, arguments, str(caught.value))
    assert len(BAD) >= 20
    big = tmp_path / "big.png"                                   # over launch(max_file_size="10mb"): refused on upload
    big.write_bytes(b"\x89PNG" + bytes(R.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict("vae", handle_file(str(big)), api_name="/vae_reconstruct")
    # the server survived all of it
    assert size(client.predict("mlp-gan", 4, 0, -1, api_name="/gan_sample")) == (SIDE(2), SIDE(2))


def raw_call(url: str, api_name: str, body: str) -> str:
    """POST the JSON text as written (NaN included, which gradio_client refuses to send), return the stream (or
    "event: error" and the body of a refusal before queueing)."""
    request = urllib.request.Request(f"{url}/gradio_api/call/{api_name}", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
    except urllib.error.HTTPError as exc:
        return f"event: error\ndata: {exc.read().decode()}"
    return urllib.request.urlopen(f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=60).read().decode()


@pytest.mark.parametrize("api_name, data, message", [
    ("gan_sample", '["dcgan", NaN, 0, -1]', "n must be a whole number"),
    ("ddpm_sample", '["ddpm", 4, 10, "ddim", NaN, 0, -1, 1]', "eta must be a number from 0 to 1"),
    ("fgsm_attack", '["classifier", null, "fgsm", Infinity, 0]', "eps must be a number from 0 to 0.5"),
    ("foundations_train", '["XOR", "two-layer MLP", "tanh", 0, NaN]', "epoch must be a whole number"),
    ("ddpm_sample", '["ddpm-cond", 4, 10, "ddim", 0, 0, 3, NaN]', "guidance_scale must be a number from 0 to 20"),
    ("stylegan_sample", '["stylegan", 4, 0, NaN]', "psi must be a number from -1 to 1.5"),
    ("flow_sample", '["glow", 4, 0, NaN, -1]', "temperature must be a number from 0 to 1.2"),
    ("pixelcnn_sample", '["pixelcnn", 4, 0, NaN, -1]', "temperature must be a number from 0.5 to 1.2"),
    ("vqvae_sample", '["vqvae", 4, 0, NaN, -1]', "temperature must be a number from 0.5 to 1.5"),
])
def test_nan_and_infinity_over_raw_http(sampler_url, api_name, data, message):
    stream = raw_call(sampler_url, api_name, '{"data": %s}' % data)
    assert "event: error" in stream and message in stream, stream


@pytest.mark.parametrize("api_name, before, after", [
    ("vae_reconstruct", '"vae", ', ""), ("vae_latent_plane", "", ""), ("vae_compare", "", ", 0"),
    ("vae_traverse", '"vae", ', ", 0, 3, 9"), ("vae_interpolate", '"vae", ', ', {"path": "%s"}, 8'),
    ("cyclegan_translate", '"cyclegan", ', ', "a2b"'), ("fgsm_attack", '"classifier", ', ', "fgsm", 0.1, 0'),
    ("pix2pix_translate", '"pix2pix-edges", null, ', ', "picture", 0'), ("simclr_nearest", '"simclr", ', ""),
    ("flow_latents", '"glow", ', ", -1"), ("flow_interpolate", '"glow", ', ', {"path": "%s"}, 8, -1'),
    ("pixelcnn_complete", '"pixelcnn", ', ", 27, 1, 0, 1.0, -1"), ("pixelcnn_compress", '"pixelcnn", ', ""),
    ("vqvae_reconstruct", '"vqvae", ', ", -1"), ("jem_judge", '"jem", ', ""),
    ("likelihood_judge", "", "")])
def test_untagged_server_paths_are_never_opened(sampler_url, api_name, before, after):
    """An untagged dict passes Gradio's checks when inputs are unprocessed: our code must refuse
    every path outside the upload cache and the examples, with one message that says nothing about the file."""
    sneaker = str(ROOT / "apps" / "examples" / "7-sneaker.png")
    messages = set()
    for path in ("/etc/passwd", "/etc/shadow", "/nonexistent.png", str(ROOT / "README.md"),
                 str(ROOT / "apps" / "examples" / ".." / ".." / "checkpoints" / "dcgan" / "samples.png")):
        for value in ('{"path": "%s"}' % path, '"%s"' % path):
            data = before + value + (after % sneaker if "%s" in after else after)
            stream = raw_call(sampler_url, api_name, '{"data": [%s]}' % data)
            assert "event: error" in stream and "root:" not in stream, stream
            messages.add(stream.split("event: error", 1)[1])
    # the untagged dict reaches our check; a bare string is refused by Gradio's own validation (its generic error)
    ours = {m for m in messages if '"error": null' not in m}
    assert len(ours) == 1 and "not uploaded to this app" in ours.pop() and len(messages) <= 2


def test_a_sketch_naming_a_server_path_is_refused(sampler_url):
    """The sketch pad's value is Gradio's editor data: an untagged composite path fails its validation before our
    code runs (the generic error), a tagged one outside the cache too; neither answer carries the file."""
    for composite in ('{"path": "/etc/passwd"}', '{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}'):
        body = '{"data": ["pix2pix-edges", {"composite": %s, "background": null, "layers": []}, null, "drawing", 0]}'
        stream = raw_call(sampler_url, "pix2pix_translate", body % composite)
        assert "event: error" in stream and "root:" not in stream, stream


def test_files_outside_the_upload_folder_are_refused(sampler_url):
    """A hand-written file reference to a server path never reaches our code (Gradio refuses it before, with its
    generic error: the one kind of bad input that does not get our message)."""
    body = '{"data": ["vae", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]}'
    stream = raw_call(sampler_url, "vae_reconstruct", body)
    assert "event: error" in stream and "root:" not in stream


def test_sixteen_concurrent_clients(sampler_url):
    """Identical requests at once (the case where Gradio's content-named output files could collide)."""
    results, errors = [None] * 16, []

    def work(i: int) -> None:
        try:
            client = Client(sampler_url, verbose=False)
            if i % 4 == 3:
                results[i] = pixels(client.predict("vae", handle_file(SNEAKER), api_name="/vae_reconstruct")[1])
            else:
                results[i] = pixels(client.predict("dcgan", 64, 11, -1, api_name="/gan_sample"))
        except Exception as exc:                                  # collected and reported below
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    grids, reconstructions = [results[i] for i in range(16) if i % 4 != 3], [results[i] for i in range(3, 16, 4)]
    assert all(np.array_equal(grids[0], g) for g in grids) and grids[0].shape == (SIDE(8), SIDE(8))
    assert all(np.array_equal(reconstructions[0], r) for r in reconstructions)
    assert urllib.request.urlopen(f"{sampler_url}/gradio_api/info", timeout=10).status == 200


# ------------------------------------------------------------------------------------ fairness and deployment
def test_one_client_cannot_fill_the_diffusion_queue(sampler_url):
    """A client's third diffusion request, while two are queued or running, is refused before it is queued."""
    client = Client(sampler_url, verbose=False)
    jobs = [client.submit("ddpm", 2, 50, "ddim", 0, seed, -1, 1, api_name="/ddpm_sample") for seed in range(3)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=120)
            outcomes.append("done")
        except (AppError, ValidationError) as exc:
            outcomes.append(str(exc))
    assert outcomes.count("done") == 2, outcomes                 # submitted at once: any one of them is refused
    assert any("at most 2 at a time" in outcome for outcome in outcomes), outcomes
    assert size(Client(sampler_url, verbose=False).predict("ddpm", 1, 2, "ddim", 0, 0, -1, 1,
                                                            api_name="/ddpm_sample")[0]) == (SIDE(1), SIDE(1))


def test_a_public_deployment_serves_shipped_models_only_and_leaves_nothing_behind(tmp_path):
    """GENLAB_HUB_IDS=off; refused requests log one line each and no traceback; SIGTERM removes the answers' files."""
    from conftest import start_sampler
    server, url, log_path = start_sampler({"GENLAB_HUB_IDS": "off", "TMPDIR": str(tmp_path)}, tmp_path)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as caught:
            client.predict("someone/gan@main", 4, 0, -1, api_name="/gan_sample")
        assert "must be one of mlp-gan, dcgan, cgan, got" in str(caught.value) and "Hub" not in str(caught.value)
        with pytest.raises(AppError, match="n must be a whole number"):
            client.predict("dcgan", "x" * 100_000, 0, -1, api_name="/gan_sample")
        assert size(client.predict("dcgan", 4, 0, -1, api_name="/gan_sample")) == (SIDE(2), SIDE(2))
        assert len(list(tmp_path.glob("genlab-sampler-*/*.png"))) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    log = log_path.read_text()
    assert server.returncode == 0 and not list(tmp_path.glob("genlab-sampler-*"))
    assert "Traceback" not in log and log.count("gan_sample refused") == 2 and "x" * 100 not in log


def component_values(component: dict) -> list:
    """The extremes a user can set on a widget: a slider's or number's ends, every dropdown choice, both booleans."""
    props = component.get("props", {})
    if component["type"] in ("slider", "number") and props.get("minimum") is not None:
        return [props["minimum"], props["maximum"]]
    if component["type"] == "dropdown":
        return [choice[1] if isinstance(choice, (list, tuple)) else choice for choice in props.get("choices", [])]
    if component["type"] == "checkbox":
        return [True, False]
    return []


def endpoints(url: str) -> dict[str, list[dict]]:
    """api_name -> its input components (with their default values), from the app's config."""
    config = json.loads(urllib.request.urlopen(f"{url}/config", timeout=10).read())
    by_id = {c["id"]: c for c in config["components"]}
    return {d["api_name"]: [by_id[i] for i in d["inputs"]] for d in config["dependencies"]
            if d.get("api_name") and d.get("api_visibility", "public") == "public" and d["api_name"].islower()}


def default_arguments(inputs: list[dict]) -> list:
    values = []
    for component in inputs:
        value = component.get("props", {}).get("value")
        values.append(handle_file(value["path"]) if isinstance(value, dict) and "path" in value else value)
    return values


OURS = ("must", "is unconditional", "needs", "repeats timesteps", "this model", "one of", "is a ",
        "samples with a scheduler of")


def test_every_endpoint_answers_at_its_defaults_and_at_every_widget_extreme(sampler_url):
    """Each widget set to each end of its range (or each choice), the others at their defaults: a valid answer or
    our message, never Gradio's generic error."""
    client = Client(sampler_url, verbose=False)
    apis = endpoints(sampler_url)
    assert len(apis) == 32
    calls = 0
    for api_name, inputs in apis.items():
        defaults = default_arguments(inputs)
        client.predict(*defaults, api_name=f"/{api_name}")            # the defaults work as they are
        if api_name == "ddpm_sample":        # walk the other widgets with 1 image and 2 steps (n and steps
            defaults[1:3] = [1, 2]           # themselves are walked to their ends below)
        if api_name == "pixelcnn_sample":    # 1 image, and 1 image with its last row to draw
            defaults[1] = 1
        if api_name == "pixelcnn_complete":
            defaults[2:4] = [27, 1]
        if api_name == "jem_sgld":           # 1 image, 5 SGLD steps
            defaults[1:3] = [1, 5]
        for i, component in enumerate(inputs):
            for value in component_values(component):
                arguments = defaults[:i] + [value] + defaults[i + 1:]
                calls += 1
                try:
                    client.predict(*arguments, api_name=f"/{api_name}")
                except (AppError, ValidationError) as exc:
                    assert any(part in str(exc) for part in OURS) and "upstream" not in str(exc), (api_name, i, value,
                                                                                                    str(exc))
    assert calls > 100


def test_every_endpoint_keeps_its_name_parameters_components_and_defaults(sampler_url):
    """The API clients rely on: each public endpoint's parameter names, widgets and defaults, and its outputs, as
    they were before the tabs were built from the services' tables (tests/data/sampler_api.json, written from the
    hand-wired app). A new endpoint is added to the file; a changed one is a change for every API client."""
    config = json.loads(urllib.request.urlopen(f"{sampler_url}/config", timeout=10).read())
    by_id = {c["id"]: c for c in config["components"]}
    api = Client(sampler_url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    plain = lambda value: value.get("orig_name") if isinstance(value, dict) else value     # an example file's name
    found = {}
    for dependency in config["dependencies"]:
        name = dependency.get("api_name")
        if not name or dependency.get("api_visibility", "public") != "public":
            continue
        found[name] = [{"name": p["parameter_name"], "component": by_id[i]["type"],
                        "default": plain(p["parameter_default"] if p.get("parameter_has_default")
                                         else by_id[i].get("props", {}).get("value"))}
                       for p, i in zip(api[f"/{name}"]["parameters"], dependency["inputs"])]
        found[f"{name}:outputs"] = [by_id[i]["type"] for i in dependency["outputs"]]
    assert found == json.loads((ROOT / "tests" / "data" / "sampler_api.json").read_text())
