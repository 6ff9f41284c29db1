"""Masking, regularizers and dense re-feeding do exactly what their definitions say."""
import torch

from builder.config import TrainConfig
from builder.losses import contractive_penalty, corrupt, l2_penalty, masked_mse, sparsity_penalty
from builder.models import AutoRec, DeepAutoencoder
from builder.train import train_step


def test_masked_mse_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    target = torch.tensor([[2.0, 0.0, 3.0], [0.0, 0.0, 4.0]])
    # observed: (0,0) err 1, (0,2) err 0, (1,2) err 2 -> (1 + 0 + 4) / 3
    assert torch.isclose(masked_mse(pred, target), torch.tensor(5.0 / 3.0))


def test_unobserved_entries_get_no_gradient():
    pred = torch.randn(4, 6, requires_grad=True)
    target = torch.zeros(4, 6)
    target[0, 1], target[2, 5] = 4.0, 2.0
    masked_mse(pred, target).backward()
    grad = pred.grad.clone()
    grad[0, 1] = grad[2, 5] = 0
    assert torch.count_nonzero(grad) == 0
    assert pred.grad[0, 1] != 0 and pred.grad[2, 5] != 0


def test_unobserved_entries_change_nothing_in_the_model():
    """Changing predictions where nothing is observed leaves loss and weight gradients alone."""
    torch.manual_seed(0)
    model = DeepAutoencoder(8, layers=(4,), dropout=0.0)
    x = torch.zeros(3, 8)
    x[0, 2], x[1, 5], x[2, 0] = 5.0, 3.0, 1.0
    loss = masked_mse(model(x), x)
    loss.backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = model(x)
    noise = torch.randn_like(out) * (x == 0)  # perturb only unobserved outputs
    loss2 = masked_mse(out + noise, x)
    loss2.backward()
    assert torch.isclose(loss, loss2)
    for a, p in zip(g1, model.parameters()):
        assert torch.allclose(a, p.grad)


def test_l2_penalty_counts_weights_not_biases():
    m = AutoRec(3, hidden=2)
    expected = 0.5 * (m.encoder.weight.pow(2).sum() + m.decoder.weight.pow(2).sum())
    assert torch.isclose(l2_penalty(m), expected)


def test_corruption_drops_only_at_the_rate():
    x = torch.ones(200, 500)
    g = torch.Generator().manual_seed(0)
    y = corrupt(x, 0.3, g)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert corrupt(x, 0.0) is x


def test_sparsity_penalty_is_mean_abs_code():
    code = torch.tensor([[0.5, -0.5], [0.0, 1.0]])
    assert torch.isclose(sparsity_penalty(code), torch.tensor(0.5))


def test_contractive_penalty_estimates_jacobian_norm():
    """Hutchinson's estimate converges to ||J||_F^2, computed exactly with autograd."""
    torch.manual_seed(0)
    model = AutoRec(6, hidden=3)
    x = torch.rand(2, 6)
    exact = sum(torch.autograd.functional.jacobian(model.encode, x[i:i + 1]).pow(2).sum() for i in range(2)) / 2
    est = contractive_penalty(model.encode, x, probes=4000)
    assert torch.isclose(est, exact, rtol=0.05)
    # and the sigmoid closed form for a one-layer encoder: sum_j (h_j(1-h_j))^2 ||W_j||^2
    h = model.encode(x)
    closed = ((h * (1 - h)) ** 2 @ model.encoder.weight.pow(2).sum(1)).mean()
    assert torch.isclose(exact, closed, rtol=1e-4)


def _step_loss(config, model, x):
    """Loss value train_step optimises, recomputed with the same seed for the corruption."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: parameters stay put
    return train_step(model, opt, x, config, torch.Generator().manual_seed(0), n_ratings=10)


def test_regularizer_flags_change_the_gradient_as_defined():
    torch.manual_seed(0)
    x = torch.zeros(4, 10)
    x[:, :4] = torch.randint(1, 6, (4, 4)).float()
    base = TrainConfig(model="deeprec", hidden=[5], dropout=0.0)

    def grads(config):
        torch.manual_seed(1)
        m = DeepAutoencoder(10, layers=(5,), dropout=0.0)
        _step_loss(config, m, x)
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    plain = grads(base)
    for flag in ({"sparsity": 1.0}, {"contractive": 1.0}, {"l2": 100.0}, {"corruption": 0.5}):
        assert not torch.allclose(plain, grads(base.updated(**flag))), flag
    # sparsity's extra gradient is exactly the gradient of weight * mean|code|
    torch.manual_seed(1)
    m = DeepAutoencoder(10, layers=(5,), dropout=0.0)
    (masked_mse(m(x), x) + 2.0 * sparsity_penalty(m.encode(x))).backward()
    expected = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert torch.allclose(grads(base.updated(sparsity=2.0)), expected, atol=1e-6)


def test_dense_refeeding_takes_a_second_step_on_the_output():
    torch.manual_seed(0)
    x = torch.zeros(4, 10)
    x[:, :3] = 4.0
    config = TrainConfig(model="deeprec", hidden=[5], dropout=0.0, refeed=True, lr=0.01, optimizer="sgd")

    torch.manual_seed(1)
    m = DeepAutoencoder(10, layers=(5,), dropout=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    train_step(m, opt, x, config, torch.Generator(), n_ratings=12)

    # by hand: step on x (masked), then step on y = f(x) detached with every entry observed
    torch.manual_seed(1)
    ref = DeepAutoencoder(10, layers=(5,), dropout=0.0)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.01)
    pred = ref(x)
    masked_mse(pred, x).backward()
    ropt.step()
    ropt.zero_grad()
    y = pred.detach()
    (((ref(y) - y) ** 2).mean()).backward()
    ropt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_per_user_corruption_varies_the_rate_by_row():
    x = torch.ones(400, 2000)
    y = corrupt(x, 0.8, torch.Generator().manual_seed(0), per_row=True)
    dropped = (y == 0).float().mean(dim=1)
    assert dropped.min() < 0.1 and dropped.max() > 0.7  # rows span [0, 0.8)
    assert abs(dropped.mean().item() - 0.4) < 0.03


def test_distillation_scores_the_teacher_on_unrated_entries_only():
    """Loss = masked MSE on ratings + distill x MSE against the teacher where nothing is rated."""
    torch.manual_seed(0)
    x = torch.tensor([[5.0, 0.0, 3.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    config = TrainConfig(model="deeprec", hidden=[3], dropout=0.0, distill=2.0, teacher="autorec-i")

    def loss_of(soft):
        m = DeepAutoencoder(4, layers=(3,), dropout=0.0, last_activation=False)
        m.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        return train_step(m, opt, x, config, torch.Generator().manual_seed(0), 10, soft), m

    base = DeepAutoencoder(4, layers=(3,), dropout=0.0, last_activation=False)
    with torch.no_grad():
        pred = base(x)
    unrated = x == 0
    # a teacher that agrees with the model where nothing is rated adds nothing to the gradient
    agree = torch.where(unrated, pred, torch.full_like(pred, 99.0))  # 99 at rated entries: ignored
    _, m_agree = loss_of(agree)
    _, m_plain = loss_of(None)
    for a, b in zip(m_agree.parameters(), m_plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    # a teacher one unit above the model on the unrated entries: gradient of 2 * mean((p - t)^2)
    _, m_off = loss_of(pred + 1.0)
    out_bias_grad = m_off.dec_b[-1].grad - m_plain.dec_b[-1].grad
    expected = 2.0 * (-2.0 * unrated.float()).sum(dim=0) / unrated.sum()
    assert torch.allclose(out_bias_grad, expected, atol=1e-5)
