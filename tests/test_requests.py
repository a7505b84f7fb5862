"""core.requests: the checks every app request goes through, and image intake."""
import math

import pytest
import torch
from PIL import Image

from conftest import ROOT
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
