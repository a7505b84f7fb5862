"""Model cards: README.md of a checkpoint folder, rendered from the folder's own files by huggingface_hub.

    config.json     which family (its `card_description`, `pipeline_tag`)
    training.json   dataset, steps, seconds, hardware, images/s, the command that trained it
    eval.json       scalar figures (Hub model-index results) and Markdown tables / figures from bench scripts
    samples.png     the last logged sample grid

The YAML header is `ModelCardData` with `EvalResult`s, so the Hub lists the figures; the body is the Jinja template
below, filled by `ModelCard.from_template`.
"""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from core.families import class_named

TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

{{ description }}

## How it was trained

| | |
|---|---|
{% for key, value in training_rows %}| {{ key }} | {{ value }} |
{% endfor %}
{%- if command %}
```bash
{{ command }}
```
{% endif %}
{%- if notes %}
{{ notes }}
{% endif %}
{%- if scores %}
## Evaluation ({{ dataset }} test set)

| metric | value |
|---|---|
{% for key, value in scores %}| {{ key }} | {{ "%.4g" | format(value) }} |
{% endfor %}
{%- endif %}
{%- for title, table in tables %}
### {{ title }}

{{ table }}
{% endfor %}
{%- if samples %}
## Samples

{{ samples_caption }}

![samples](samples.png)
{% endif %}
{%- for image, caption in figures %}
### {{ caption }}

![{{ image.rsplit(".", 1)[0] }}]({{ image }})
{% endfor %}
## Use

```python
from core.hub import load_model

model = load_model("{{ name }}")  # or a local folder such as checkpoints/{{ folder }}
```
"""
TRAINING_KEYS = ("dataset", "steps", "seconds", "hardware", "images_per_s")


def write_model_card(folder: Path, repo_id: str | None = None) -> Path:
    """README.md from the folder's config.json, training.json, eval.json and samples.png (see the module doc)."""
    folder = Path(folder)
    read = lambda name: json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
    config, training, evaluation = read("config.json"), read("training.json"), read("eval.json")
    cls = class_named(config["_class_name"])
    dataset = training.get("dataset", "fashion-mnist")
    name = repo_id or f"genlab/{folder.name}"
    scores = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    results = [EvalResult(task_type=cls.pipeline_tag, dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                          metric_type=k, metric_name=k, metric_value=v) for k, v in scores.items()]
    data = ModelCardData(library_name="genlab", license="mit", pipeline_tag=cls.pipeline_tag, datasets=[dataset],
                         tags=["genlab", "pytorch", "from-scratch", training.get("family", "")],
                         model_name=name, eval_results=results or None)
    card = ModelCard.from_template(
        data, template_str=TEMPLATE, name=name, folder=folder.name, description=cls.card_description.strip(),
        dataset=dataset, command=training.get("command"), notes=training.get("notes"),
        training_rows=[(k.replace("_", " "), training[k]) for k in TRAINING_KEYS if training.get(k) is not None],
        scores=list(scores.items()), tables=list(evaluation.get("tables", {}).items()),
        samples=(folder / "samples.png").is_file(), samples_caption=cls.card_samples_caption,
        figures=[(image, caption) for image, caption in evaluation.get("figures", {}).items()
                 if (folder / image).is_file()])
    (folder / "README.md").write_text(str(card).rstrip("\n") + "\n")
    return folder / "README.md"
