"""apps/sampler.py in headless Chromium (Debian's /usr/bin/chromium through playwright; never `playwright install`):
every tab renders and answers a click with an image, a class picked after switching to a conditional model
samples, Pix2Pix's sketch pad and upload pick their source (an empty drawing is refused with its own message, and a
failed call clears the last answer), a bad request and a refused costly one show their toasts, and nothing is
fetched from outside 127.0.0.1. Screenshots of every tab go to tests/artifacts/ (git-ignored)."""
from playwright.sync_api import sync_playwright

from conftest import ROOT
from test_monitor_browser import ARTIFACTS, LOCAL, local_page, require_chromium

TABS = [   # tab, button, the label of the image output it fills
    ("GAN", "Sample", "samples"),
    ("VAE", "Sample from the prior", "samples: decoder means of z ~ p(z)"),
    ("Flow", "Sample", "samples at temperature T"),
    ("PixelCNN", "Sample", "samples, drawn pixel by pixel (grey: not drawn yet)"),
    ("VQ-VAE", "Sample", "samples: codes drawn by the prior, decoded (grey: not drawn yet)"),
    ("VQ-VAE", "Reconstruct", "its codes (a colour per codebook entry)"),
    ("Diffusion", "Denoise", "the first images at 10 moments of the run: x_t above x̂₀"),
    ("StyleGAN", "Mix styles", "style mixing: top row and left column are the sources"),
    ("StyleGAN", "Resample the noise inputs", "one w, 8 noise draws"),
    ("CycleGAN", "Translate", "translation"),
    ("Pix2Pix", "Translate", "outputs (one per dropout draw)"),
    ("SimCLR", "Find similar images", "the 8 nearest test images in the representation"),
    ("FGSM", "Attack", "adversarial image"),
    ("Foundations", "Train", "the whole run"),
    ("Foundations", "Plot", "the function (blue) and its derivative (orange)"),
    ("Foundations", "Fit", "one hidden layer of n units (blue) against the target (black)"),
]


def output_image(page, label: str):
    """The <img> inside the image output whose label is `label`."""
    return page.locator(f"[data-testid=block-label]:text-is('{label}')").locator(
        "xpath=ancestor::div[contains(@class, 'block')][1]").locator("img").first


def picture_source(page, label: str) -> str | None:
    image = output_image(page, label)
    return image.get_attribute("src") if image.count() else None


def wait_for_picture(page, label: str, before: str | None = None) -> None:
    """Until the image output `label` shows a loaded picture other than `before` (its earlier src)."""
    image = output_image(page, label)
    image.wait_for(timeout=60_000)
    page.wait_for_function("([img, before]) => img.src !== before && img.complete && img.naturalWidth > 0",
                           arg=[image.element_handle(), before], timeout=60_000)


