"""apps/sampler.py in headless Chromium (Debian's /usr/bin/chromium through playwright; never `playwright install`):
every tab renders and answers a click with an image, strokes drawn on the Pix2Pix sketch pad are translated, a bad
request shows its toast, and nothing is fetched from outside 127.0.0.1. Screenshots of every tab go to
tests/artifacts/ (git-ignored)."""
from playwright.sync_api import sync_playwright

from test_monitor_browser import ARTIFACTS, LOCAL, local_page, require_chromium

TABS = [   # tab, button, the label of the image output it fills
    ("GAN", "Sample", "samples"),
    ("VAE", "Sample from the prior", "samples: decoder means of z ~ p(z)"),
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
            image = output_image(page, label)
            image.wait_for(timeout=60_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / f"sampler-{tab.lower()}.png"), full_page=True)   # the last click's
        # strokes on the Pix2Pix sketch pad select "my drawing"; Translate answers with the edge map of the drawing
        page.get_by_role("tab", name="Pix2Pix", exact=True).click()
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
        seen = output_image(page, "the edge map the model saw")
        before = seen.get_attribute("src")
        page.get_by_role("button", name="Translate", exact=True).click()
        page.wait_for_function("([img, before]) => img.src !== before && img.complete && img.naturalWidth > 0",
                               arg=[seen.element_handle(), before], timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-pix2pix-drawing.png"), full_page=True)
        # an unknown model typed into the GAN tab's model box answers with a toast that says why
        page.get_by_role("tab", name="GAN", exact=True).click()
        box = page.get_by_label("model").first
        box.fill("no-such-model")
        box.press("Enter")
        page.get_by_role("button", name="Sample", exact=True).click()
        toast = page.locator('[data-testid="toast-text"]').first
        toast.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-error.png"))
        assert "model must be one of mlp-gan, dcgan, cgan or a Hub repo id" in toast.inner_text()
        # the About section's equations are typeset (KaTeX, served by the app itself)
        page.get_by_role("tab", name="FGSM", exact=True).click()
        page.get_by_text("About").locator("visible=true").last.click()         # the FGSM tab's (the others hide)
        page.locator(".katex").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "sampler-about.png"), full_page=True)
        browser.close()
    assert hosts <= LOCAL, hosts


def test_switching_to_a_conditional_model_keeps_the_class_picker_working(sampler_url):
    """On every tab with a class picker: choose the conditional model, then a class, then sample: an image and no
    error (the picker once sent Gradio's skip marker as its value after the switch)."""
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    hosts = set()
    with sync_playwright() as p:
        browser, page = local_page(p, hosts, height=1800)
        page.goto(sampler_url)
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
            page.get_by_role("button", name=button, exact=True).click()
            image = output_image(page, label)
            image.wait_for(timeout=60_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / f"sampler-{tab.lower()}-conditional.png"), full_page=True)
            assert page.locator('[data-testid="toast-text"]').count() == 0, page.locator(
                '[data-testid="toast-text"]').first.inner_text()
        browser.close()
    assert hosts <= LOCAL, hosts
