"""Autoregressive image models: PixelCNN (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks", Sec. 3.5) and
Gated PixelCNN (van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN Decoders"), the networks and
the pixel-by-pixel sampling loop that every autoregressive family here shares (core/models/pixelcnn.py over 8-bit
pixels, core/models/vqvae.py over a grid of codes).

An image x of H·W discrete values (raster order i = 1 … HW) factorises exactly (2016a, Eq. 1):
    p(x | y) = Π_i p(x_i | x_1, …, x_{i−1}, y),
each factor a categorical over the values, read from the network's logits at pixel i. The network sees only the
causal past, so one forward pass gives every factor of a known image (training, likelihood), and sampling draws the
pixels one at a time.

    plain   masked convolutions (2016a, Fig. 4): a k×k kernel whose weights at and after the centre are zero (mask
            A, the first layer) or after the centre only (mask B, every later layer). Stacking them leaves a blind
            spot: a pixel never sees the region up and to its right (2016b, Fig. 1).
    gated   a vertical stack (every row above, all of their columns) and a horizontal stack (the pixels to the left
            in this row), joined once per layer by a 1x1 link v -> h (2016b, Fig. 2): no blind spot. Each layer's
            units are gated (2016b, Eq. 2-4, the class embedding V y added before the gate):
                y = tanh(W_f ∗ x + V_f y) ⊙ σ(W_g ∗ x + V_g y)
            The vertical convolution has a (k//2 + 1) × k kernel over rows r − k//2 … r; its output is shifted
            down one row before the link, so the horizontal stack at row r sees rows < r only. The horizontal
            convolution has a 1 × (k//2 + 1) kernel over columns c − k//2 … c (the first layer's input is shifted
            right one column, so it sees columns < c: mask A); it has a residual connection from layer 2 on.

Fast generation (Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models"): sampling
pixel i needs only what changed since pixel i − 1. `GatedPixelCNN.start` keeps each layer's inputs; `next_row`
computes the vertical stack's row r − 1 once row r − 1 is known, and `pixel_logits` runs the horizontal stack at one
pixel from the k//2 + 1 cached columns to its left. A full image costs one forward pass's arithmetic instead of HW
of them. `tests/models/test_pixelcnn.py` checks these logits against the full forward pass. (The plain stack's
blind-spot network is kept for the receptive-field test and the lecture; it samples through the reference loop.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gate(x: Tensor) -> Tensor:
    """tanh(a) ⊙ σ(b) for x = [a, b] along channels (2016b, Eq. 2)."""
    a, b = x.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


class MaskedConv2d(nn.Conv2d):
    """A k×k convolution that sees only the raster past: mask A hides the centre and everything after it, mask B
    everything after the centre (2016a, Sec. 3.5 and Fig. 4; one input channel group, so no colour masks)."""

    def __init__(self, mask: str, in_channels: int, out_channels: int, kernel: int):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        centre = kernel // 2
        allowed = torch.ones(kernel, kernel)
        allowed[centre, centre + (mask == "B"):] = 0
        allowed[centre + 1:] = 0
        self.register_buffer("mask", allowed, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PlainPixelCNN(nn.Module):
    """2016a's PixelCNN: a mask-A k×k layer, residual blocks of mask-B convolutions, 1x1 layers to the logits."""

    def __init__(self, in_channels: int, categories: int, hidden: int, layers: int, kernel: int):
        super().__init__()
        self.first = MaskedConv2d("A", in_channels, hidden, 7)
        self.blocks = nn.ModuleList(MaskedConv2d("B", hidden, hidden, kernel) for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, categories, 1))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.first(x)
        for block in self.blocks:
            h = h + block(F.relu(h))
        return self.head(h)


