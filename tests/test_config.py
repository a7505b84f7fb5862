"""core.config: dataclasses that become CLI options and JSON files."""
import argparse
import json
from dataclasses import dataclass

import pytest

from core.config import TrainConfig, add_options, from_json, option, pick_options, save_json, to_json


@dataclass(frozen=True)
class Toy:
    width: int = option(8, "channels")
    rate: float = option(0.5, "a rate")
    name: str = option("a", "one of a, b", choices=("a", "b"))
    flag: bool = option(False, "a switch")
    limit: int | None = option(None, "optional")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, Toy, "toy")
    return parser.parse_args(argv)


def test_options_are_typed_and_given_ones_override_the_base():
    toy = pick_options(parse(["--width", "16", "--no-flag", "--limit", "3"]), Toy)
    assert toy == Toy(width=16, flag=False, limit=3)
    base = Toy(rate=0.1, name="b")
    assert pick_options(parse(["--width", "4"]), Toy, base) == Toy(width=4, rate=0.1, name="b")
    with pytest.raises(SystemExit):
        parse(["--name", "c"])                             # choices are enforced
    with pytest.raises(SystemExit):
        parse(["--width", "2.5"])


def test_json_round_trip_ignores_unknown_keys_and_writes_atomically(tmp_path):
    cfg = TrainConfig(lr=3e-4, mixed_precision="bf16")
    data = to_json(cfg)
    assert data["_class_name"] == "TrainConfig" and from_json(TrainConfig, {**data, "removed_option": 1}) == cfg
    save_json(data, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == data and [p.name for p in tmp_path.iterdir()] == ["c.json"]


@pytest.mark.parametrize("flag, value, message", [("--batch-size", "0", "must be at least 1, got 0"),
                                                  ("--max-steps", "-5", "must be at least 0, got -5"),
                                                  ("--lr", "nan", "must be at least 0.0, got nan"),
                                                  ("--eval-size", "0", "must be at least 1")])
def test_numeric_options_are_bounded_at_parse_time_and_in_python(flag, value, message, capsys):
    """A bad number is refused before anything runs (it once gave a ZeroDivisionError, or a 'finished' run of -5
    steps), with the bound its field declares; a TrainConfig built in Python is held to the same bounds."""
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig, "training")
    with pytest.raises(SystemExit):
        parser.parse_args([flag, value])
    assert f"argument {flag}: {message}" in capsys.readouterr().err
    name = flag[2:].replace("-", "_")
    with pytest.raises(ValueError, match=f"{name} {message}"):
        TrainConfig(**{name: type(getattr(TrainConfig(), name))(value)})
    assert parser.parse_args([flag, "1"]) is not None                       # a value in range passes
