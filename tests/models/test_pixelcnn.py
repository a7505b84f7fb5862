"""core/models/pixelcnn.py and autoregressive.py, checked against references that cannot be argued with: the
receptive field is exactly the causal past (autograd: the gradient of pixel i's logits with respect to every input
j ≥ i is zero, and nonzero for every j < i in the gated network, while the plain one has its blind spot); the cached
fast path gives the full forward pass's logits; bits per dimension are the cross-entropies' sum, 8 exactly for a
uniform model, and the conditional model's unconditional likelihood is the exact mixture over classes."""
import dataclasses
import json
import math

import pytest
import torch

from core.config import TrainConfig
from core.data import Batch
from core.hub import load_model
from core.models.autoregressive import GatedPixelCNN, PlainPixelCNN, raster_loop
from core.models.pixelcnn import PixelCNN, PixelCNNConfig, embed, pixel_levels
from core.train import train

TINY = PixelCNNConfig(image_size=8, hidden=8, layers=3, num_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")      # (conftest.py)


def seen_inputs(network: torch.nn.Module, side: int) -> torch.Tensor:
    """(HW, HW) bool: entry [i, j] is True where pixel i's logits have a nonzero gradient with respect to input j."""
    torch.manual_seed(0)
    seen = torch.zeros(side * side, side * side, dtype=torch.bool)
    for i in range(side * side):
        x = torch.randn(1, 1, side, side, dtype=torch.double, requires_grad=True)
        network(x)[0, :, i // side, i % side].sum().backward()
        seen[i] = x.grad.flatten() != 0
    return seen


@pytest.mark.parametrize("kernel", [3, 5])
def test_the_gated_network_sees_exactly_the_causal_past(kernel):
    side = 6
    seen = seen_inputs(GatedPixelCNN(1, 4, 8, 6, kernel, 0).double(), side)
    past = torch.ones(side * side, side * side, dtype=torch.bool).tril(-1)       # j < i
    assert torch.equal(seen, past)                    # nothing from j ≥ i, everything from j < i: no blind spot


def test_the_plain_network_is_causal_and_has_the_blind_spot():
    side = 6
    seen = seen_inputs(PlainPixelCNN(1, 4, 8, 4, 3).double(), side)
    past = torch.ones(side * side, side * side, dtype=torch.bool).tril(-1)
    assert not (seen & ~past).any()                                              # causal
    row, col = 3, 1                                   # pixel (3, 1) never sees (2, 5), up and to its right
    assert seen[row * side + col, (row - 1) * side + 1] and not seen[row * side + col, (row - 1) * side + 5]


def test_a_mask_a_convolution_hides_the_centre_and_mask_b_shows_it():
    from core.models.autoregressive import MaskedConv2d
    a, b = MaskedConv2d("A", 1, 1, 3), MaskedConv2d("B", 1, 1, 3)
    assert a.mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.mask.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("kernel, classes", [(3, 0), (5, 3), (7, 3)])
def test_the_cached_fast_path_gives_the_full_passes_logits(kernel, classes):
    torch.manual_seed(0)
    network = GatedPixelCNN(1, 7, 8, 3, kernel, classes).double()
    values, labels = torch.randint(0, 7, (2, 6, 5)), (torch.tensor([0, 2]) if classes else None)
    lift = lambda v: (v.double() / 3 - 1)[:, None]
    full, cached = network(lift(values), labels), torch.zeros(2, 7, 6, 5, dtype=torch.double)

    def teacher(logits, row, col):                    # record the cached logits, write the known pixel
        cached[:, :, row, col] = logits
        return values[:, row, col]

    out = raster_loop(network, lift, torch.zeros_like(values), labels, teacher)
    assert torch.equal(out, values)
    torch.testing.assert_close(cached, full.float().double(), atol=1e-6, rtol=0)


def test_the_fast_and_the_reference_loop_draw_the_same_samples():
    model = PixelCNN(TINY)
    generator = lambda: torch.Generator().manual_seed(3)
    blank, labels = torch.zeros(4, 8, 8, dtype=torch.long), torch.tensor([0, 1, 2, 0])
    fast = model.fill(blank, 0, labels, 1.0, generator(), fast=True)
    reference = model.fill(blank, 0, labels, 1.0, generator(), fast=False)
    assert torch.equal(fast, reference)


def test_the_loop_reports_each_row_once_filled_and_can_be_stopped():
    """on_row sees rows 0 … H−1 in order, each already drawn (the rows below still blank), and the end result; an
    exception raised in it stops the loop (the sampler's stream stops a run this way)."""
    model, seen = PixelCNN(TINY), []
    record = lambda row, levels: seen.append((row, levels.clone()))
    done = model.sample(2, seed=4, on_row=record)
    assert [row for row, _ in seen] == list(range(8))
    assert torch.equal(seen[-1][1][:, None].float() / 127.5 - 1, done)
    assert all(torch.equal(levels[:, :row + 1], seen[-1][1][:, :row + 1]) and not levels[:, row + 1:].any()
               for row, levels in seen)

    def stop(row, levels):
        if row == 2:
            raise RuntimeError("stopped")
    with pytest.raises(RuntimeError, match="stopped"):
        model.sample(2, seed=4, on_row=stop)


def test_bits_per_dim_is_the_cross_entropy_and_a_uniform_model_scores_8():
    model = PixelCNN(dataclasses.replace(TINY, num_classes=0))
    torch.nn.init.zeros_(model.network.head[-1].weight), torch.nn.init.zeros_(model.network.head[-1].bias)
    images = torch.randint(0, 256, (3, 1, 8, 8)) / 127.5 - 1
    assert torch.allclose(model.bits_per_dim(images), torch.full((3,), 8.0))
    torch.manual_seed(1)
    model = PixelCNN(dataclasses.replace(TINY, num_classes=0))
    logits, levels = model.logits(pixel_levels(images)), pixel_levels(images)
    by_hand = -torch.log_softmax(logits, 1).gather(1, levels[:, None]).sum((1, 2, 3)) / (64 * math.log(2))
    torch.testing.assert_close(model.bits_per_dim(images), by_hand)


def test_the_unconditional_likelihood_is_the_mixture_over_classes():
    torch.manual_seed(0)
    model = PixelCNN(TINY)
    with torch.no_grad():
        for layer in model.network.layers:
            layer.class_bias.weight.normal_()
    images = torch.randint(0, 256, (2, 1, 8, 8)) / 127.5 - 1
    per_class = torch.stack([model.bits_per_dim(images, torch.full((2,), y)) for y in range(3)])   # (K, B)
    log2_p = torch.logsumexp(-per_class * 64 * math.log(2), 0) - math.log(3)
    torch.testing.assert_close(model.bits_per_dim(images), -log2_p / (64 * math.log(2)))
    assert (model.bits_per_dim(images) < per_class.max(0).values).all()         # the mixture beats the worst class


def test_levels_round_trip_and_the_input_scale():
    levels = torch.arange(256).view(1, 16, 16)
    assert torch.equal(pixel_levels(levels[:, None] / 127.5 - 1), levels)
    assert embed(levels).min() == -1 and embed(levels).max() == 1


def test_completion_keeps_the_known_rows_and_samples_are_seeded():
    model = PixelCNN(TINY)
    images = torch.randint(0, 256, (2, 1, 8, 8)) / 127.5 - 1
    done = model.complete(images, known_rows=4, per_image=3, seed=5, labels=torch.tensor([1, 2]))
    assert done.shape == (6, 1, 8, 8)
    assert torch.equal(done[:, :, :4], images.repeat_interleave(3, 0)[:, :, :4])
    assert not torch.equal(done[0, :, 4:], done[1, :, 4:])                       # different completions
    assert torch.equal(model.sample(3, seed=7), model.sample(3, seed=7))
    assert model.sample(3, seed=7).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("bad, match", [(dict(labels=torch.tensor([3, 0])), "labels must be"),
                                        (dict(temperature=0.0), "temperature"), (dict(n=0), "positive integer")])
def test_bad_requests_are_refused(bad, match):
    model = PixelCNN(TINY)
    with pytest.raises(ValueError, match=match):
        model.sample(**{"n": 2, **bad})
    with pytest.raises(ValueError, match="needs labels"):
        model.logits(torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="kernel"):
        PixelCNN(dataclasses.replace(TINY, kernel=4))
    with pytest.raises(ValueError, match="unconditional"):
        PixelCNN(dataclasses.replace(TINY, kind="plain"))


def test_a_short_run_improves_the_likelihood_and_the_hub_folder_loads(tmp_path):
    torch.manual_seed(0)
    model = PixelCNN(TINY)
    model.configure_optimizers(TrainConfig(lr=3e-3))
    images = torch.randint(0, 256, (16, 1, 8, 8)).clamp(100, 160) / 127.5 - 1
    batch = Batch(images, torch.arange(16) % 3)
    with torch.no_grad():
        before = float(model.bits_per_dim(images, batch.labels).mean())
    for step in range(30):
        model.training_step(batch, step)
    with torch.no_grad():
        after = float(model.bits_per_dim(images, batch.labels).mean())
    assert after < before - 1.0
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.bits_per_dim(images, batch.labels), model.bits_per_dim(images, batch.labels))


def test_the_loop_trains_it_and_reports_test_bits_per_dim(tmp_path):
    cfg = TrainConfig(dataset="digits", batch_size=32, max_steps=3, log_every=1, eval_size=16, checkpoint_every=0,
                      runs_dir=str(tmp_path), run_name="run", cpu=True)
    model = PixelCNN(PixelCNNConfig(image_size=8, hidden=4, layers=2))
    train(model, cfg, "pixelcnn")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    figures = [json.loads(line) for line in lines if "eval/bits_per_dim" in line]
    assert figures and 4.0 < figures[-1]["eval/bits_per_dim"] < 8.5          # an untrained model is near uniform
