import pytest
import torch

from builder.models import ROW_MODELS, DeepAutoencoder, build_model
from builder.models.deeprec import user_mean


@pytest.mark.parametrize("name", ROW_MODELS)  # glocal-k: test_glocal_blend.py
def test_each_family_maps_n_to_n(name):
    m = build_model(name, 37, hidden=(8, 4) if name in ("deeprec", "sae") else (8,))
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
