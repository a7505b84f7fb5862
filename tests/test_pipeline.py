"""core.pipeline and core.requests in-process: the checks every app request goes through, image intake, the
services' answers and the pictures' geometry."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from core import pipeline as P
from core import requests as R

SNEAKER = ROOT / "apps" / "examples" / "7-sneaker.png"


@pytest.mark.parametrize("value, ok", [(3, True), (3.0, True), (1, True), (10, True), (0, False), (11, False),
                                       (2.5, False), (math.nan, False), (math.inf, False), (None, False),
                                       ("3", False), (True, False), ([3], False)])
def test_integer_accepts_whole_numbers_in_range_only(value, ok):
    if ok:
        assert R.whole_number(value, "n", 1, 10) == int(value)
    else:
        with pytest.raises(R.RequestError, match=r"n must be a whole number from 1 to 10, got"):
            R.whole_number(value, "n", 1, 10)


@pytest.mark.parametrize("value", [math.nan, -math.inf, math.inf, -0.01, 1.01, None, "0.5", False])
def test_number_refuses_nan_infinity_and_out_of_range(value):
    with pytest.raises(R.RequestError, match=r"eta must be a number from 0 to 1"):
        R.real_number(value, "eta", 0.0, 1.0)
    assert R.real_number(0.5, "eta", 0.0, 1.0) == 0.5 and R.real_number(1, "eta", 0.0, 1.0) == 1.0


def test_class_dropdown_values_arrive_as_ints_or_their_strings():
    assert R.class_index("3") == 3 and R.class_index("-1") == -1 and R.class_index(3) == 3
    assert R.class_index("3.5") == "3.5" and R.class_index("12345") == "12345"     # left for the range check


def test_read_image_refuses_bad_files_with_the_rule(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "big.png").write_bytes(bytes(R.MAX_UPLOAD_BYTES + 1))
    Image.new("L", (6000, 5000)).save(tmp_path / "wide.png")                 # 30 M pixels > 25 M
    data = SNEAKER.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    cases = {None: "no image", str(tmp_path / "missing.png"): "not uploaded to this app",
             str(tmp_path / "empty.png"): "empty or larger than 10 MB", str(tmp_path / "text.png"): "not a readable image",
             str(tmp_path / "big.png"): "empty or larger than 10 MB", str(tmp_path / "wide.png"): "6000x5000 pixels",
             str(tmp_path / "cut.png"): "not a readable image", "": "no image", 42: "not uploaded to this app"}
    for upload, message in cases.items():
        with pytest.raises(R.RequestError, match=message) as caught:
            R.read_image({"path": upload} if upload not in (None, 42) else upload, roots=(tmp_path,))
        assert "at most 10 MB and 25,000,000 pixels" in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_read_image_opens_nothing_outside_the_upload_roots(tmp_path, monkeypatch):
    """Client-chosen paths (untagged dicts, bare strings, `..`, symlinks, URLs) outside Gradio's upload cache and the
    examples all get one message, whether the file exists or not, and whatever it holds."""
    cache = tmp_path / "gradio"
    (cache / "abc").mkdir(parents=True)
    Image.open(SNEAKER).save(cache / "abc" / "upload.png")
    secret = tmp_path / "secret.png"
    Image.open(SNEAKER).save(secret)                              # a readable image outside the roots
    (cache / "abc" / "link.png").symlink_to(secret)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    assert R.read_image({"path": str(cache / "abc" / "upload.png")}).size == Image.open(SNEAKER).size
    assert R.read_image(str(SNEAKER)).size == Image.open(SNEAKER).size   # the shipped examples
    messages = set()
    for path in (secret, "/etc/passwd", "/etc/shadow", "/nonexistent/x.png", str(cache / "abc" / ".." / ".." /
                 "secret.png"), cache / "abc" / "link.png", "http://127.0.0.1/x.png", "file:///etc/passwd",
                 str(cache), "x\0y"):
        for upload in ({"path": str(path)}, str(path), {"path": str(path), "meta": {"_type": "gradio.FileData"}}):
            with pytest.raises(R.RequestError) as caught:
                R.read_image(upload)
            messages.add(str(caught.value))
    assert len(messages) == 1 and "not uploaded to this app" in messages.pop()


def test_only_the_listed_image_formats_open(tmp_path):
    Image.open(SNEAKER).convert("RGB").save(tmp_path / "x.ppm")
    Image.open(SNEAKER).convert("RGB").save(tmp_path / "x.tga")
    for name in ("x.ppm", "x.tga"):
        with pytest.raises(R.RequestError, match="not a readable image"):
            R.read_image(str(tmp_path / name), roots=(tmp_path,))


def test_error_messages_cut_long_values():
    with pytest.raises(R.RequestError) as caught:
        R.whole_number("x" * 100_000, "n", 1, 10)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "1", "CMYK"])
def test_any_image_mode_becomes_a_28_pixel_grey_input(tmp_path, mode):
    Image.open(SNEAKER).convert(mode).resize((97, 61)).save(tmp_path / "x.png" if mode != "CMYK" else
                                                            tmp_path / "x.jpg")
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    x, inverted = R.to_model_input(R.read_image(str(path), roots=(tmp_path,)))
    assert x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1 and not inverted


def test_light_backgrounds_are_inverted_and_the_object_centred():
    dark_on_white = Image.new("L", (60, 30), 255)
    dark_on_white.paste(0, (20, 5, 40, 25))                                   # a black box in the middle
    x, inverted = R.to_model_input(dark_on_white)
    assert inverted and x[0, 0].max() == -1 and x[0, 14, 14] == 1            # black border, white object
    column_mass = (x[0] + 1).sum(0)
    centre = float((column_mass * torch.arange(28)).sum() / column_mass.sum())
    assert abs(centre - 13.5) < 0.5


def test_models_load_once_and_the_family_is_checked():
    assert P.load_pipeline("dcgan", "gan") is P.load_pipeline("dcgan", "gan")
    with pytest.raises(R.RequestError, match="is a GAN; this needs a VAE"):
        P.load_pipeline("dcgan", "vae")
    for spec in (None, "", "/etc", "checkpoints/../checkpoints/dcgan", str(ROOT / "checkpoints" / "dcgan"), "a/b/c"):
        with pytest.raises(R.RequestError, match="model must be one of mlp-gan, dcgan, cgan or a Hub repo id"):
            P.load_pipeline(spec, "gan")
    for spec in ("nobody/nothing@v9", "checkpoints/dcgan"):    # well-formed Hub ids; the second is no local folder
        with pytest.raises(R.RequestError, match=f"cannot load model '{spec}'"):
            P.load_pipeline(spec, "gan")
    assert P.is_conditional("cgan", "gan") and not P.is_conditional("dcgan", "gan")
    assert P.is_conditional("ddpm-cond", "ddpm")


def test_the_scheduler_choices_follow_the_models_objective(monkeypatch, tmp_path):
    assert set(P.sampler_names("ddpm")) == {"dpm_solver", "dpm_solver_sde", "ddim", "ddpm"}
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "flow_prediction"}')
    monkeypatch.setattr(P, "resolve", lambda spec, allow_local: tmp_path)         # as if pulled from the Hub
    assert P.sampler_names("someone/flow") == ("euler", "heun")
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "v_prediction", '
                                          '"eval_sampler": "ddpm"}')
    assert P.sampler_names("someone/own") == ("ddpm", "dpm_solver", "dpm_solver_sde", "ddim")
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "eval_sampler": "/etc/passwd"}')
    assert P.sampler_names("someone/odd") == ("dpm_solver", "dpm_solver_sde", "ddim", "ddpm")
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "prediction_type": "edm"}')
    assert P.sampler_names("someone/edm") == ("edm_dpm_solver", "edm_heun", "edm_euler")
    assert P.default_guidance("someone/edm") == 1.0
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "guide_widths": "8", "eval_guidance": 1.25}')
    assert P.default_guidance("someone/guided") == 1.25
    (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "guide_widths": "8", "eval_guidance": "2"}')
    with pytest.raises(R.RequestError, match="the config's eval_guidance must be a number from 0 to 20"):
        P.default_guidance("someone/odd")
    assert P.default_steps("someone/odd") == 20                                     # no eval_steps: the default
    for steps in ('"/etc/passwd"', "1e9", "0", "2.5"):
        (tmp_path / "config.json").write_text('{"_class_name": "DDPM", "eval_steps": %s}' % steps)
        with pytest.raises(R.RequestError, match="the config's eval_steps must be a whole number from 1 to 1000"):
            P.default_steps("someone/odd")
    assert {"euler", "heun", "edm_heun", "edm_euler", "edm_dpm_solver", "dpm_solver", "dpm_solver_sde", "ddim",
            "ddpm"} == set(P.SCHEDULERS)


def test_latent_plane_rings_the_cell_of_the_encoding():
    """The red ring's centre lies in the grid cell whose quantiles are nearest Φ(μ(x)), for several images."""
    cell = 30 * P.SCALE
    for path in sorted((ROOT / "apps" / "examples").glob("*.png"))[::3]:
        picture, (z1, z2) = P.load_pipeline("vae-2d", "vae").latent_plane(str(path))
        red = np.argwhere(np.all(np.asarray(picture) == (255, 0, 0), axis=-1))
        y, x = red.mean(0)
        phi = torch.distributions.Normal(0, 1).cdf(torch.tensor([z1, z2])).clamp(0.05, 0.95)
        column, row = round(float(phi[0] - 0.05) / 0.9 * 14), round(float(0.95 - phi[1]) / 0.9 * 14)
        assert int((x - 2 * P.SCALE) // cell) == column and int((y - 2 * P.SCALE) // cell) == row, path.name


def test_denoising_streams_a_bounded_number_of_frames_and_refuses_too_much_work():
    ddpm = P.load_pipeline("ddpm", "ddpm")
    frames = list(ddpm.denoise(2, 30, "ddim", 0.0, 0))
    assert len(frames) <= P.STREAM_FRAMES + 1 and [f[0] for f in frames] == sorted(f[0] for f in frames)
    assert frames[-1][0] == 30 and frames[-1][4] is not None and all(f[4] is None for f in frames[:-1])
    assert all(f[2].size == f[3].size for f in frames)                 # x_t and x̂_0 grids side by side
    assert frames[-1][4].height == (4 * 30 + 2) * P.SCALE               # strip: 2 images' x_t rows, then x̂_0 rows
    with pytest.raises(R.RequestError, match="n x steps x passes must be at most 16,000"):
        next(ddpm.denoise(17, 1000, "ddim", 0.0, 0))
    with pytest.raises(R.RequestError, match="repeats timesteps"):        # the slider's maximum with DPM-Solver++
        next(ddpm.denoise(1, 1000, "dpm_solver", 0.0, 0))


def test_fgsm_perturbation_is_bounded_and_zero_at_eps_zero():
    attacks = P.load_pipeline("classifier", "classifier")
    original, perturbation, adversarial, before, after = attacks.attack(str(SNEAKER), "pgd", 0.0)
    assert np.array_equal(np.asarray(original), np.asarray(adversarial)) and before == after
    assert np.all(np.asarray(perturbation.convert("L")).astype(int) - 127 <= 1)  # all grey: no change
    original, _, adversarial, _, _ = attacks.attack(str(SNEAKER), "pgd", 0.03)
    change = np.abs(np.asarray(adversarial, dtype=int) - np.asarray(original, dtype=int)).max()
    assert 0 < change <= math.ceil(0.03 * 255) + 1


def test_card_figures_feed_the_about_sections_and_the_robustness_plot():
    rows = P.robustness_table(["classifier", "classifier-adv"])
    curves = {m: [r for r in rows if r["model"] == m] for m in ("classifier", "classifier-adv")}
    assert all(c[0]["eps"] == 0.0 and len(c) >= 4 for c in curves.values())
    at = lambda m, eps: next(r["accuracy"] for r in curves[m] if r["eps"] == eps)
    assert at("classifier", 0.1) < 0.2 < 0.6 < at("classifier-adv", 0.1)     # the point of adversarial training
    table = P.figures_markdown(["dcgan", "cgan"])
    fids = [P.card_figures(name)["fid"] for name in ("dcgan", "cgan")]
    assert f"| FID | {fids[0]:.4g} | {fids[1]:.4g} |" in table and "conditional accuracy" in table


def test_diffusion_cost_counts_guidance_passes():
    assert P.diffusion_work(16, 1000, "ddim", 0.0, 0, 1.0) == 16_000
    with pytest.raises(R.RequestError, match="n x steps x passes must be at most 16,000.*16 x 1000 x 2 = 32,000"):
        P.diffusion_work(16, 1000, "ddim", 0.0, 0, 2.0)
    with pytest.raises(R.RequestError, match="16 x 1000 x 2 = 32,000"):        # Heun: two passes per step
        P.diffusion_work(16, 1000, "heun", 0.0, 0, 1.0)
    assert P.diffusion_work(16, 500, "heun", 0.0, 0, 1.0) == 16_000
    with pytest.raises(R.RequestError, match="scheduler must be one of"):
        P.diffusion_work(1, 1, "lms", 0.0, 0, 1.0)


def test_guidance_needs_a_guided_model_and_the_sliders_start_at_the_cards_scale():
    from core.models.ddpm import DDPM, DDPMConfig
    tiny = dict(image_size=8, widths="8,16", prediction_type="edm", ema_decay=0.0)
    plain = P.DiffusionPipeline(DDPM(DDPMConfig(**tiny)), "plain")
    with pytest.raises(R.RequestError, match="guidance_scale needs a guided model"):
        next(plain.denoise(1, 2, "edm_euler", 0.0, 0, guidance_scale=2.0))
    guided = DDPM(DDPMConfig(**tiny)).with_guide(DDPM(DDPMConfig(**{**tiny, "widths": "8"})), 1.5)
    assert next(P.DiffusionPipeline(guided, "guided").denoise(1, 2, "edm_euler", 0.0, 0, guidance_scale=2.0))
    assert P.default_guidance("ddpm-cond") == 2.0 and P.default_guidance("ddpm") == 1.0   # the guide: for w > 1
    assert P.default_steps("ddpm") == 40 and P.default_steps("ddpm-cond") == 20           # as on their cards
    assert P.diffusion_defaults("ddpm") == (P.sampler_names("ddpm"), 1.0, 40)
    assert P.sampler_names("ddpm")[0] == "dpm_solver_sde" and P.sampler_names("ddpm-cond")[0] == "dpm_solver"


def test_a_diffusion_model_asked_for_a_flow_sampler_says_so():
    with pytest.raises(R.RequestError, match="a diffusion model samples with a scheduler of"):
        next(P.load_pipeline("ddpm", "ddpm").denoise(1, 2, "euler", 0.0, 0))


def test_admission_limits_each_client_and_frees_its_places():
    admission = P.Admission(limit=2, expiry=60.0)
    admission.admit("a"), admission.admit("a"), admission.admit("b")
    with pytest.raises(R.RequestError, match="you already have 2 diffusion requests queued or running; at most 2"):
        admission.admit("a")
    admission.release("a")
    admission.admit("a")                                     # a place came free
    expiring = P.Admission(limit=1, expiry=0.0)              # a run that never started does not hold a place forever
    expiring.admit("c")
    expiring.admit("c")


def test_one_large_diffusion_run_at_a_time_and_small_ones_beside_it(monkeypatch):
    ddpm = P.load_pipeline("ddpm", "ddpm")
    large = ddpm.denoise(16, 200, "ddim", 0.0, 0)             # 3,200 image-steps: large
    next(large)                                               # running, holding the large place
    with pytest.raises(R.RequestError, match="another large diffusion request is running"):
        next(ddpm.denoise(16, 150, "ddim", 0.0, 1))
    assert len(list(ddpm.denoise(1, 10, "ddim", 0.0, 2))) == 10   # a small one runs meanwhile
    large.close()                                             # a client that leaves frees the place
    again = ddpm.denoise(16, 150, "ddim", 0.0, 1)
    next(again)
    again.close()
    monkeypatch.setattr(P, "DIFFUSION_BUDGET_S", 0.0)
    with pytest.raises(R.RequestError, match="stopped after 0 s with 1 of 20 steps done"):
        list(ddpm.denoise(2, 20, "ddim", 0.0, 0))


def test_hub_ids_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(P.HUB_IDS, "off")
    with pytest.raises(R.RequestError) as caught:
        P.load_pipeline("someone/model@main", "gan")
    assert "must be one of mlp-gan, dcgan, cgan, got" in str(caught.value) and "Hub" not in str(caught.value)
    assert P.load_pipeline("dcgan", "gan").name == "dcgan"


def test_messages_name_no_server_path():
    text = "tried the local Hub cache /root/.cache/huggingface/hub (no copy); see http://127.0.0.1:8000/api/x"
    assert R.without_paths(text) == ("tried the local Hub cache <server path> (no copy); see "
                                     "http://127.0.0.1:8000/api/x")
    with pytest.raises(R.RequestError) as caught:
        P.load_pipeline("nobody/nothing@v9", "gan")
    assert "/root" not in str(caught.value) and ".cache" not in str(caught.value)


def test_output_files_are_unique_capped_and_removed():
    outputs = P.OutputFiles(keep=3)
    picture = Image.new("L", (4, 4))
    paths = [outputs.png(picture) for _ in range(5)] + [outputs.gif([picture, picture, picture])]
    assert len(set(paths)) == 6 and sorted(p.name for p in outputs.folder.iterdir()) == sorted(
        Path(p).name for p in paths[-3:])
    outputs.close()
    assert not outputs.folder.exists()


def test_foundations_answers_follow_the_training_run():
    picture, animation, note = P.foundations_training("AND", "perceptron rule", "tanh", 0, 300)
    assert note == "All four points right from epoch 6." and len(animation) == 7     # epochs 0..6, it stopped
    start, _, _ = P.foundations_training("AND", "perceptron rule", "tanh", 0, 0)
    assert picture.tobytes() != start.tobytes()
    _, animation, note = P.foundations_training("XOR", "perceptron rule", "tanh", 0, 300)
    assert "cycles" in note and len(animation) <= P.ANIMATION_FRAMES + 1
    with pytest.raises(R.RequestError, match="learner must be one of"):
        P.foundations_training("AND", {"path": "/etc/passwd"}, "tanh", 0, 1)


def test_a_drawing_becomes_a_cropped_edge_map_like_the_training_inputs(tmp_path, monkeypatch):
    """A sketch pad's picture (dark strokes on a transparent canvas) comes out as white lines on black, cut to what
    was drawn; an empty pad is refused; a picture's edges are the training inputs' (core.data.edge_map)."""
    from PIL import ImageDraw
    from core.data import edge_map
    from core.models.pix2pix import Pix2Pix, Pix2PixConfig
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).rectangle((100, 60, 180, 220), outline=(0, 0, 0, 255), width=12)   # a small outline
    edges = P.drawn_edges(canvas, crop=True)[0] > 0
    assert edges.shape == (28, 28) and set(P.drawn_edges(canvas, crop=True).unique().tolist()) == {-1.0, 1.0}
    columns = edges.any(0).nonzero().flatten()
    assert edges[0].any() and edges[-1].any()              # cropped: the tall outline spans the frame's height,
    assert 12 <= len(columns) <= 16 and 5 <= columns[0] <= 8   # half as wide, centred
    assert not edges[8:20, 12:16].any()                    # its inside stays black
    with pytest.raises(R.RequestError, match="the drawing is empty"):
        P.drawn_edges(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), crop=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    canvas.save(cache / "drawing.png")
    service = P.Pix2PixPipeline(Pix2Pix(Pix2PixConfig(width=4)).eval(), "tiny")
    seen, outputs, note = service.translate({"composite": {"path": str(cache / "drawing.png")}, "layers": []},
                                            None, "drawing", 3)
    assert seen.size == (28 * P.SCALE,) * 2 and outputs.size == ((P.PIX2PIX_OUTPUTS * 30 + 2) * P.SCALE, 32 * P.SCALE)
    assert "dropout" in note
    sneaker = str(ROOT / "apps" / "examples" / "7-sneaker.png")
    seen, _, _ = service.translate(None, sneaker, "picture", 0)
    x, _ = R.to_model_input(Image.open(sneaker))
    expected = P.single_image(edge_map(x[None])[0])
    assert np.array_equal(np.asarray(seen), np.asarray(expected))
    with pytest.raises(R.RequestError, match="source must be one of drawing, edge map, picture"):
        service.translate(None, sneaker, "photo", 0)
    with pytest.raises(R.RequestError, match="not uploaded to this app"):
        service.translate({"composite": {"path": "/etc/passwd"}}, None, "drawing", 0)
    inpainter = P.Pix2PixPipeline(Pix2Pix(Pix2PixConfig(width=4, task="inpaint")).eval(), "inpainter")
    with pytest.raises(R.RequestError, match="trained for the 'inpaint' task"):
        inpainter.translate(None, sneaker, "picture", 0)


