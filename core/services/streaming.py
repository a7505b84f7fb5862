"""Streaming a sequential sampler: the run happens in a worker thread that reports every step (a PixelCNN's row, a
VQ-VAE prior's code row, a Langevin step), so the picture fills in while the user watches; the run stops at its
next step when the client leaves (the generator is closed) or when it passes its wall-time budget."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

import torch

from core.requests import RequestError


class Stopped(Exception):
    """Raised in the worker's step callback to end a run nobody waits for."""


def streamed(run: Callable, budget_s: float) -> Iterator[tuple[int | None, torch.Tensor]]:
    """Run `run(on_step)` (a sampling call that calls on_step(step, tensor so far)) in a worker thread; yield
    (step, a copy of that tensor) after each step, then (None, its result). Closing the generator or passing
    `budget_s` stops the worker at its next step; an exception in the run is raised here."""
    events, stop, start = queue.Queue(), threading.Event(), time.monotonic()

    def on_step(step: int, value: torch.Tensor) -> None:
        if stop.is_set():
            raise Stopped
        events.put((step, value.cpu().clone()))

    def work() -> None:
        try:
            events.put((None, run(on_step)))
        except BaseException as exc:             # handed to the generator, which raises it in the request
            events.put((None, exc))

    threading.Thread(target=work, name="sampler-run", daemon=True).start()
    try:
        while True:
            try:
                step, value = events.get(timeout=max(budget_s - (time.monotonic() - start), 0.01))
            except queue.Empty:
                raise RequestError(f"stopped after {budget_s:.0f} s: ask for fewer images") from None
            if isinstance(value, BaseException):
                raise value
            yield step, value
            if step is None:
                return
    finally:
        stop.set()
