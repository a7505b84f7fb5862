"""core/services/streaming.py: a sampler run in a worker thread, streamed step by step: every step in order then the
result, the run stopped at its next step when nobody reads the stream any more, a run over its budget refused, and
the run's own error raised in the request."""
import threading
import time

import pytest
import torch

from core.requests import RequestError
from core.services.streaming import streamed


def counting(steps: int, done: threading.Event, pause: float = 0.0):
    """A sampler of `steps` steps that reports each one (a tensor holding the step) and returns the last."""
    def run(on_step):
        try:
            for step in range(steps):
                time.sleep(pause)
                on_step(step, torch.tensor([step]))
            return torch.tensor([steps])
        finally:
            done.set()
    return run


def test_every_step_in_order_then_the_result():
    done = threading.Event()
    events = list(streamed(counting(5, done), budget_s=30))
    assert [step for step, _ in events] == [0, 1, 2, 3, 4, None]
    assert [int(value) for _, value in events] == [0, 1, 2, 3, 4, 5] and done.is_set()


def test_a_stream_nobody_reads_stops_its_worker_at_its_next_step():
    done, seen = threading.Event(), []
    run = counting(1000, done, pause=0.005)
    stream = streamed(lambda on_step: run(lambda step, value: seen.append(step) or on_step(step, value)), 30)
    assert next(stream)[0] == 0
    stream.close()                                                   # the client left
    assert done.wait(30) and len(seen) < 1000


def test_a_run_over_its_budget_is_refused_and_the_runs_own_error_is_raised():
    with pytest.raises(RequestError, match="stopped after 0 s: ask for fewer images"):
        list(streamed(lambda on_step: time.sleep(1), budget_s=0.01))

    def broken(on_step):
        on_step(0, torch.zeros(1))
        raise ValueError("the model broke")
    with pytest.raises(ValueError, match="the model broke"):
        list(streamed(broken, budget_s=30))
