"""GLocal-K (local kernel, global kernel, full-batch L-BFGS) and the validation-tuned blend."""
import json

import numpy as np
import pytest
import torch

from builder.blend import evaluate_blend, save_blend, train_blend
from builder.config import TrainConfig
from builder.export import ExportError, export_run
from builder.models.glocal import GlocalK, KernelLayer
from builder.run_folder import load_run, save_run
from builder.train import train


def test_local_kernel_is_finite_support_and_scales_weights():
    layer = KernelLayer(4, 3, 2, torch.sigmoid)
    with torch.no_grad():
        layer.u.copy_(torch.tensor([[[0.0, 0.0]], [[0.5, 0.0]], [[1.0, 0.0]], [[3.0, 0.0]]]))
        layer.v.zero_()
    k = layer.kernel()
    # max(0, 1 - ||u_i - v_j||^2): 1, 0.75, 0 (on the boundary) and 0 (far away, disconnected)
    assert torch.allclose(k[:, 0], torch.tensor([1.0, 0.75, 0.0, 0.0]))
    x = torch.randn(5, 4)
    assert torch.allclose(layer(x), torch.sigmoid(x @ (layer.W * k) + layer.b))


def test_global_kernel_stage_changes_the_forward_and_is_saved():
    torch.manual_seed(0)
    m = GlocalK(n_inputs=6, n_rows=8, hidden=(5,), n_dim=2)
    x = torch.rand(8, 6) * 5
    local = m(x)
    m.fine_tuned.fill_(True)
    assert not torch.allclose(m(x), local)
    assert m.state_dict()["fine_tuned"].item() is True


@pytest.mark.slow
def test_glocal_k_trains_on_ml100k_and_reloads(u1, tmp_path):
    config = TrainConfig(model="glocal-k", hidden=[100, 100], optimizer="lbfgs", l2=20.0, pretrain_epochs=5,
                         epochs=7, lbfgs_iters=5, device="cpu")
    result = train(config, u1, progress=False)
    hist = result.history
    assert [h["stage"] for h in hist] == ["pre-train"] * 5 + ["fine-tune"] * 2
    assert hist[-1]["train_rmse"] < hist[0]["train_rmse"]
    assert result.metrics["test_rmse"] < 1.1  # predicting the global mean gives ~1.15
    run = save_run(result, u1, tmp_path / "run")
    _, reloaded = load_run(run)
    assert bool(reloaded.fine_tuned) == bool(result.model.fine_tuned)
    with pytest.raises(ExportError, match="whole rating matrix"):
        export_run(run)
    assert not (run / "export").exists()


def test_lbfgs_is_only_for_full_matrix_models(u1):
    with pytest.raises(ValueError, match="lbfgs"):
        train(TrainConfig(model="autorec-u", optimizer="lbfgs", epochs=1, device="cpu"), u1, progress=False)


@pytest.mark.slow
def test_blend_weights_fit_on_validation_and_evaluate_reproduces(u1, tmp_path):
    members = [TrainConfig(model="autorec-i", hidden=[50], l2=100.0, batch_size=1682, lr=0.01, epochs=3,
                           device="cpu"),
               TrainConfig(model="autorec-u", hidden=[50], l2=100.0, batch_size=256, lr=0.01, epochs=3,
                           device="cpu")]
    result = train_blend(members, u1, val_fraction=0.05, seed=0, progress=False)
    assert all(w >= 0 for w in result.weights)
    # Any single member is a feasible weight vector, so the fitted blend is never worse on validation.
    assert result.metrics["val_rmse"] <= min(m.metrics["val_rmse"] for m in result.members) + 1e-9
    folder = save_blend(result, u1, tmp_path / "blend", 0.05, 0)
    again = evaluate_blend(folder)
    assert again["test_rmse"] == pytest.approx(result.metrics["test_rmse"], abs=1e-6)
    assert json.loads((folder / "blend.json").read_text())["members"] == ["member0-autorec-i", "member1-autorec-u"]
    assert np.isfinite(result.metrics["test_mae"])