class GatedLayer(nn.Module):
    """One layer of both stacks (2016b, Fig. 2). `first`: no residual, and the horizontal input is shifted right."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, num_classes: int, first: bool):
        super().__init__()
        self.half, self.first = kernel // 2, first
        self.vertical = nn.Conv2d(in_channels, 2 * hidden, (self.half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * hidden, (1, self.half + 1))
        self.link = nn.Conv2d(2 * hidden, 2 * hidden, 1)                 # v -> h, after the one-row shift
        self.out = nn.Conv2d(hidden, hidden, 1)
        self.class_bias = nn.Embedding(num_classes, 4 * hidden) if num_classes else None

    def biases(self, labels: Tensor | None) -> tuple[Tensor | float, Tensor | float]:
        """V_v y and V_h y, (B, 2h, 1, 1) each (0 for an unconditional network)."""
        if self.class_bias is None:
            return 0.0, 0.0
        return self.class_bias(labels)[:, :, None, None].chunk(2, 1)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Both stacks on whole images (training, likelihood). v, h: (B, C, H, W)."""
        bias_v, bias_h = self.biases(labels)
        v_pre = self.vertical(F.pad(v, (self.half, self.half, self.half, 0))) + bias_v   # rows r − k//2 … r
        v_down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]                                   # row r holds row r − 1
        h_in = F.pad(h, (1, 0))[:, :, :, :-1] if self.first else h                        # mask A: columns < c
        h_pre = self.horizontal(F.pad(h_in, (self.half, 0))) + self.link(v_down) + bias_h
        h_out = self.out(gate(h_pre))
        return gate(v_pre), h_out if self.first else h + h_out


@dataclass
class Cache:
    """What generation keeps. vertical[l]: layer l's vertical input so far, (B, C_l, H, W). row[l]: layer l's
    horizontal input along the current row, channels last and zero-padded on the left, (B, pad + W, C_l).
    link[l]: the link term plus the class bias of the horizontal stack for the current row, (B, W, 2h). matrices[l]:
    layer l's horizontal kernel and 1x1 output as matrices, read by F.linear (a 1 x (k//2 + 1) convolution at one
    pixel is a matrix product; oneDNN's convolution costs a millisecond per call on shapes this small)."""
    vertical: list[Tensor]
    row: list[Tensor]
    link: list[Tensor]
    matrices: list[tuple[Tensor, Tensor]]
    biases: list[tuple[Tensor | float, Tensor | float]]
    pad: int


