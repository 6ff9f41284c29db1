"""Named training recipes: every row of the README's results table is one of these.

Each was chosen on the validation slice of u1.base (see README, "How the presets were
chosen"); the test split was scored once per preset, after the choice.
"""
PRESETS: dict[str, dict] = {
    # The seed notebook's stacked autoencoder as written: 20-10-20, sigmoid, RMSprop lr 0.01,
    # weight decay 0.5, one user per step (the notebook's loop), 200 epochs max.
    "sae-seed": dict(model="sae", hidden=[20, 10], optimizer="rmsprop", lr=0.01, weight_decay=0.5,
                     batch_size=1, epochs=200, patience=10),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