def test_the_shipped_edge_examples_are_the_examples_edge_maps():
    from core.data import edge_map
    shipped = sorted((ROOT / "apps" / "examples" / "edges").glob("*.png"))
    assert [p.name for p in shipped] == sorted(p.name for p in (ROOT / "apps" / "examples").glob("*.png"))
    for path in shipped:
        x, _ = R.to_model_input(Image.open(ROOT / "apps" / "examples" / path.name))
        made = ((edge_map(x[None])[0, 0] + 1) * 127.5).round().byte().numpy()
        assert np.array_equal(np.asarray(Image.open(path)), made), path.name


def test_similar_images_come_from_the_gallery_with_the_query_on_the_plane():
    from core.data import ImageData
    from core.models.simclr import SimCLR, SimCLRConfig
    torch.manual_seed(0)
    gallery = ImageData(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), torch.arange(40) % 10,
                        tuple(str(k) for k in range(10)))
    model = SimCLR(SimCLRConfig(width=4, projection_dim=8)).eval()
    service = P.SimCLRPipeline(model.with_gallery(gallery, per_class=3).eval(), "tiny")
    seen, neighbours, plane, note = service.nearest(str(ROOT / "apps" / "examples" / "7-sneaker.png"))
    assert seen.size == (28 * P.SCALE,) * 2 and neighbours.size == ((P.NEIGHBOURS * 30 + 2) * P.SCALE, 32 * P.SCALE)
    assert plane.size[0] > 500 and note.count(")") == P.NEIGHBOURS + 1 and note.startswith("Nearest of 30 ")
    assert service.plane.std(0).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(R.RequestError, match="holds no gallery"):
        P.SimCLRPipeline(model, "bare")