class GatedPixelCNN(nn.Module):
    """2016b's network: L gated layers of both stacks, then ReLU, 1x1, ReLU, 1x1 to `categories` logits per pixel."""

    def __init__(self, in_channels: int, categories: int, hidden: int, layers: int, kernel: int, num_classes: int):
        super().__init__()
        if kernel % 2 == 0 or layers < 1:
            raise ValueError(f"kernel must be odd and layers at least 1, got kernel {kernel}, layers {layers}")
        self.layers = nn.ModuleList(GatedLayer(in_channels if i == 0 else hidden, hidden, kernel, num_classes, i == 0)
                                    for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, categories, 1))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, C_in, H, W) inputs -> (B, categories, H, W) logits of p(x_i | x_<i, y)."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    # ------------------------------------------------------------------------------------------- fast generation
    def start(self, shape: tuple[int, ...], labels: Tensor | None, like: Tensor) -> Cache:
        """An empty cache for inputs of `shape` (B, C_in, H, W) (`like` gives the dtype and device)."""
        b, _, height, width = shape
        channels = [shape[1]] + [layer.out.out_channels for layer in self.layers]
        pad = self.layers[0].half + 1
        matrices = [(layer.horizontal.weight.permute(0, 2, 3, 1).flatten(1), layer.out.weight.flatten(1))
                    for layer in self.layers]                       # (2h, C, 1, k') -> (2h, k'·C), columns then C
        cache = Cache([like.new_zeros(b, c, height, width) for c in channels],
                      [like.new_zeros(b, pad + width, c) for c in channels], [], matrices,
                      [layer.biases(labels) for layer in self.layers], pad)
        self.set_links(cache, [like.new_zeros(b, 2 * c, 1, width) for c in channels[1:]])
        return cache

    def set_links(self, cache: Cache, v_pre: list[Tensor]) -> None:
        """The current row's link terms from each layer's vertical pre-activations of the row above, (B, 2h, 1, W);
        zeros above row 0, where the full pass pads with zeros (the link's bias remains). The class bias and the
        horizontal convolution's bias are added here, once per row."""
        cache.link = [(layer.link(v) + bias_h + layer.horizontal.bias[:, None, None])[:, :, 0].transpose(1, 2).contiguous()
                      for layer, v, (_, bias_h) in zip(self.layers, v_pre, cache.biases)]

    def next_row(self, cache: Cache, row: int, above: Tensor) -> None:
        """Before row `row` is generated: store the input row above, `above` (B, C_in, 1, W), run the vertical
        stack's row − 1 through every layer, and start the horizontal stack's row."""
        cache.vertical[0][:, :, row - 1:row] = above
        v_pre = []
        for l, layer in enumerate(self.layers):
            top = row - 1 - layer.half                       # rows top … row − 1 of the layer's input, zeros above 0
            window = F.pad(cache.vertical[l][:, :, max(top, 0):row], (layer.half, layer.half, max(-top, 0), 0))
            v_pre.append(layer.vertical(window) + cache.biases[l][0])                  # (B, 2h, 1, W)
            cache.vertical[l + 1][:, :, row - 1:row] = gate(v_pre[-1])
        self.set_links(cache, v_pre)
        for buffer in cache.row:
            buffer.zero_()

    def pixel_logits(self, cache: Cache, row: int, col: int, left: Tensor | None) -> Tensor:
        """The logits of pixel (row, col), (B, categories), from the cache; `left` (B, C_in, 1, 1) is the input at
        (row, col − 1), None at col = 0. The same sums as the full pass, as matrix products at one pixel."""
        at = cache.pad + col                                 # column col in the padded row buffers
        if left is not None:
            cache.row[0][:, at - 1] = left[:, :, 0, 0]
        for l, layer in enumerate(self.layers):
            end = at if layer.first else at + 1              # the first layer sees columns < col (mask A)
            window = cache.row[l][:, end - layer.half - 1:end].flatten(1)               # (B, k'·C)
            kernel, out = cache.matrices[l]
            h_pre = torch.addmm(cache.link[l][:, col], window, kernel.t())
            h_out = F.linear(gate(h_pre), out, layer.out.bias)
            cache.row[l + 1][:, at] = h_out if layer.first else h_out + cache.row[l][:, at]
        _, first, _, last = self.head
        return F.linear(F.relu(F.linear(F.relu(cache.row[-1][:, at]), first.weight.flatten(1), first.bias)),
                        last.weight.flatten(1), last.bias)


def raster_loop(network: nn.Module, embed, values: Tensor, labels: Tensor | None, draw, fast: bool = True,
                on_row=None) -> Tensor:
    """Fill `values` (B, H, W) of category indices in raster order (2016a, Sec. 2). At each pixel,
    `draw(logits, row, col)` returns the (B,) indices to write there: a sample, or a known pixel (completion,
    decoding). `embed(values)` turns indices (B, H', W') into the network's input (B, C_in, H', W').
    `fast`: the cached path of a `GatedPixelCNN`; else the reference, one full forward pass per pixel (HW times the
    work; any network). `on_row(row, values)`, if given, is called after each row is filled (to show progress;
    it may raise to stop the loop)."""
    values = values.clone()
    height, width = values.shape[1:]
    fast = fast and isinstance(network, GatedPixelCNN)
    cache = network.start(embed(values).shape, labels, embed(values[:1, :1, :1])) if fast else None
    for row in range(height):
        if fast and row > 0:
            network.next_row(cache, row, embed(values[:, row - 1:row]))
        for col in range(width):
            if fast:
                left = embed(values[:, row:row + 1, col - 1:col]) if col > 0 else None
                logits = network.pixel_logits(cache, row, col, left)
            else:
                logits = network(embed(values), labels)[:, :, row, col]
            values[:, row, col] = draw(logits.float(), row, col)
        if on_row is not None:
            on_row(row, values)
    return values
