"""core/services/cyclegan.py: the direction picker names the model's domains; the note says what the input is."""
from conftest import ROOT
from core.services import base
from core.services.cyclegan import CycleGANService


def test_the_directions_name_the_models_domains(monkeypatch, tmp_path):
    assert CycleGANService.follow("cyclegan")["direction"]["choices"][0] == ("sneaker -> ankle boot (A -> B)", "a2b")
    (tmp_path / "config.json").write_text('{"_class_name": "CycleGAN", "domain_a": 0, "domain_b": 1}')
    monkeypatch.setattr(base, "resolve", lambda spec, allow_local: tmp_path)          # as if pulled from the Hub
    assert CycleGANService.follow("someone/tops")["direction"]["choices"] == (
        ("t-shirt/top -> trouser (A -> B)", "a2b"), ("trouser -> t-shirt/top (B -> A)", "b2a"))


def test_the_note_says_what_the_classifier_sees_and_warns_outside_the_directions_domain():
    """A sneaker sent sneaker -> boot is named and nothing more; a t-shirt gets told the direction never saw one; an
    ankle boot sent the wrong way is pointed to the other direction."""
    service, examples = CycleGANService.load("cyclegan"), ROOT / "apps" / "examples"
    note = service.translate(str(examples / "7-sneaker.png"), "a2b")[3]
    assert note.startswith("The classifier sees: sneaker (") and "learned from" not in note
    note = service.translate(str(examples / "0-t-shirt-top.png"), "a2b")[3]
    assert "sees: t-shirt/top" in note and "learned from sneaker images only" in note and "upload a sneaker" in note
    assert "pick the other direction" in service.translate(str(examples / "9-ankle-boot.png"), "a2b")[3]
    assert "learned from" not in service.translate(str(examples / "9-ankle-boot.png"), "b2a")[3]