def test_every_tab_renders_answers_a_click_and_stays_local(sampler_url):
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    hosts = set()
    with sync_playwright() as p:
        browser, page = local_page(p, hosts, height=1800)
        page.goto(sampler_url)
        for tab, button, label in TABS:
            page.get_by_role("tab", name=tab, exact=True).click()
            page.get_by_role("button", name=button, exact=True).click()
            wait_for_picture(page, label)
            page.screenshot(path=str(ARTIFACTS / f"sampler-{tab.lower()}.png"), full_page=True)   # the last click's
        # switching to a conditional model keeps the class picker working: pick a class, sample, no error (the
        # picker once sent Gradio's skip marker as its value after the switch)
        for tab, model, button, label, picker in (
                ("GAN", "cgan", "Sample", "samples", "class (conditional GAN only)"),
                ("Diffusion", "ddpm-cond", "Denoise", "x_t, streamed while it runs", "class (ddpm-cond only)")):
            page.get_by_role("tab", name=tab, exact=True).click()
            page.get_by_label("model", exact=True).locator("visible=true").first.click()
            page.get_by_role("option", name=model, exact=True).click()
            classes = page.get_by_label(picker, exact=True).locator("visible=true").first
            page.wait_for_function("input => !input.disabled", arg=classes.element_handle(), timeout=30_000)
            classes.click()
            page.get_by_role("option", name="sneaker", exact=True).click()
            before = picture_source(page, label)
            page.get_by_role("button", name=button, exact=True).click()
            wait_for_picture(page, label, before)
            page.screenshot(path=str(ARTIFACTS / f"sampler-{tab.lower()}-conditional.png"), full_page=True)
            assert page.locator('[data-testid="toast-text"]').count() == 0, page.locator(
                '[data-testid="toast-text"]').first.inner_text()
        # Pix2Pix: translating an empty drawing says so (not "no image: upload a PNG") and clears the last answer;
        # uploading a picture selects its edges; strokes on the sketch pad select "my drawing", and Translate
        # answers with the edge map of the drawing
        page.get_by_role("tab", name="Pix2Pix", exact=True).click()
        assert picture_source(page, "the edge map the model saw")         # the answer of the click above
        page.get_by_label("my drawing").check()
        page.get_by_role("button", name="Translate", exact=True).click()
        page.locator('[data-testid="toast-text"]').filter(has_text="the drawing is empty: pick the brush").wait_for(
            timeout=30_000)
        output_image(page, "the edge map the model saw").wait_for(state="detached", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-pix2pix-empty.png"), full_page=True)
        page.locator(".pixels").filter(has_text="or upload a picture").locator("input[type=file]").set_input_files(
            str(ROOT / "apps/examples/0-t-shirt-top.png"))
        edges = page.get_by_label("the upload's edges")
        page.wait_for_function("radio => radio.checked", arg=edges.element_handle(), timeout=30_000)
        page.get_by_role("button", name="Brush", exact=True).click()
        pad = page.locator("canvas").locator("visible=true").first.bounding_box()
        at = lambda fx, fy: (pad["x"] + pad["width"] * fx, pad["y"] + pad["height"] * fy)
        page.mouse.move(*at(0.35, 0.2))
        page.mouse.down()
        for corner in ((0.65, 0.2), (0.65, 0.8), (0.35, 0.8), (0.35, 0.2)):
            page.mouse.move(*at(*corner), steps=10)
        page.mouse.up()
        drawing = page.get_by_label("my drawing")
        page.wait_for_function("radio => radio.checked", arg=drawing.element_handle(), timeout=30_000)
        before = picture_source(page, "the edge map the model saw")
        page.get_by_role("button", name="Translate", exact=True).click()
        wait_for_picture(page, "the edge map the model saw", before)
        page.screenshot(path=str(ARTIFACTS / "sampler-pix2pix-drawing.png"), full_page=True)
        # an unknown model typed into the GAN tab's model box answers with a toast that says why
        page.get_by_role("tab", name="GAN", exact=True).click()
        box = page.get_by_label("model").first
        box.fill("no-such-model")
        box.press("Enter")
        page.get_by_role("button", name="Sample", exact=True).click()
        toast = page.locator('[data-testid="toast-text"]').filter(has_text="model must be one of")
        toast.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-error.png"))
        assert "model must be one of mlp-gan, dcgan, cgan or a Hub repo id" in toast.inner_text()
        # a Diffusion request over the cost limit says why in full, in a toast and above the pictures (Gradio's own
        # validation box on the steps slider cuts the message off)
        page.get_by_role("tab", name="Diffusion", exact=True).click()
        for label, value in (("number input for steps", "1000"), ("number input for n", "64")):
            box = page.get_by_label(label).locator("visible=true").first
            box.fill(value)
            box.press("Enter")
        page.get_by_role("button", name="Denoise", exact=True).click()
        refusal = "n x steps x passes must be at most 16,000"
        page.locator('[data-testid="toast-text"]').filter(has_text=refusal).wait_for(timeout=30_000)
        page.get_by_text(f"Not run: {refusal}").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-diffusion-refused.png"), full_page=True)
        # the About section's equations are typeset (KaTeX, served by the app itself); the error toasts above stay
        # until closed and cover the right end of the tab bar, so the tab gets its click directly
        page.get_by_role("tab", name="FGSM", exact=True).dispatch_event("click")
        page.get_by_text("About").locator("visible=true").last.click()         # the FGSM tab's (the others hide)
        page.locator(".katex").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-about.png"), full_page=True)
        browser.close()
    assert hosts <= LOCAL, hosts

