"""The model families: one `ModelSpec` each (what it predicts, what one input row is, the
TrainConfig fields that are its own, how it is built), and `validate`, which refuses a config
that sets another family's field. A new family is one module in builder/models/ and one entry
in REGISTRY."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from builder.config import TrainConfig
from builder.models.autorec import AutoRec
from builder.models.deeprec import DeepAutoencoder
from builder.models.ease import EASE
from builder.models.ease_lowrank import EASELowRank
from builder.models.elsa import ELSA
from builder.models.glocal import GlocalK
from builder.models.mult_dae import MultDAE
from builder.models.mult_vae import MultVAE
from builder.models.popularity import Popularity
from builder.models.recvae import RecVAE
from builder.models.sae import StackedAutoencoder

TASKS = ("rating", "top-n")
BASES = ("user", "item", "matrix")


@dataclass(frozen=True)
class ModelSpec:
    """One model family.

    task: "rating" (predicts ratings, scored by RMSE; trained by builder/train.py) or "top-n"
    (scores for ranking; trained by builder/topn.py). basis: what one input vector is: "user"
    (a user's row of ratings over the items), "item" (an item's column over the users) or
    "matrix" (the forward reads the whole matrix at once, held item-major as for "item"; such a
    model is offline only and not exported). fields: the TrainConfig fields only some families
    read (see `validate`); every field listed by no family is common to all (data, split, seed,
    optimisation, evaluation). build(config, n_inputs, n_rows): the untrained model for input
    vectors of n_inputs entries; n_rows (the number of input vectors) only for basis "matrix"."""
    name: str
    task: str
    basis: str
    fields: tuple[str, ...]
    build: Callable[[TrainConfig, int, int | None], torch.nn.Module]

    def __post_init__(self):
        if self.task not in TASKS or self.basis not in BASES:
            raise ValueError(f"{self.name}: task must be one of {TASKS}, basis one of {BASES}")
        unknown = set(self.fields) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ValueError(f"{self.name}: {sorted(unknown)} are not TrainConfig fields")


# Fields of the rating training loop (builder.train.train_step): every rating family trained by
# minibatch gradient steps reads them; GLocal-K (full-batch L-BFGS) and the top-N loop do not.
_MINIBATCH_RATING = ("corruption", "corruption_per_user", "loss_on", "sparsity", "contractive", "refeed",
                     "teacher", "distill")
# The rating families' validation slice (builder.train.validation_split) and loss penalty.
_RATING = ("val_fraction", "val_scheme", "l2")
# The top-N families' validation (builder.topn.validation_split_top_n) and positives.
_TOP_N = ("val_holdout", "implicit_threshold")


def _autorec(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return AutoRec(n_inputs, hidden=config.hidden[0], dropout=config.dropout)


def _deeprec(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return DeepAutoencoder(n_inputs, layers=tuple(config.hidden), activation=config.activation,
                           dropout=config.dropout, constrained=config.constrained,
                           last_activation=config.last_activation, input_dropout=config.input_dropout,
                           center=config.center, implicit=config.implicit, input_norm=config.input_norm,
                           skip=config.skip)


def _sae(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return StackedAutoencoder(n_inputs, layers=tuple(config.hidden))


def _glocal(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    if n_rows is None:
        raise ValueError("glocal-k needs n_rows (its global kernel spans every row of the matrix)")
    return GlocalK(n_inputs, n_rows, hidden=tuple(config.hidden), n_dim=config.kernel_dim, gk_size=config.gk_size,
                   dot_scale=config.dot_scale)


def _popularity(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return Popularity(n_inputs, threshold=config.implicit_threshold)


def _ease(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return EASE(n_inputs, threshold=config.implicit_threshold, max_gb=config.ease_max_gb,
                ease_input=config.ease_input)


def _ease_lowrank(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return EASELowRank(n_inputs, rank=config.svd_rank, threshold=config.implicit_threshold,
                       ease_input=config.ease_input)


def _elsa(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return ELSA(n_inputs, rank=config.elsa_rank, threshold=config.implicit_threshold)


def _mult_dae(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return MultDAE(n_inputs, hidden=tuple(config.hidden), input_dropout=config.input_dropout,
                   threshold=config.implicit_threshold)


def _mult_vae(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return MultVAE(n_inputs, hidden=tuple(config.hidden), input_dropout=config.input_dropout,
                   threshold=config.implicit_threshold)


def _recvae(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    return RecVAE(n_inputs, hidden=tuple(config.hidden), input_dropout=config.input_dropout,
                  threshold=config.implicit_threshold)


_DEEPREC = ("hidden", "activation", "dropout", "input_dropout", "constrained", "last_activation", "center",
            "implicit", "input_norm", "skip")
_GLOCAL = ("hidden", "kernel_dim", "kernel_l2", "gk_size", "dot_scale", "lbfgs_iters", "pretrain_epochs")

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    # Sedhain et al. 2015: one sigmoid hidden layer; I-AutoRec reads items' columns.
    ModelSpec("autorec-i", "rating", "item", ("hidden", "dropout") + _RATING + _MINIBATCH_RATING, _autorec),
    ModelSpec("autorec-u", "rating", "user", ("hidden", "dropout") + _RATING + _MINIBATCH_RATING, _autorec),
    # Kuchaiev & Ginsburg 2017 (DeepRecommender), with our centering / implicit / wide options.
    ModelSpec("deeprec", "rating", "user", _DEEPREC + _RATING + _MINIBATCH_RATING, _deeprec),
    ModelSpec("sae", "rating", "user", ("hidden",) + _RATING + _MINIBATCH_RATING, _sae),
    # Han et al. 2021: its global kernel convolves the whole (item-major) matrix.
    ModelSpec("glocal-k", "rating", "matrix", _GLOCAL + _RATING, _glocal),
    ModelSpec("popularity", "top-n", "user", _TOP_N, _popularity),
    ModelSpec("ease", "top-n", "user", _TOP_N + ("ease_lambda", "ease_max_gb", "ease_input", "edlae_dropout",
                                                   "rdlae_xi", "popularity_gamma"), _ease),
    # Vancura et al. 2022: B = A A^T - I, A items x rank: memory linear in the catalogue.
    ModelSpec("elsa", "top-n", "user", _TOP_N + ("elsa_rank",), _elsa),
    # Steck 2019 with X ~ U S V^T at rank r (Halko et al. 2011): EASE's closed form by Woodbury,
    # memory n_items x r.
    ModelSpec("ease-lowrank", "top-n", "user", _TOP_N + ("ease_lambda", "ease_input", "svd_rank", "svd_power_iters"),
              _ease_lowrank),
    ModelSpec("mult-dae", "top-n", "user", _TOP_N + ("hidden", "input_dropout"), _mult_dae),
    ModelSpec("mult-vae", "top-n", "user", _TOP_N + ("hidden", "input_dropout", "anneal_cap", "total_anneal_steps"),
              _mult_vae),
    # Shenbin et al. 2020: hidden = [width, latent]; the encoder and decoder updated in turn.
    ModelSpec("recvae", "top-n", "user", _TOP_N + ("hidden", "input_dropout", "recvae_gamma", "recvae_encoder_epochs"),
              _recvae),
)}


def model_spec(name: str) -> ModelSpec:
    """The registered family `name`; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def owners(field_name: str) -> tuple[str, ...]:
    """The families that list `field_name` as their own, in registry order; () for a common field."""
    return tuple(name for name, spec in REGISTRY.items() if field_name in spec.fields)


def validate(config: TrainConfig) -> TrainConfig:
    """`config` if every field it sets (differs from TrainConfig's default) is common or its
    model's own. Raises ValueError for an unknown model, or naming the first field of other
    families: "dropout is not an option of ease (it belongs to autorec-i, autorec-u, deeprec)"."""
    spec = model_spec(config.model)
    default = TrainConfig()
    for f in fields(TrainConfig):
        families = owners(f.name)
        if families and config.model not in families and not _same(getattr(config, f.name), getattr(default, f.name)):
            raise ValueError(f"{f.name} is not an option of {spec.name} (it belongs to {', '.join(families)})")
    return config


def _same(value, default) -> bool:
    """Equal, a tuple counting as the list it lists (hidden=(500,) is the default [500])."""
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default
