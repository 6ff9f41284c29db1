"""Model families and the one place that builds a model from its config."""
from builder.models.autorec import AutoRec
from builder.models.deeprec import DeepAutoencoder
from builder.models.ease import EASE
from builder.models.elsa import ELSA
from builder.models.glocal import GlocalK
from builder.models.mult_dae import MultDAE
from builder.models.mult_vae import MultVAE
from builder.models.popularity import Popularity
from builder.models.sae import StackedAutoencoder

MODELS = ("autorec-i", "autorec-u", "deeprec", "sae", "glocal-k", "popularity", "ease", "mult-dae", "mult-vae",
          "elsa")
# Top-N models: scores for ranking, not ratings (no RMSE); fitted by builder/topn.py.
TOP_N = {"popularity", "ease", "mult-dae", "mult-vae", "elsa"}
# Item-based models read one item's column of ratings; all others one user's row.
ITEM_BASED = {"autorec-i", "glocal-k"}
# Models whose forward needs the whole rating matrix (not one row): offline only, not exportable.
FULL_MATRIX = {"glocal-k"}
ROW_MODELS = tuple(m for m in MODELS if m not in FULL_MATRIX)


def build_model(name: str, n_inputs: int, *, hidden=(500,), activation="selu", dropout=0.0,
                constrained=False, last_activation=True, input_dropout=0.0, center=False,
                implicit=False, input_norm=False, skip=False,
                n_rows=None, kernel_dim=5, gk_size=3, dot_scale=1.0, implicit_threshold=0.0,
                ease_max_gb=12.0, ease_input="binary", elsa_rank=64):
    """The untrained model `name` for rows of n_inputs entries; raises ValueError for an
    unknown name (or an EASE fit peaking above `ease_max_gb`)."""
    if name == "popularity":
        return Popularity(n_inputs, threshold=implicit_threshold)
    if name == "ease":
        return EASE(n_inputs, threshold=implicit_threshold, max_gb=ease_max_gb, ease_input=ease_input)
    if name == "elsa":
        return ELSA(n_inputs, rank=elsa_rank, threshold=implicit_threshold)
    if name == "mult-dae":
        return MultDAE(n_inputs, hidden=tuple(hidden), input_dropout=input_dropout, threshold=implicit_threshold)
    if name == "mult-vae":
        return MultVAE(n_inputs, hidden=tuple(hidden), input_dropout=input_dropout, threshold=implicit_threshold)
    if name in ("autorec-i", "autorec-u"):
        return AutoRec(n_inputs, hidden=hidden[0], dropout=dropout)
    if name == "deeprec":
        return DeepAutoencoder(n_inputs, layers=tuple(hidden), activation=activation,
                               dropout=dropout, constrained=constrained,
                               last_activation=last_activation, input_dropout=input_dropout,
                               center=center, implicit=implicit, input_norm=input_norm,
                               skip=skip)
    if name == "glocal-k":
        if n_rows is None:
            raise ValueError("glocal-k needs n_rows (its global kernel spans every row of the matrix)")
        return GlocalK(n_inputs, n_rows, hidden=tuple(hidden), n_dim=kernel_dim, gk_size=gk_size,
                       dot_scale=dot_scale)
    if name == "sae":
        return StackedAutoencoder(n_inputs, layers=tuple(hidden))
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


__all__ = ["AutoRec", "DeepAutoencoder", "EASE", "ELSA", "GlocalK", "MultDAE", "MultVAE", "Popularity",
           "StackedAutoencoder", "MODELS", "ITEM_BASED", "FULL_MATRIX", "ROW_MODELS", "TOP_N", "build_model"]
