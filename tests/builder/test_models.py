import pytest
import torch

from builder.models import ROW_MODELS, DeepAutoencoder, build_model
from builder.models.deeprec import user_mean


@pytest.mark.parametrize("name", ROW_MODELS)  # glocal-k: test_glocal_blend.py
def test_each_family_maps_n_to_n(name):
    m = build_model(name, 37, hidden=(8, 4) if name in ("deeprec", "sae", "recvae") else (8,))
    assert m(torch.rand(5, 37)).shape == (5, 37)


def test_constrained_decoder_reuses_encoder_weights():
    m = DeepAutoencoder(20, layers=(8, 4), constrained=True, dropout=0.0)
    names = {n for n, _ in m.named_parameters()}
    assert not any(n.startswith("dec.") for n in names)
    untied = DeepAutoencoder(20, layers=(8, 4), constrained=False)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in untied.parameters())


def test_dropout_only_on_code_and_only_in_training():
    m = DeepAutoencoder(20, layers=(8,), dropout=0.9)
    x = torch.rand(3, 20)
    m.eval()
    assert torch.equal(m(x), m(x))


def test_centering_adds_the_user_mean_back():
    x = torch.tensor([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    assert torch.equal(user_mean(x), torch.tensor([[3.0], [0.0]]))
    m = DeepAutoencoder(3, layers=(2,), dropout=0.0, center=True, last_activation=False)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    # a network that predicts zero deviation predicts each user's mean
    assert torch.allclose(m(x), torch.tensor([[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]))


def test_unknown_model_and_activation():
    with pytest.raises(ValueError, match="unknown model 'x'"):
        build_model("x", 3)
    with pytest.raises(ValueError, match="unknown activation"):
        DeepAutoencoder(3, activation="swishy")


def test_features_scale_by_count_and_add_what_was_rated():
    x = torch.tensor([[4.0, 0.0, 2.0, 0.0]])
    m = DeepAutoencoder(4, layers=(2,), center=True, implicit=True, input_norm=True)
    # deviations from the mean 3, then everything over sqrt(2 rated); indicator likewise
    r = 2 ** -0.5
    assert torch.allclose(m.features(x), torch.tensor([[r, 0.0, -r, 0.0, r, 0.0, r, 0.0]]))
    assert m.enc[0].shape == (2, 8) and m(x).shape == (1, 4)  # first layer reads both halves
    tied = DeepAutoencoder(4, layers=(2,), implicit=True, constrained=True)
    assert tied(x).shape == (1, 4)  # the tied output layer uses the rating half only


def test_input_norm_keeps_the_code_of_a_thinned_history_in_range():
    """Half a user's history (same tastes) gives features of the same size, not half."""
    torch.manual_seed(0)
    full = torch.tensor([[5.0, 1.0] * 50])
    half = full.clone()
    half[0, 50:] = 0
    m = DeepAutoencoder(100, layers=(4,), center=True, input_norm=True)
    assert torch.isclose(m.features(full).norm(), m.features(half).norm(), rtol=1e-5)
    plain = DeepAutoencoder(100, layers=(4,), center=True)
    assert plain.features(half).norm() < 0.75 * plain.features(full).norm()


def test_wide_path_starts_at_zero_and_is_trained():
    m = DeepAutoencoder(6, layers=(3,), skip=True, dropout=0.0)
    x = torch.tensor([[5.0, 0.0, 3.0, 0.0, 1.0, 0.0]])
    assert torch.count_nonzero(m.skip.weight) == 0
    ((m(x) - x) ** 2).sum().backward()
    assert torch.count_nonzero(m.skip.weight.grad) > 0
