"""What can be checked of the Space and the Docker image without Docker or the Hub: the README's Spaces front matter
and the Dockerfile agree with the pins and with how the tests start the app (`sampler_url` runs the same command)."""
import re
import shlex

import gradio
import yaml

from conftest import ROOT


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Spaces YAML front matter"
    return yaml.safe_load(match.group(1))


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip() == package:
            return line.split("==")[1].split("#")[0].strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_space_front_matter_names_the_pinned_gradio_and_the_app():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned("gradio") == gradio.__version__
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "apps/sampler.py"
    assert {"title", "emoji", "python_version"} <= set(meta)
    base = dict(dockerfile())["FROM"]
    assert base.startswith(f"python:{meta['python_version']}-"), base      # one Python for the Space and the image


def test_dockerfile_runs_the_sampler_on_7860_as_a_user_with_the_checkpoints():
    steps = dockerfile()
    instructions = [name for name, _ in steps]
    args = {name: value for name, value in steps}
    assert shlex.split(args["CMD"].replace("[", "").replace("]", "").replace(",", " ")) == ["python", "apps/sampler.py"]
    env = dict(item.split("=", 1) for item in shlex.split(args["ENV"]))
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0" and env["GRADIO_SERVER_PORT"] == "7860" and args["EXPOSE"] == "7860"
    assert args["USER"] not in ("root", "0") and instructions.index("USER") > instructions.index("RUN")
    assert "-r requirements.txt" in " ".join(v for n, v in steps if n == "RUN")
    assert ("COPY", "--chown=user . .") in steps                                   # checkpoints/ included ...
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not any(pattern.startswith("checkpoints") or pattern.startswith("apps") for pattern in ignored)  # ... kept
