import diffusers
import pytest
import torch

from core.models.unet import UNet, timestep_embedding


def randomize_output(net: UNet) -> UNet:
    """The last conv starts at zero (ε̂ = 0); give it weights so the output depends on everything before it."""
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("size", (8, 28, 32))
def test_output_has_the_input_shape(size):
    net = randomize_output(UNet(channels=(16, 32, 32)))
    x = torch.randn(3, 1, size, size)
    assert net(x, torch.tensor([0, 500, 999])).shape == x.shape


@pytest.mark.parametrize("channels,layers", [((32, 64, 128), 1), ((16, 32), 2)])
def test_same_parameter_count_as_diffusers_unet2dmodel(channels, layers):
    """The layout follows UNet2DModel block for block, so the throughput benchmark compares equal sizes."""
    ours = UNet(channels=channels, layers_per_block=layers)
    ref = diffusers.UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=channels,
                                layers_per_block=layers, norm_num_groups=8, attention_head_dim=32,
                                down_block_types=("DownBlock2D",) * (len(channels) - 1) + ("AttnDownBlock2D",),
                                up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(channels) - 1))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_timestep_and_label_change_the_output():
    net = randomize_output(UNet(channels=(16, 32), num_classes=3)).eval()
    x = torch.randn(2, 1, 8, 8)
    base = net(x, torch.tensor([10, 10]), torch.tensor([0, 0]))
    assert not torch.allclose(base, net(x, torch.tensor([900, 900]), torch.tensor([0, 0])))
    assert not torch.allclose(base, net(x, torch.tensor([10, 10]), torch.tensor([2, 2])))
    torch.testing.assert_close(net(x, torch.tensor([10, 10])), net(x, torch.tensor([10, 10]), torch.tensor([3, 3])))


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))     # cos 0 = 1, sin 0 = 0
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(1.0)))         # ω_0 = 1
    assert emb.shape == (2, 8)
