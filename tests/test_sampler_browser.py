"""apps/sampler.py in headless Chromium (Debian's /usr/bin/chromium through playwright; never `playwright install`):
every tab renders and answers a click with an image, a bad request shows its toast, and nothing is fetched from
outside 127.0.0.1. Screenshots of every tab go to tests/artifacts/ (git-ignored)."""
from playwright.sync_api import sync_playwright

from test_monitor_browser import ARTIFACTS, LOCAL, local_page, require_chromium

TABS = [   # tab, button, the label of the image output it fills
    ("GAN", "Sample", "samples"),
    ("VAE", "Sample from the prior", "samples: decoder means of z ~ p(z)"),
    ("Diffusion", "Denoise", "the first images at 10 moments of the run: x_t above x̂₀"),
    ("CycleGAN", "Translate", "translation"),
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
