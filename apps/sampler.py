"""genlab sampler: every model family in one Gradio app. `python apps/sampler.py` (or a Hugging Face Space with
app_file: apps/sampler.py).

Widgets and wiring only: each tab is built from a service's endpoint table (core/services/), and every model call
and every input check is in core.services. Models are the shipped checkpoints named in checkpoints/index.json (or
the manifest GENLAB_MANIFEST names); a model box also takes a Hub repo id such as `owner/name@revision`. Each event
has a stable api_name (docs/sampler.md). Events take their inputs unprocessed (preprocess=False) so that
core.services sees exactly what a browser or an API client sent and answers every bad value with its own message.
"""
import atexit
import inspect
import logging
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT) not in sys.path:    # a Space runs this file without installing the package
    sys.path.insert(0, str(ROOT))

import gradio as gr
import pandas as pd

from core.services import SERVICES, Admission, OutputFiles, RequestError, figures_markdown
from core.services.base import Choice, Endpoint, Flag, ModelChoice, Number, Sketch, Upload, model_names, share_cores

ROW = 4                        # controls per row
WORKERS = 2                    # share of the cores one model call gets (quick calls and diffusion runs go side by side)
EXAMPLES = ROOT / "apps" / "examples"
CSS = (".pixels .image-frame img {height: 112px; width: auto; margin-top: 28px; object-fit: contain; "
       "image-rendering: pixelated}")                        # 28 px uploads at 4x, below the label
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
FIGURES_NOTE = ("Figures from the model cards (for generators: 10k samples vs the test set, on the features of genlab's "
                "classifier at every depth; the off-manifold share is the fraction of samples less realistic than 99% "
                "of real images):\n\n")
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD     # (Gradio passes its extras only to such parameters)
REQUEST = inspect.Parameter("request", POSITIONAL, annotation=gr.Request)
log = logging.getLogger("genlab.sampler")


def as_gradio_error(name: str, exc: Exception) -> gr.Error:
    """A refused request (RequestError) logs one line and answers with its message; anything else logs its
    traceback once and answers with a message that names no server detail. Gradio prints neither again."""
    if isinstance(exc, RequestError):
        log.info("%s refused: %s", name, str(exc)[:200])
        return gr.Error(str(exc), print_exception=False)
    log.exception("%s failed", name)
    return gr.Error(f"the server could not answer this request ({type(exc).__name__}); it has been logged",
                    print_exception=False)


# ----------------------------------------------------------------------------------------------------- handlers
def special_arguments(args: tuple, keywords: dict) -> tuple[gr.Request | None, gr.Progress | None]:
    """The request and progress tracker Gradio adds to the inputs (by position or by name)."""
    given = [*args, *keywords.values()]
    return (next((a for a in given if isinstance(a, gr.Request)), None),
            next((a for a in given if isinstance(a, gr.Progress)), None))


class Handlers:
    """The functions behind one endpoint: the call (plain or streamed) and, for a costly endpoint, its admission.
    Each takes the endpoint's inputs under their keys (Gradio reads the names from the signature: the API's
    parameter names and where a refusal is shown)."""

    def __init__(self, service, endpoint: Endpoint, files: OutputFiles, admission: Admission):
        self.service, self.endpoint, self.files, self.admission = service, endpoint, files, admission
        self.keys = [i.key for i in endpoint.inputs]

    def signed(self, function, *extra: inspect.Parameter, name: str = ""):
        plain = [inspect.Parameter(key, POSITIONAL) for key in self.keys]
        function.__signature__ = inspect.Signature(plain + list(extra))
        # Gradio finds gr.Request by the function's type hints, which come from __annotations__, not the signature
        function.__annotations__ = {p.name: p.annotation for p in extra if p.annotation is not p.empty}
        function.__name__ = name or self.endpoint.api_name     # Gradio's api_name, even for a private event
        return function

    def call(self, values):
        """The service's method on the inputs: on the named model's service if the first input is a model."""
        if isinstance(self.endpoint.inputs[0], ModelChoice):
            return getattr(self.service.load(values[0]), self.endpoint.method)(*values[1:])
        return getattr(self.service, self.endpoint.method)(*values)

    def shown(self, result) -> list:
        """A method's result as Gradio outputs (a list, or the value of a single output): pictures as files written
        under unique names, None keeps what is shown."""
        result = result if isinstance(result, tuple) else (result,)
        write = {"picture": self.files.png, "animation": self.files.gif,
                 "loop": lambda frames: self.files.gif(frames, bounce=False)}
        shown = [gr.skip() if value is None else write[out.kind](value) if out.kind in write else value
                 for out, value in zip(self.endpoint.outputs, result)]
        return shown if len(shown) > 1 else shown[0]

    def plain(self):
        def run(*args):
            try:
                return self.shown(self.call(args[:len(self.keys)]))
            except Exception as exc:
                raise as_gradio_error(self.endpoint.api_name, exc) from exc
        return self.signed(run)

    def streamed(self):
        def run(*args, **special):
            request, progress = special_arguments(args, special)
            try:
                for fraction, result in self.call(args[:len(self.keys)]):
                    if progress is not None:
                        progress(fraction)
                    yield self.shown(result)
            except Exception as exc:
                raise as_gradio_error(self.endpoint.api_name, exc) from exc
            finally:
                if self.endpoint.cost and request is not None:
                    self.admission.release(request.session_hash or "")
        return self.signed(run, REQUEST, inspect.Parameter("progress", POSITIONAL, default=gr.Progress()))

    def admit(self):
        """Runs before the request is queued (Gradio's validator): its cost, and the client's share of the queue. A
        refusal is Gradio's validation error carrying our message, shown on the input at fault (the first input
        where no single one is: the queue share)."""
        def validate(*args, **special):
            request, _ = special_arguments(args, special)
            message, field = "", None
            try:
                getattr(self.service, self.endpoint.cost)(*args[:len(self.keys)])
                self.admission.admit(request.session_hash if request and request.session_hash else "")
            except Exception as exc:
                message = as_gradio_error(f"{self.endpoint.api_name} admission", exc).message
                field = getattr(exc, "field", None)
            shown_on = field if field in self.keys else self.keys[0]
            return [gr.validate(not message or key != shown_on, message) for key in self.keys]
        return self.signed(validate, REQUEST)

    def explain(self, noted: bool):
        """The browser's view of a refused cost: Gradio shows a validator's message only in a small box on one input,
        so the same check runs beside it and answers with a toast and (`noted`) in the tab's status line. Private; the
        refusal itself, for every client, is the validator's (which also logs it)."""
        def explain(*args):
            try:
                getattr(self.service, self.endpoint.cost)(*args[:len(self.keys)])
            except RequestError as exc:
                gr.Warning(str(exc), duration=None)
                return f"**Not run:** {exc}" if noted else None
            return gr.skip() if noted else None
        return self.signed(explain, name=f"{self.endpoint.api_name}_refusal")


