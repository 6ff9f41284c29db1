"""The model registry: every family registered once, the family sets read from it, and a
config that sets another family's field refused (in the library and by `aerec train`)."""
from dataclasses import fields

import pytest

from builder.blend import member_configs
from builder.config import TrainConfig
from builder.models import FULL_MATRIX, GlocalK, ITEM_BASED, MODELS, REGISTRY, ROW_MODELS, TOP_N, build_model, validate
from builder.models.registry import owners
from builder.presets import PRESETS, preset
from builder.train import train
from conftest import cli

FAMILIES = ("autorec-i", "autorec-u", "deeprec", "sae", "glocal-k", "popularity", "ease", "elsa", "ease-lowrank",
            "mult-dae", "mult-vae", "recvae")


def test_every_family_is_registered_under_its_name():
    assert tuple(REGISTRY) == FAMILIES == MODELS
    assert all(spec.name == name for name, spec in REGISTRY.items())


def test_the_family_sets_are_the_registry_s():
    assert TOP_N == {"popularity", "ease", "elsa", "ease-lowrank", "mult-dae", "mult-vae", "recvae"}
    assert ITEM_BASED == {"autorec-i", "glocal-k"}
    assert FULL_MATRIX == {"glocal-k"}
    assert ROW_MODELS == ("autorec-i", "autorec-u", "deeprec", "sae", "popularity", "ease", "elsa", "ease-lowrank",
                          "mult-dae", "mult-vae", "recvae")


def test_family_fields_are_config_fields_and_common_ones_belong_to_none():
    names = {f.name for f in fields(TrainConfig)}
    assert all(set(spec.fields) <= names for spec in REGISTRY.values())
    for common in ("model", "data", "split", "seed", "optimizer", "lr", "weight_decay", "batch_size", "epochs",
                   "patience", "refit", "top_k", "relevant_threshold", "device"):
        assert owners(common) == (), common
    assert owners("dropout") == ("autorec-i", "autorec-u", "deeprec")
    assert owners("input_dropout") == ("deeprec", "mult-dae", "mult-vae", "recvae")
    assert owners("ease_lambda") == ("ease", "ease-lowrank")
    assert owners("svd_rank") == ("ease-lowrank",)


def test_build_model_builds_each_family_from_its_spec():
    for name in ROW_MODELS:
        hidden = [4, 2] if name == "recvae" else [4]  # recvae: [width, latent]
        assert type(build_model(name, 12, hidden=tuple(hidden))) is type(
            REGISTRY[name].build(TrainConfig(model=name, hidden=hidden), 12, None))
    assert isinstance(build_model("glocal-k", 12, n_rows=7, hidden=(4, 4)), GlocalK)
    with pytest.raises(ValueError, match="needs n_rows"):
        build_model("glocal-k", 12)


@pytest.mark.parametrize("changes, message", [
    ({"model": "ease", "dropout": 0.5}, r"dropout is not an option of ease \(it belongs to autorec-i, autorec-u, "
                                        r"deeprec\)"),
    ({"model": "deeprec", "ease_lambda": 100.0},
     r"ease_lambda is not an option of deeprec \(it belongs to ease, ease-lowrank\)"),
    ({"model": "autorec-u", "kernel_dim": 7}, r"kernel_dim is not an option of autorec-u \(it belongs to glocal-k\)"),
    ({"model": "mult-dae", "anneal_cap": 0.5}, r"anneal_cap is not an option of mult-dae \(it belongs to mult-vae\)"),
    ({"model": "popularity", "hidden": [8]}, r"hidden is not an option of popularity"),
    ({"model": "mult-vae", "recvae_gamma": 0.01},
     r"recvae_gamma is not an option of mult-vae \(it belongs to recvae\)"),
])
def test_a_field_of_another_family_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(TrainConfig(**changes))


def test_own_and_common_fields_and_defaults_pass():
    assert validate(TrainConfig(model="ease", ease_lambda=100.0, lr=0.1, seed=3, epochs=2))
    assert validate(TrainConfig(model="deeprec", dropout=0.5, input_dropout=0.2, hidden=(8,)))
    assert validate(TrainConfig(model="popularity", hidden=(500,)))   # the default, as a tuple
    for name in MODELS:
        assert validate(TrainConfig(model=name))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        validate(TrainConfig(model="nope"))


def test_train_refuses_a_foreign_field_before_any_work():
    # The dataset is never read: the refusal comes first.
    with pytest.raises(ValueError, match="dropout is not an option of ease"):
        train(TrainConfig(model="ease", dropout=0.5, device="cpu"), None, progress=False)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name):
    options = preset(name)
    if "blend" in options:
        configs, _ = member_configs(options)
        assert [c.model for c in configs] == options["blend"]
        assert all(validate(c) for c in configs)
    else:
        assert validate(TrainConfig().updated(**options)).model == options["model"]


def test_a_blend_override_must_suit_every_member():
    with pytest.raises(ValueError, match=r"kernel_dim is not an option of autorec-i \(it belongs to glocal-k\)"):
        member_configs({**preset("best"), "kernel_dim": 7})


def test_cli_refuses_a_foreign_field_with_exit_2_and_one_line(tmp_path):
    out = tmp_path / "x"
    r = cli("train", "--model", "ease", "--set", "dropout=0.5", "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: dropout is not an option of ease (it belongs to autorec-i, autorec-u, deeprec)"
    assert "Traceback" not in r.stderr + r.stdout and not out.exists()
    r = cli("train", "--preset", "best", "--set", "kernel_dim=7", "--out", str(out))
    assert r.returncode == 2 and "kernel_dim is not an option of autorec-i" in r.stderr and not out.exists()
