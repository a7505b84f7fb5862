"""core.nn: blocks shared by several families."""
import pytest
import torch
from torch import nn

from core.nn import EMA, slerp


def test_ema_moves_toward_the_network():
    network = nn.Linear(2, 2)
    ema = EMA(network, decay=0.9)
    before = ema.average.weight.clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    ema.update(network)                             # warm-up: β = min(0.9, 1/10) = 0.1 on the first update
    torch.testing.assert_close(ema.average.weight, before + 0.9)
    for _ in range(100):
        ema.update(network)
    with torch.no_grad():
        network.weight.add_(1.0)
    ema.update(network)                             # warmed up: β = 0.9
    torch.testing.assert_close(ema.average.weight, network.weight - 0.9, atol=1e-4, rtol=0)
    assert not ema.average.weight.requires_grad and not ema.train().average.training


def test_ema_copies_buffers_and_is_saved_with_its_owner():
    network = nn.BatchNorm1d(3)
    ema = EMA(network)
    network.running_mean.fill_(2.0)
    ema.update(network)
    assert torch.equal(ema.average.running_mean, network.running_mean)       # buffers copied, not averaged
    holder = nn.Module()
    holder.ema = ema
    assert {"ema.updates", "ema.average.weight", "ema.average.running_mean"} <= set(holder.state_dict())


def test_slerp_of_many_paths_is_each_path_alone_and_parallel_ends_fall_back_to_a_line():
    torch.manual_seed(0)
    z0, z1, t = torch.randn(5, 16), torch.randn(5, 16), torch.rand(5)
    rows = slerp(z0, z1, t)
    for k in range(5):
        torch.testing.assert_close(rows[k], slerp(z0[k], z1[k], t[k:k + 1])[0])
    line = slerp(z0[0], 2 * z0[0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(line, torch.stack([z0[0], 1.5 * z0[0], 2 * z0[0]]))
    with pytest.raises(ValueError, match="t must be"):
        slerp(z0, z1, t[:, None])                     # (N, 1) would broadcast into N x N paths
    with pytest.raises(ValueError, match="t must be"):
        slerp(z0, z1, t[:3])