# ------------------------------------------------------------------------------------------------------ widgets
def input_widget(spec, settings: dict):
    """The Gradio component of an input (`settings`: what the model shown makes of it, from Service.follow)."""
    if isinstance(spec, ModelChoice):
        names = model_names(spec.family)          # (a manifest may list no model of a family: type a Hub id)
        value = spec.default if spec.default in names else (names or [None])[0]
        return gr.Dropdown(names, value=value, label=spec.label, allow_custom_value=True,
                           info="a shipped checkpoint, or type a Hub repo id (owner/name@revision)")
    options = {"value": spec.default, "label": spec.label, **settings}
    if isinstance(spec, Number) and spec.box:
        return gr.Number(precision=0, minimum=spec.low, maximum=spec.high, **options)
    if isinstance(spec, Number):
        return gr.Slider(**{"minimum": spec.low, "maximum": spec.high, "step": spec.step, **options})
    if isinstance(spec, Choice):
        widget = gr.Radio if spec.radio else gr.Dropdown
        return widget(**{"choices": list(spec.choices), **options})
    if isinstance(spec, Flag):
        return gr.Checkbox(**options)
    if isinstance(spec, Sketch):
        return gr.Sketchpad(label=spec.label, type="filepath", format="png", canvas_size=(280, 280), height=320,
                            brush=gr.Brush(default_size=8, colors=["#000000"], color_mode="fixed"), layers=False)
    if isinstance(spec, Upload):
        shown = EXAMPLES / spec.examples / spec.default
        return gr.Image(label=spec.label, type="filepath", sources=["upload", "clipboard"], height=200,
                        elem_classes="pixels", value=str(shown) if shown.is_file() else None)
    raise TypeError(f"no widget for {type(spec).__name__}")


def output_widget(spec):
    if spec.kind == "text":
        return gr.Markdown()
    if spec.kind == "scores":
        return gr.Label(label=spec.label)
    return gr.Image(label=spec.label, type="filepath", format="png", interactive=False, height=spec.height)


def output_widgets(specs) -> list:
    """Notes above, pictures in a row, scores in a row below; returned in the endpoint's order."""
    made = {}
    for kinds in (("text",), ("picture", "animation", "loop"), ("scores",)):
        chosen = [k for k, spec in enumerate(specs) if spec.kind in kinds]
        if chosen:
            with gr.Row():
                made.update({k: output_widget(specs[k]) for k in chosen})
    return [made[k] for k in range(len(specs))]


def upload_examples(spec: Upload, widgets: dict) -> None:
    files = sorted(str(path) for path in (EXAMPLES / spec.examples).glob("*.png"))
    if not files:
        return
    label = f"{spec.gallery}, for {spec.label}"        # which box an example fills: a tab may have two
    if spec.selects:
        other, value = spec.selects
        gr.Examples([[path, value] for path in files], inputs=[widgets[spec.widget_name], widgets[other]], label=label,
                    examples_per_page=10, visible_columns=[0])
    else:
        gr.Examples(files, inputs=widgets[spec.widget_name], label=label, examples_per_page=10)


