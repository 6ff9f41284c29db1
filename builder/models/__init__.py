"""Model families and the one place that builds a model from its config."""
from builder.models.autorec import AutoRec
from builder.models.deeprec import DeepAutoencoder
from builder.models.sae import StackedAutoencoder

MODELS = ("autorec-i", "autorec-u", "deeprec", "sae")
# Item-based models read one item's column of ratings; all others one user's row.
ITEM_BASED = {"autorec-i"}


def build_model(name: str, n_inputs: int, *, hidden=(500,), activation="selu", dropout=0.0,
                constrained=False, last_activation=True, input_dropout=0.0, center=False):
    if name in ("autorec-i", "autorec-u"):
        return AutoRec(n_inputs, hidden=hidden[0], dropout=dropout)
    if name == "deeprec":
        return DeepAutoencoder(n_inputs, layers=tuple(hidden), activation=activation,
                               dropout=dropout, constrained=constrained,
                               last_activation=last_activation, input_dropout=input_dropout,
                               center=center)
    if name == "sae":
        return StackedAutoencoder(n_inputs, layers=tuple(hidden))
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


__all__ = ["AutoRec", "DeepAutoencoder", "StackedAutoencoder", "MODELS", "ITEM_BASED", "build_model"]
