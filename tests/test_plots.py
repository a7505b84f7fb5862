import torch

from core.plots import COLORS, SHADES, Canvas


def test_regions_shade_each_side_of_a_classifier():
    canvas = Canvas((0, 1), (0, 1), size=100, margin=10).regions(lambda points: (points[:, 0] > 0.5).long())
    assert canvas.image.getpixel((20, 50)) == SHADES[0] and canvas.image.getpixel((80, 50)) == SHADES[1]


def test_a_line_is_drawn_only_inside_the_plot_and_points_where_they_lie():
    canvas = Canvas((0, 1), (0, 1), size=100, margin=10)
    canvas.line(torch.tensor([1.0, -1.0]), 0.0, color=(255, 0, 0))           # x = y: the diagonal
    assert canvas.image.getpixel((50, 50)) == (255, 0, 0) and canvas.image.getpixel((5, 95)) == (255, 255, 255)
    canvas.line(torch.tensor([1.0, 0.0]), -5.0)                               # x = 5 misses the plot: nothing
    assert canvas.image.getpixel((90, 50)) == (255, 255, 255)
    canvas.points(torch.tensor([[0.25, 0.75]]), torch.tensor([1]))
    assert canvas.pixel(0.25, 0.75) == (30.0, 30.0) and canvas.image.getpixel((30, 30)) == COLORS[1]