def new_inputs(endpoint: Endpoint, widgets: dict, settings: dict) -> None:
    """The endpoint's inputs that the tab does not have yet: pictures side by side, then a row of controls."""
    new = [i for i in endpoint.inputs if i.widget_name not in widgets]
    pictures = [i for i in new if isinstance(i, (Upload, Sketch))]
    if pictures:
        with gr.Row():
            for spec in pictures:
                with gr.Column():
                    widgets[spec.widget_name] = input_widget(spec, {})
    controls = [i for i in new if i not in pictures]
    for row in range(0, len(controls), ROW):
        with gr.Row():
            for spec in controls[row:row + ROW]:
                widgets[spec.widget_name] = input_widget(spec, settings.get(spec.widget_name, {}))
    for spec in pictures:
        if isinstance(spec, Upload):
            upload_examples(spec, widgets)
        sets = lambda event, value: event(lambda: value, None, widgets[spec.selects[0]], api_visibility="private")
        if isinstance(spec, Sketch) and spec.selects:
            sets(widgets[spec.widget_name].change, spec.selects[1])
        if isinstance(spec, Upload) and spec.upload_selects:
            sets(widgets[spec.widget_name].upload, spec.upload_selects)


def wire(service, endpoint: Endpoint, widgets: dict, button, outputs: list, files, admission) -> None:
    handlers = Handlers(service, endpoint, files, admission)
    triggers = [button.click] + ([widgets[endpoint.release].release] if endpoint.release else [])
    inputs = [widgets[i.widget_name] for i in endpoint.inputs]
    if endpoint.cost:    # wired first: the browser runs no later listener of a trigger whose validator refused
        status = [out for out, spec in zip(outputs, endpoint.outputs) if spec.kind == "text"][:1]
        gr.on(triggers, handlers.explain(bool(status)), inputs, status or None, preprocess=False,
              api_visibility="private", show_progress="hidden", concurrency_limit=None, concurrency_id="explain")
    event = gr.on(triggers, handlers.streamed() if endpoint.stream else handlers.plain(),
                  inputs, outputs, api_name=endpoint.api_name, preprocess=False,
                  concurrency_limit=endpoint.limit, concurrency_id=endpoint.queue,
                  validator=handlers.admit() if endpoint.cost else None)
    cleared = [None] * len(outputs)      # a failed call leaves no earlier answer under its "Error" pill
    event.failure(lambda: cleared if len(cleared) > 1 else None, None, outputs, api_visibility="private",
                  show_progress="hidden")


def following(service, widgets: dict, keys: list[str]) -> None:
    """The tab's widgets follow its model box (Service.follow): private, not an endpoint."""
    def update(spec):
        settings = service.follow(spec)
        updates = [gr.update(**settings[key]) if key in settings else gr.skip() for key in keys]
        return updates if len(updates) > 1 else updates[0]
    widgets["model"].change(update, widgets["model"], [widgets[key] for key in keys], api_visibility="private")


def tab(service, files: OutputFiles, admission: Admission) -> None:
    model = next((i for e in service.endpoints for i in e.inputs if i.widget_name == "model"), None)
    settings = service.follow(model.default) if model else {}
    widgets = {}
    for k, endpoint in enumerate(service.endpoints):
        new_inputs(endpoint, widgets, settings)
        button = gr.Button(endpoint.button, variant="primary" if k == 0 else "secondary")
        outputs = output_widgets(endpoint.outputs)
        wire(service, endpoint, widgets, button, outputs, files, admission)
    if settings:
        following(service, widgets, list(settings))
    chart = service.chart()
    if chart:
        gr.LinePlot(pd.DataFrame(chart["rows"]), x=chart["x"], y=chart["y"], color=chart["colour"],
                    title=chart["title"], y_lim=[0, 1], height=300)
    with gr.Accordion("About", open=False):
        gr.Markdown(service.about, latex_delimiters=LATEX)
        table = figures_markdown(service.model_names())
        if table:
            gr.Markdown(FIGURES_NOTE + table)


def build(files: OutputFiles, admission: Admission) -> gr.Blocks:
    with gr.Blocks(title="genlab sampler", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# genlab sampler\nGenerative models trained from scratch on Fashion-MNIST (28x28), shipped in "
                    "this repository. Every button is also an API endpoint (`gradio_client`); see the README.")
        for service in SERVICES:
            with gr.Tab(service.tab):
                tab(service, files, admission)
    return demo.queue(max_size=64)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    share_cores(WORKERS)
    files = OutputFiles()
    atexit.register(files.close)                              # the answers' files go with the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))      # a normal stop runs the atexit clean-up
    build(files, Admission()).launch(css=CSS, max_file_size="10mb", allowed_paths=[str(files.folder), str(EXAMPLES)])


if __name__ == "__main__":
    main()
