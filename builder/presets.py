"""Named training recipes: every row of the README's results table is one of these.

Each was chosen by validation RMSE (a slice of u1.base) in the sweeps of
`scripts/grid_ml100k_*.json` and, for the deeprec rows, `scripts/grid_ml100k_deeprec.json`;
the test split was scored once per preset, after the choice.
"""
PRESETS: dict[str, dict] = {
    # The seed notebook's network (n-20-10-20-n, sigmoid, RMSprop). Its weight_decay=0.5 also
    # decays the biases and, under a loss averaged over observed ratings, drives predictions
    # to ~0 (RMSE 2.78 here); lr 1e-3, batches of 16 and no decay are what validation chose.
    "sae-seed": dict(model="sae", hidden=[20, 10], optimizer="rmsprop", lr=0.001, batch_size=16,
                     epochs=300, patience=30),
    # Sedhain et al.: 500 sigmoid units, identity output, lambda over the paper's grid.
    "autorec-i": dict(model="autorec-i", hidden=[500], l2=100.0, dropout=0.5, batch_size=1682,
                      lr=0.003, epochs=600, patience=40),
    "autorec-u": dict(model="autorec-u", hidden=[500], l2=100.0, dropout=0.3, batch_size=256,
                      lr=0.001, epochs=300, patience=25),
    # DeepRecommender family, user-based (the one we serve): SELU, dropout 0.8 on the code,
    # user-mean centering, inputs scaled by 1/sqrt(#rated) beside the rated-item indicator,
    # denoising scored on the hidden ratings; validated like u1's test users (30% of users hide
    # up to 80% of their history). `deeprec-plain` is that network alone (validation 0.9357);
    # `deeprec` also distils I-AutoRec (trained first on the same ratings) into it: the teacher's
    # predictions are dense targets for every unrated item (validation 0.9086).
    "deeprec-plain": dict(model="deeprec", hidden=[256, 128], activation="selu", dropout=0.8,
                          center=True, last_activation=False, implicit=True, input_norm=True,
                          corruption=0.5, loss_on="dropped", weight_decay=0.001, lr=0.001, batch_size=32,
                          epochs=300, patience=25, val_scheme="users", val_fraction=0.3),
    "deeprec": dict(model="deeprec", hidden=[256, 128], activation="selu", dropout=0.8,
                    center=True, last_activation=False, implicit=True, input_norm=True,
                    corruption=0.5, loss_on="dropped", weight_decay=0.00003, lr=0.001, batch_size=32,
                    epochs=300, patience=25, val_scheme="users", val_fraction=0.3,
                    teacher="autorec-i", distill=3.0, refit=True),
    # DeepRecommender's own recipe (SGD momentum, lr 0.005, dense re-feeding, n-512-512-1024).
    "deeprec-paper": dict(model="deeprec", hidden=[512, 512, 1024], activation="selu", dropout=0.8,
                          optimizer="sgd", momentum=0.9, lr=0.005, refeed=True, batch_size=128,
                          last_activation=False, epochs=300, patience=25),
    # GLocal-K (Han et al. 2021) with its ML-100K settings: 500-500 local-kernel layers,
    # lambda_2 20, lambda_s 0.006, 30 pre-training epochs of 5 L-BFGS iterations, then global-kernel
    # fine-tuning; the epoch is chosen on validation, then refit on all of u1.base.
    "glocal-k": dict(model="glocal-k", hidden=[500, 500], optimizer="lbfgs", l2=20.0, kernel_l2=0.006,
                     kernel_dim=5, gk_size=3, dot_scale=1.0, lbfgs_iters=5, pretrain_epochs=30,
                     epochs=200, patience=15, val_fraction=0.05, refit=True),
}
# The lowest validation RMSE found: GLocal-K and I-AutoRec stacked with non-negative weights
# fitted on one shared validation slice (builder/blend.py), members refit on all of u1.base.
PRESETS["best"] = dict(blend=["glocal-k", "autorec-i"], val_fraction=0.05)


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
