import pytest
import torch
import torch.nn.functional as F

from core import losses


def linear_critic(w):
    return lambda x: (x.flatten(1) * w).sum(1)


REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([0.5, -3.0, 1.0])


@pytest.mark.parametrize("loss, expected_d, expected_g", [
    ("bce", -(torch.sigmoid(REAL).log().mean() + (1 - torch.sigmoid(FAKE)).log().mean()),
     -torch.sigmoid(FAKE).log().mean()),
    ("hinge", (1 - REAL).clamp(min=0).mean() + (1 + FAKE).clamp(min=0).mean(), -FAKE.mean()),
    ("lsgan", 0.5 * ((REAL - 1) ** 2).mean() + 0.5 * (FAKE ** 2).mean(), 0.5 * ((FAKE - 1) ** 2).mean()),
])
def test_losses_equal_their_definitions(loss, expected_d, expected_g):
    critic = lambda x: x[:, 0]
    real, fake = REAL[:, None], FAKE[:, None]
    torch.testing.assert_close(losses.discriminator_loss(loss, critic, real, fake), expected_d)
    torch.testing.assert_close(losses.generator_loss(loss, critic, real, fake), expected_g)


def test_bce_is_stable_for_confident_logits():
    critic = lambda x: x[:, 0]
    d = losses.discriminator_loss("bce", critic, torch.tensor([[200.0]]), torch.tensor([[200.0]]))
    g = losses.generator_loss("bce", critic, None, torch.tensor([[-200.0]]))
    assert d.item() == pytest.approx(200.0) and g.item() == pytest.approx(200.0)   # log(1 - σ(200)) in float32 is -inf


def test_wgan_gp_equals_its_definition():
    w = torch.tensor([3.0, 4.0])                   # D(x) = wᵀx: ‖∇D‖ = 5 everywhere, so the penalty is (5 - 1)² = 16
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    critic = linear_critic(w)
    expected = critic(fake).mean() - critic(real).mean() + 10 * 16
    torch.testing.assert_close(losses.discriminator_loss("wgan-gp", critic, real, fake, gp_weight=10), expected)
    torch.testing.assert_close(losses.generator_loss("wgan-gp", critic, real, fake), -critic(fake).mean())


def test_gradient_penalty_against_autograd_on_a_nonlinear_critic():
    critic = lambda x: (x ** 3).sum(1)
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    torch.manual_seed(1)
    penalty = losses.gradient_penalty(critic, real, fake)
    torch.manual_seed(1)
    eps = torch.rand(5, 1)
    x_hat = eps * real + (1 - eps) * fake
    by_hand = ((3 * x_hat ** 2).norm(dim=1) - 1).square().mean()              # ∇ Σx³ = 3x²
    torch.testing.assert_close(penalty, by_hand)
    assert penalty.grad_fn is not None          # kept in the graph, so the critic can minimise it


def test_r3gan_relativistic_loss_with_r1_and_r2():
    critic = lambda x: (x ** 2).sum(1)             # ∇D = 2x, so ‖∇D(x)‖² = 4‖x‖²
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    gamma = 0.5
    r1, r2 = 4 * real.square().sum(1).mean(), 4 * fake.square().sum(1).mean()
    expected = F.softplus(critic(fake) - critic(real)).mean() + gamma / 2 * (r1 + r2)
    torch.testing.assert_close(losses.discriminator_loss("r3gan", critic, real, fake, r_gamma=gamma), expected)
    torch.testing.assert_close(losses.generator_loss("r3gan", critic, real, fake),
                               F.softplus(critic(real) - critic(fake)).mean())


def test_penalties_train_the_discriminator():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = losses.discriminator_loss("wgan-gp", linear_critic(w), torch.zeros(4, 2), torch.zeros(4, 2))
    loss.backward()                               # d/dw 10 (‖w‖ - 1)² = 20 (‖w‖ - 1) w / ‖w‖
    torch.testing.assert_close(w.grad, 20 * 4 * w.detach() / 5)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss 'gan'"):
        losses.discriminator_loss("gan", lambda x: x[:, 0], REAL[:, None], FAKE[:, None])
