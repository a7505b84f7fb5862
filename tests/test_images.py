"""core.images: grids, scatter plots and small plots without torchvision or matplotlib."""
import torch
from PIL import Image

from core.images import PALETTE, SHADES, Canvas, grid_picture, make_grid, save_grid, scatter_plot


def test_grid_places_each_image_and_keeps_white_gaps():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0)])   # black, grey, white
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.shape == (1, 2 * 5 + 1, 2 * 5 + 1) and grid.dtype == torch.uint8
    assert grid[0, 1, 1] == 0 and grid[0, 1, 6] == 128 and grid[0, 6, 1] == 255 and grid[0, 0, 0] == 255
    assert (grid[0, 6:10, 6:10] == 255).all()                  # the empty fourth cell stays white


def test_picture_enlarges_with_nearest_neighbour_and_saves_atomically(tmp_path):
    images = torch.rand(4, 3, 5, 5) * 2 - 1
    picture = grid_picture(images, 2, scale=3, padding=0)
    assert picture.size == (30, 30) and picture.mode == "RGB"
    assert len({picture.getpixel((x, y)) for x in range(3) for y in range(3)}) == 1     # one pixel became 3x3
    path = save_grid(images, tmp_path / "g.png", nrow=2, scale=2)
    assert Image.open(path).size == (2 * (2 * 7 + 2), 2 * (2 * 7 + 2)) and list(tmp_path.iterdir()) == [path]


def test_scatter_colours_points_by_class():
    points = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    picture = scatter_plot(points, torch.tensor([0, 1]), ["a", "b"], size=200)
    colours = {picture.getpixel((x, y)) for x in range(200) for y in range(200)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours     # tab10's first two


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
    assert canvas.pixel(0.25, 0.75) == (30.0, 30.0) and canvas.image.getpixel((30, 30)) == PALETTE[1]
