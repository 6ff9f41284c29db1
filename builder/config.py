"""The training stage's one config object, saved as JSON beside the weights it produced, and
the one way a stage's config dataclass is built from a dict read from JSON or a command line."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], raw: dict, unknown: str = "error", error: type[Exception] = ValueError,
              what: str = "option") -> T:
    """`cls(**raw)` for a dataclass `cls`. Keys that are not fields of `cls` are refused
    (`unknown="error"`: raises `error` naming them, as "unknown {what}(s): [...]") or dropped
    (`unknown="ignore"`: a saved file may carry more than the config, e.g. provenance)."""
    names = {f.name for f in fields(cls)}
    extra = set(raw) - names
    if extra and unknown == "error":
        raise error(f"unknown {what}(s): {sorted(extra)}")
    for f in fields(cls):
        if f.name in raw:
            _check_type(f, raw[f.name], error, what)
    return cls(**{k: v for k, v in raw.items() if k in names})


def _check_type(f, value, error: type[Exception], what: str) -> None:
    """A value of the kind the field's default has (an int where a float is due is fine): a
    `--set lr=abc` is named here, not deep inside an optimiser."""
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if default is MISSING or default is None:
        return
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, kind))
    if not ok:
        raise error(f"{what} {f.name} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")


_KIND_NAMES = {bool: "true or false", float: "a number", int: "an integer", str: "a string", list: "a list"}


@dataclass
class TrainConfig:
    """Everything that decides a training run: model family and architecture, data and split,
    optimisation, regularisers, evaluation. Defaults are the DeepRecommender family's
    (Kuchaiev & Ginsburg 2017, "Training Deep AutoEncoders for Collaborative Filtering");
    builder/presets.py holds the tuned recipes."""
    model: str = "deeprec"            # autorec-i | autorec-u | deeprec | sae | glocal-k;
                                      # top-N: popularity | ease | ease-lowrank | mult-dae | mult-vae | elsa | recvae
    data: str = "ml-100k"
    split: str = "u1"
    seed: int = 0
    # architecture
    hidden: list[int] = field(default_factory=lambda: [500])
    activation: str = "selu"          # deeprec only
    dropout: float = 0.0              # on the code layer
    input_dropout: float = 0.0        # deeprec: dropout on the input vector
    constrained: bool = False         # deeprec: tied (transposed) decoder
    last_activation: bool = True      # deeprec: activation on the output layer too
    center: bool = False              # deeprec: model deviations from each user's mean rating
    implicit: bool = False            # deeprec: also feed which items were rated (SVD++'s implicit feedback)
    input_norm: bool = False          # deeprec: scale the input by 1/sqrt(#rated)
    skip: bool = False                # deeprec: add a linear input -> output (wide) path
    kernel_dim: int = 5               # glocal-k: dimension of the local kernel's u, v
    kernel_l2: float = 0.006          # glocal-k: L2 on the local kernel values (lambda_s)
    gk_size: int = 3                  # glocal-k: global convolution kernel is gk_size x gk_size
    dot_scale: float = 1.0            # glocal-k: scale of the global kernel
    # top-N models (implicit feedback)
    implicit_threshold: float = 0.0   # a rating >= this is a positive; 0: any rating is
    ease_lambda: float = 500.0        # ease: L2 weight lambda of the closed form
    ease_max_gb: float = 12.0         # ease: refuse a fit peaking above this (17 * items^2 bytes + 40 MB: 26,524 items)
    ease_input: str = "binary"        # ease: "binary" (a rating >= implicit_threshold is a 1) | "values" (it
                                      # weighs its rating value), in the fit and in the served input alike
    edlae_dropout: float = 0.0        # ease: EDLAE's input dropout p (Steck 2020): the L2 weight becomes
                                      # lambda + p/(1-p) diag(X^T X); 0: EASE
    rdlae_xi: float = 0.0             # ease: RDLAE (Moon et al. 2023): diag(B) <= xi instead of = 0; 0: EASE/EDLAE
    popularity_gamma: float = 0.0     # ease: divide B's column j by (users with a positive on j)^gamma; 0: none
    elsa_rank: int = 64               # elsa: rank r of the item factors A [n_items, r]; B = A A^T - I
    svd_rank: int = 64                # ease-lowrank: rank r of the randomized SVD X ~ U S V^T (V [n_items, r])
    svd_power_iters: int = 2          # ease-lowrank: power iterations of the randomized SVD (Halko et al. 2011)
    anneal_cap: float = 0.2           # mult-vae: the KL weight beta grows linearly to this cap
    total_anneal_steps: int = 2000    # mult-vae: update steps for beta to go from 0 to 1 (before the cap)
    recvae_gamma: float = 0.005       # recvae: each user's KL weight is gamma * (their number of positives)
    recvae_encoder_epochs: int = 3    # recvae: passes of encoder updates per epoch (then one of the decoder)
    val_holdout: float = 0.2          # top-N validation: share of each training user's ratings hidden
    # optimisation
    optimizer: str = "adam"           # adam | sgd | rmsprop | lbfgs (full batch; glocal-k)
    lbfgs_iters: int = 5              # lbfgs: iterations per epoch (the optimiser restarts each epoch)
    pretrain_epochs: int = 30         # glocal-k: local-kernel epochs before global fine-tuning
    lr: float = 1e-3
    momentum: float = 0.9             # sgd only
    weight_decay: float = 0.0         # the optimiser's decoupled-from-loss L2
    l2: float = 0.0                   # AutoRec's lambda/2 * ||W||^2 added to the loss
    batch_size: int = 128
    epochs: int = 200                 # upper bound; early stopping decides
    patience: int = 20
    lr_decay_epochs: int = 0          # step decay period; 0 = constant
    lr_decay: float = 0.5
    val_fraction: float = 0.1         # validation slice carved from the training ratings
    val_scheme: str = "entries"       # "entries": val_fraction of all ratings at random; "users":
                                      # val_fraction of users each hide up to 80% of their ratings
    refit: bool = False               # retrain on all training ratings for best_epoch epochs
    # regularisers of the seeds
    refeed: bool = False              # DeepRec dense re-feeding
    corruption: float = 0.0           # denoising: drop each observed input with this rate
    corruption_per_user: bool = False # each user's rate drawn from [0, corruption)
    loss_on: str = "observed"         # "observed" | "dropped": which entries the denoising loss scores
    sparsity: float = 0.0             # weight of the code-sparsity penalty
    contractive: float = 0.0          # weight of the contractive (Jacobian) penalty
    # knowledge distillation
    teacher: str = ""                 # a single-model preset trained first on the same ratings
    distill: float = 0.0              # weight of the teacher's predictions on unrated entries
    # evaluation
    top_k: int = 10
    relevant_threshold: float = 4.0   # test ratings >= this count as relevant for top-N
    device: str = "auto"

    def save(self, path: Path, **extra) -> None:
        """Write the config as JSON to `path`, with `extra` keys (provenance) beside its fields."""
        Path(path).write_text(json.dumps({**asdict(self), **extra}, indent=2))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """The config saved at `path` (the extra keys save() wrote beside it are ignored)."""
        return from_dict(cls, json.loads(Path(path).read_text()), unknown="ignore")

    def updated(self, **changes) -> "TrainConfig":
        """A copy with `changes` applied; raises ValueError naming any key that is not a field."""
        from_dict(TrainConfig, changes, what="training option")  # refuses unknown keys
        return TrainConfig(**{**asdict(self), **changes})
