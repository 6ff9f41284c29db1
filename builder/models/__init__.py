"""Model families and the one place that builds a model from its config: the registry
(builder/models/registry.py) holds one ModelSpec per family; the sets below are read from it."""
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
from builder.models.registry import REGISTRY, ModelSpec, model_spec, validate
from builder.models.sae import StackedAutoencoder

MODELS = tuple(REGISTRY)
# Top-N models: scores for ranking, not ratings (no RMSE); fitted by builder/topn.py.
TOP_N = {name for name, spec in REGISTRY.items() if spec.task == "top-n"}
# Item-based models read one item's column of ratings; all others one user's row.
ITEM_BASED = {name for name, spec in REGISTRY.items() if spec.basis in ("item", "matrix")}
# Models whose forward needs the whole rating matrix (not one row): offline only, not exportable.
FULL_MATRIX = {name for name, spec in REGISTRY.items() if spec.basis == "matrix"}
ROW_MODELS = tuple(m for m in MODELS if m not in FULL_MATRIX)


def build_model(name: str, n_inputs: int, *, n_rows=None, **options):
    """The untrained model `name` for rows of n_inputs entries; `options` are TrainConfig fields
    (hidden, dropout, kernel_dim ...; defaults TrainConfig's), n_rows only for full-matrix models.
    Raises ValueError for an unknown name, TypeError for an option that is no TrainConfig field."""
    spec = model_spec(name)
    if "hidden" in options:
        options["hidden"] = list(options["hidden"])
    return spec.build(TrainConfig(model=name, **options), n_inputs, n_rows)


__all__ = ["AutoRec", "DeepAutoencoder", "EASE", "EASELowRank", "ELSA", "GlocalK", "MultDAE", "MultVAE", "Popularity",
           "RecVAE", "StackedAutoencoder", "MODELS", "ITEM_BASED", "FULL_MATRIX", "ROW_MODELS", "TOP_N", "REGISTRY",
           "ModelSpec", "build_model", "model_spec", "validate"]
