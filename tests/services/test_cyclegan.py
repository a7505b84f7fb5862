"""core/services/cyclegan.py: the direction picker names the model's domains."""
from core.services import base
from core.services.cyclegan import CycleGANService


def test_the_directions_name_the_models_domains(monkeypatch, tmp_path):
    assert CycleGANService.follow("cyclegan")["direction"]["choices"][0] == ("sneaker -> ankle boot (A -> B)", "a2b")
    (tmp_path / "config.json").write_text('{"_class_name": "CycleGAN", "domain_a": 0, "domain_b": 1}')
    monkeypatch.setattr(base, "resolve", lambda spec, allow_local: tmp_path)          # as if pulled from the Hub
    assert CycleGANService.follow("someone/tops")["direction"]["choices"] == (
        ("t-shirt/top -> trouser (A -> B)", "a2b"), ("trouser -> t-shirt/top (B -> A)", "b2a"))
