"""RecVAE (Shenbin et al. 2020): the composite prior's log-density and the KL estimate against
direct numpy computations, the served forward (mean of the posterior, raw ratings in), and the
alternating encoder / decoder phases of the top-N loop."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from builder.config import TrainConfig
from builder.losses import COMPOSITE_WEIGHTS, WIDE_LOGVAR, composite_prior_log_density, recvae_kl
from builder.models import RecVAE, validate
from builder.topn import fit_multinomial, training_phases


def _normal_pdf(z, mu, var):
    return np.exp(-(z - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)


def test_composite_prior_log_density_is_the_log_of_the_weighted_mixture():
    rng = np.random.default_rng(0)
    z, mu_old = rng.normal(size=(2, 3, 4)) * 2
    logvar_old = rng.normal(size=(3, 4))
    w0, w1, w2 = 3 / 20, 3 / 4, 1 / 10
    expected = np.log(w0 * _normal_pdf(z, 0.0, 1.0) + w1 * _normal_pdf(z, mu_old, np.exp(logvar_old))
                      + w2 * _normal_pdf(z, 0.0, math.exp(10.0)))
    got = composite_prior_log_density(*(torch.tensor(a, dtype=torch.float64) for a in (z, mu_old, logvar_old)))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert COMPOSITE_WEIGHTS == (w0, w1, w2) and WIDE_LOGVAR == 10.0


def test_composite_prior_is_finite_far_in_the_tails():
    # Where every component's density underflows in float32, the log-sum-exp still gives the
    # wide normal's log-density.
    z = torch.tensor([[60.0]])
    got = composite_prior_log_density(z, torch.zeros(1, 1), torch.full((1, 1), -20.0))
    wide = math.log(0.1) - 0.5 * (10.0 + math.log(2 * math.pi) + 3600.0 / math.exp(10.0))
    assert torch.isfinite(got).all() and got.item() == pytest.approx(wide, abs=1e-4)


def test_recvae_kl_weighs_each_user_by_their_weight():
    rng = np.random.default_rng(1)
    z, mu, logvar, prior = rng.normal(size=(4, 2, 3))
    weight = np.array([0.5, 2.0])
    log_q = -0.5 * (logvar + np.log(2 * np.pi) + (z - mu) ** 2 / np.exp(logvar))
    expected = np.mean((log_q - prior).sum(axis=1) * weight)
    got = recvae_kl(*(torch.tensor(a) for a in (z, mu, logvar, prior, weight)))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_eval_forward_is_the_decoded_posterior_mean_of_the_binarised_input():
    torch.manual_seed(0)
    model = RecVAE(6, hidden=(8, 3), input_dropout=0.5, threshold=4.0).eval()
    raw = torch.tensor([[5.0, 2.0, 0.0, 4.0, 1.0, 0.0]])
    binary = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        out = model(raw)
        assert torch.equal(out, model(raw))  # deterministic: no dropout, no sampling
        assert torch.allclose(out, model.decode(model.encode(binary * 4.0)[0]))
    with pytest.raises(ValueError, match=r"hidden = \[width, latent\]"):
        RecVAE(6, hidden=(8,))


def test_recvae_fields_are_its_own():
    assert validate(TrainConfig(model="recvae", hidden=[8, 4], recvae_gamma=0.01, recvae_encoder_epochs=2))
    with pytest.raises(ValueError, match="recvae_encoder_epochs is not an option of mult-dae"):
        validate(TrainConfig(model="mult-dae", recvae_encoder_epochs=2))


def test_an_epoch_updates_the_encoder_then_the_decoder():
    """The first phase's steps move the encoder only, the second's the decoder only; the prior's
    old encoder takes the encoder's weights in between."""
    torch.manual_seed(0)
    config = TrainConfig(model="recvae", hidden=[8, 4], recvae_encoder_epochs=2, lr=0.01, device="cpu")
    model = RecVAE(10, hidden=(8, 4))
    encoder_phase, decoder_phase = training_phases(config, model, "cpu")
    assert (encoder_phase.passes, decoder_phase.passes) == (2, 1)
    x = sp.csr_matrix(((torch.rand(5, 10) < 0.5).float() * 4).numpy())
    for phase, moved, kept in ((encoder_phase, "encoder.", "decoder."), (decoder_phase, "decoder.", "encoder.")):
        if phase.begin is not None:
            phase.begin()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        loss, _ = phase.loss(x, np.arange(5), 0)   # the rows of x, as the loop calls it
        loss.backward()
        phase.optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(n.startswith(moved) for n in changed), changed
        assert not any(n.startswith(kept) for n in changed)


def test_fit_selects_on_validation_and_learns():
    """A few epochs on a two-block toy: the loss falls, validation NDCG@100 is recorded each
    epoch and the best epoch's weights come back."""
    rng = np.random.default_rng(0)
    liked = (np.arange(60)[:, None] < 30) == (np.arange(40)[None, :] < 20)
    matrix = sp.csr_matrix(np.where(liked & (rng.random((60, 40)) < 0.7), 5.0, 0.0).astype(np.float32))
    config = TrainConfig(model="recvae", hidden=[16, 8], input_dropout=0.2, lr=0.01, batch_size=16,
                         recvae_encoder_epochs=2, implicit_threshold=4.0, device="cpu", patience=100)
    visible = sp.csr_matrix(matrix.multiply(rng.random(matrix.shape) < 0.8))
    hidden = sp.csr_matrix(matrix - visible)
    model, history, best = fit_multinomial(config, visible, (visible, hidden), 8, "cpu", progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert best["epoch"] == max(history, key=lambda h: h["val_ndcg@100"])["epoch"]
    assert not model.training
