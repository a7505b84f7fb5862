import diffusers
import pytest
import torch

from core.models import unet
from core.models.unet import GroupNorm, SelfAttention, UNet, timestep_embedding


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


@pytest.mark.parametrize("channels_last", (False, True))
def test_written_out_attention_matches_the_fused_kernel_values_and_gradients(monkeypatch, channels_last):
    """In training, up to EXPLICIT_ATTENTION_TOKENS positions attention is softmax(QKᵀ/√d) V written out (faster on
    a CPU); it gives the fused kernel's outputs and gradients, in NCHW and in channels_last."""
    torch.manual_seed(0)
    attention = SelfAttention(64, groups=8, head_dim=32)
    x = torch.randn(3, 64, 7, 7)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    results = []
    for limit in (unet.EXPLICIT_ATTENTION_TOKENS, 0):               # 49 positions: written out, then fused
        monkeypatch.setattr(unet, "EXPLICIT_ATTENTION_TOKENS", limit)
        inputs = x.clone().requires_grad_()
        out = attention(inputs)
        out.square().sum().backward()
        results.append((out, inputs.grad, attention.qkv.weight.grad.clone()))
        attention.zero_grad()
    assert not torch.equal(results[0][0], results[1][0])             # two computations, not one path taken twice
    for written, fused in zip(*results):
        torch.testing.assert_close(written, fused, atol=1e-5, rtol=1e-5)
    with torch.no_grad():                                            # sampling takes the fused kernel
        assert torch.equal(attention(x), results[1][0]) and not torch.equal(attention(x), results[0][0])
    with torch.autocast("cpu", dtype=torch.bfloat16):                # and in bf16, up to its rounding
        low = attention(x)
    torch.testing.assert_close(low, results[0][0].detach(), atol=0.05, rtol=0.05)


def test_group_norm_computes_in_float32_under_bf16_autocast():
    """A bf16 activation is normalised in float32 and handed back in bf16: exactly the float32 result, rounded."""
    norm = GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    x = (torch.randn(2, 16, 6, 6) * 5 + 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.group_norm(x.float(), 4, norm.weight, norm.bias).bfloat16()
    assert torch.equal(out, expected)
    torch.testing.assert_close(norm(x.float()), expected.float(), atol=0.05, rtol=0.02)
    wide = x.double()                                                  # float64 stays float64
    assert torch.equal(norm.double()(wide), torch.nn.functional.group_norm(wide, 4, norm.weight, norm.bias))
    low = norm.bfloat16()                                               # a module cast to bf16 still works in fp32
    assert torch.equal(low(x), torch.nn.functional.group_norm(x.float(), 4, low.weight.float(), low.bias.float())
                       .bfloat16())
