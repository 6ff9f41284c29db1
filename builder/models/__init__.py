"""Model families and the one place that builds a model from its config."""
from builder.models.autorec import AutoRec
from builder.models.deeprec import DeepAutoencoder
from builder.models.glocal import GlocalK
from builder.models.sae import StackedAutoencoder

MODELS = ("autorec-i", "autorec-u", "deeprec", "sae", "glocal-k")
# Item-based models read one item's column of ratings; all others one user's row.
ITEM_BASED = {"autorec-i", "glocal-k"}
# Models whose forward needs the whole rating matrix (not one row): offline only, not exportable.
FULL_MATRIX = {"glocal-k"}
ROW_MODELS = tuple(m for m in MODELS if m not in FULL_MATRIX)


def build_model(name: str, n_inputs: int, *, hidden=(500,), activation="selu", dropout=0.0,
                constrained=False, last_activation=True, input_dropout=0.0, center=False,
                implicit=False, input_norm=False, skip=False,
                n_rows=None, kernel_dim=5, gk_size=3, dot_scale=1.0):
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


__all__ = ["AutoRec", "DeepAutoencoder", "GlocalK", "StackedAutoencoder", "MODELS", "ITEM_BASED", "FULL_MATRIX",
           "ROW_MODELS", "build_model"]
