"""core/services/base.py and pictures.py: finding and loading models, admission, output files, card figures, and
the endpoint tables every tab is built from."""
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT
from core import requests as R
from core.families import FAMILIES
from core.services import SERVICES, base
from core.services.base import Admission, ModelChoice, Number, Service
from core.services.gan import GANService
from core.services.pictures import OutputFiles
from core.services.vae import VAEService


def test_models_load_once_and_the_family_is_checked():
    assert GANService.load("dcgan") is GANService.load("dcgan")
    with pytest.raises(R.RequestError, match="is a GAN; this needs a VAE"):
        VAEService.load("dcgan")
    for spec in (None, "", "/etc", "checkpoints/../checkpoints/dcgan", str(ROOT / "checkpoints" / "dcgan"), "a/b/c"):
        with pytest.raises(R.RequestError, match="model must be one of mlp-gan, dcgan, cgan or a Hub repo id"):
            GANService.load(spec)
    for spec in ("nobody/nothing@v9", "checkpoints/dcgan"):    # well-formed Hub ids; the second is no local folder
        with pytest.raises(R.RequestError, match=f"cannot load model '{spec}'"):
            GANService.load(spec)


def test_hub_ids_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(base.HUB_IDS, "off")
    with pytest.raises(R.RequestError) as caught:
        GANService.load("someone/model@main")
    assert "must be one of mlp-gan, dcgan, cgan, got" in str(caught.value) and "Hub" not in str(caught.value)
    assert GANService.load("dcgan").name == "dcgan"


def test_messages_name_no_server_path():
    text = "tried the local Hub cache /root/.cache/huggingface/hub (no copy); see http://127.0.0.1:8000/api/x"
    assert R.without_paths(text) == ("tried the local Hub cache <server path> (no copy); see "
                                     "http://127.0.0.1:8000/api/x")
    with pytest.raises(R.RequestError) as caught:
        GANService.load("nobody/nothing@v9")
    assert "/root" not in str(caught.value) and ".cache" not in str(caught.value)


def test_admission_limits_each_client_and_frees_its_places():
    admission = Admission(limit=2, expiry=60.0)
    admission.admit("a"), admission.admit("a"), admission.admit("b")
    with pytest.raises(R.RequestError, match="you already have 2 slow requests .* queued or running; at most 2"):
        admission.admit("a")
    admission.release("a")
    admission.admit("a")                                     # a place came free
    expiring = Admission(limit=1, expiry=0.0)                # a run that never started does not hold a place forever
    expiring.admit("c")
    expiring.admit("c")


def test_output_files_are_unique_capped_and_removed():
    outputs = OutputFiles(keep=3)
    picture = Image.new("L", (4, 4))
    paths = [outputs.png(picture) for _ in range(5)] + [outputs.gif([picture, picture, picture])]
    assert len(set(paths)) == 6 and sorted(p.name for p in outputs.folder.iterdir()) == sorted(
        Path(p).name for p in paths[-3:])
    outputs.close()
    assert not outputs.folder.exists()


def test_card_figures_feed_the_about_sections():
    table = base.figures_markdown(["dcgan", "cgan"])
    fids = [base.card_figures(name)["fid"] for name in ("dcgan", "cgan")]
    assert f"| FID | {fids[0]:.4g} | {fids[1]:.4g} |" in table and "conditional accuracy" in table
    assert base.figures_markdown([]) == "" and base.card_figures("no-such-model") == {}


def test_the_class_picker_is_live_for_conditional_models_only():
    assert GANService.follow("cgan") == {"label": {"interactive": True}}       # keeps the class chosen
    assert GANService.follow("dcgan") == {"label": {"interactive": False, "value": -1}}
    assert GANService.follow("/etc/passwd") == {"label": {"interactive": False, "value": -1}}


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.__name__)
def test_every_endpoint_table_is_complete(service):
    """Each endpoint names a method the service has, a cost classmethod where it has one, inputs with unique keys
    and bounds in order, a model box of the service's own family; each family with a tab is a registered family."""
    assert service.tab and service.about and service.endpoints
    assert not service.family or service.family in FAMILIES
    for endpoint in service.endpoints:
        assert callable(getattr(service, endpoint.method)), endpoint.api_name
        assert not endpoint.cost or callable(getattr(service, endpoint.cost))
        keys = [i.key for i in endpoint.inputs]
        assert len(set(keys)) == len(keys) and endpoint.outputs
        for spec in endpoint.inputs:
            assert not isinstance(spec, Number) or spec.low <= spec.default <= spec.high, (endpoint.api_name, spec)
            assert not isinstance(spec, ModelChoice) or spec.family == service.family
        assert endpoint.release is None or endpoint.release in {i.widget_name for i in endpoint.inputs}
    names = [e.api_name for s in SERVICES for e in s.endpoints]
    assert len(names) == len(set(names))


def test_a_service_answers_for_its_own_family_only():
    assert issubclass(GANService, Service) and GANService.model_names() == ["mlp-gan", "dcgan", "cgan"]
    assert VAEService.follow("vae") == {"dim": {"maximum": 31}}
    assert VAEService.follow("vae-2d") == {"dim": {"maximum": 1}}
    assert VAEService.follow("nobody/nothing@v9") == {}
