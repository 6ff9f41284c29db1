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
# Top-N models (builder/topn.py): scores for ranking, validated on ranking: every u1.base user
# hides 20% of their ratings, the model sees the rest, and is scored by recall@10 on the hidden
# ones rated >= 4 (NDCG@100 breaks ties and stops Mult-DAE/VAE early). Grids and picks from
# `python scripts/grid_topn.py` (validation only; the test set is not read).
TOP_N_PRESETS: dict[str, dict] = {
    # Most popular by u1.base rating count: the baseline every top-N figure is set against.
    # threshold {0, 4}: 0 (count every rating) validates at recall@10 0.155 vs 0.144.
    "popularity": dict(model="popularity", implicit_threshold=0.0),
    # EASE (Steck 2019). Grid: implicit_threshold {0, 4} x ease_lambda {50, 100, 200, 300, 500,
    # 800, 1200, 2000}; validation recall@10 peaks at threshold 4, lambda 300 (0.297; threshold 0
    # peaks at lambda 300 too, 0.290). Liked ratings only: a 1- or 2-star rating is no vote for
    # the item's neighbours.
    "ease": dict(model="ease", implicit_threshold=4.0, ease_lambda=300.0),
    # EASE on rating values with EDLAE's dropout penalty and a popularity correction
    # (builder/models/ease.py). Grid (`--models ease-variants`, implicit_threshold 0: every rating
    # is input): ease_input {binary, values} x ease_lambda {500, 1000, 2000, 5000, 10000} x
    # edlae_dropout {0, 0.5, 0.67} x popularity_gamma {0, 0.1, 0.2, 0.3}. Validation recall@10
    # peaks at values, lambda 5000, p 0.5, gamma 0.2: 0.313 (NDCG@100 0.425), against 0.297 for
    # `ease`; values alone (lambda 5000, p 0, gamma 0) 0.303, the best binary input 0.290.
    # RDLAE's bound (`--models rdlae`: rdlae_xi {0, 0.05, 0.1, 0.2} x lambda {1000, 5000} x p {0,
    # 0.5}, values, gamma 0.2) adds nothing here: xi 0.05 ties xi 0 (0.3129), 0.1 gives 0.3122,
    # 0.2 gives 0.3056; so rdlae_xi stays 0.
    "ease-values": dict(model="ease", implicit_threshold=0.0, ease_input="values", ease_lambda=5000.0,
                        edlae_dropout=0.5, popularity_gamma=0.2),
    # Mult-DAE / Mult-VAE (Liang et al. 2018) with the paper's [600, 200] tanh network and input
    # dropout 0.5, Adam 1e-3, batches of 100 users, early stopping on validation NDCG@100
    # (patience 20), then refit on all of u1.base for the chosen epochs.
    # Mult-DAE grid: implicit_threshold {0, 4} x weight_decay {0, 1e-5}: threshold 4 validates at
    # recall@10 0.280 (0 at 0.263); weight decay changes nothing (+-0.0003); pick 4, 0.
    # Mult-VAE grid (anneal_cap 0.2): implicit_threshold {0, 4} x total_anneal_steps {200, 2000}:
    # 4 / 2000 validates at recall@10 0.297 (4 / 200: 0.290; threshold 0: 0.274 either way).
    # With ~10 updates an epoch the cap is reached only with 200 steps; a cap of 1.0 at 2000
    # steps validated exactly as 0.2 (the best epoch comes before beta reaches 0.2).
    "mult-dae": dict(model="mult-dae", hidden=[600, 200], input_dropout=0.5, lr=1e-3, batch_size=100,
                     epochs=200, patience=20, implicit_threshold=4.0, weight_decay=0.0, refit=True),
    "mult-vae": dict(model="mult-vae", hidden=[600, 200], input_dropout=0.5, lr=1e-3, batch_size=100,
                     epochs=200, patience=20, total_anneal_steps=2000, anneal_cap=0.2,
                     implicit_threshold=4.0, refit=True),
    # ELSA (Vančura et al. 2022, builder/models/elsa.py): EASE with B = A A^T - I, A [n_items, r],
    # for catalogues EASE's n x n matrix cannot hold (benchmarks/bench_catalogue.py,
    # docs/scaling.md). Grid (`--models elsa`, implicit_threshold 4 as EASE's pick, batches of 128,
    # patience 10): elsa_rank {64, 128, 256} x lr {1e-3, 1e-2, 1e-1}; validation recall@10 0.288-0.292
    # everywhere (rank 128 and 256 no better: 0.290 / 0.292 at best); picks rank 64, lr 0.1: 0.292
    # (NDCG@100 0.400, best epoch 11; lr 1e-2 ties at 0.292, NDCG 0.403), beside EASE's 0.297 and
    # ease-values' 0.313.
    "elsa": dict(model="elsa", elsa_rank=64, lr=0.1, batch_size=128, epochs=100, patience=10,
                 implicit_threshold=4.0, refit=True),
    # Low-rank EASE (builder/models/ease_lowrank.py): EASE's closed form on a randomized rank-r SVD
    # of the liked ratings, memory n_items x r, for catalogues EASE's n x n matrix cannot hold
    # (docs/scaling.md). Grid (`--models ease-lowrank`, implicit_threshold 4 as EASE's pick, 2 power
    # iterations): svd_rank {64, 128, 256, 512} x ease_lambda {50, 100, 200, 300, 500, 1000};
    # validation recall@10 rises with the rank (best per rank 0.282, 0.285, 0.292, 0.297) and peaks
    # at rank 512, lambda 300: 0.2966 (NDCG@100 0.400), EASE's 0.297 (rank 64: 0.282 at lambda 1000).
    "ease-lowrank": dict(model="ease-lowrank", implicit_threshold=4.0, svd_rank=512, ease_lambda=300.0,
                         svd_power_iters=2),
    # RecVAE (Shenbin et al. 2020) with the paper's ML-20M settings: hidden width 600, latent 200,
    # gamma 0.005, input dropout 0.5, Adam 5e-4, batches of 500 users, 3 encoder passes then one
    # decoder pass per epoch; early stopping on validation NDCG@100, then refit on all of u1.base.
    # Validation recall@10 0.264 (NDCG@100 0.377, best epoch 25), below Mult-VAE's 0.297.
    # Grid (`--models recvae`): recvae_gamma {0.005, 0.01, 0.02}: 0.264 / 0.268 / 0.288 (NDCG@100
    # 0.377 / 0.387 / 0.402, best epochs 25 / 30 / 68): a stronger KL weight helps on ML-100K's
    # few users. The preset keeps the paper's 0.005 until gamma 0.02 (and above) is scored on u1.
    "recvae": dict(model="recvae", hidden=[600, 200], input_dropout=0.5, lr=5e-4, batch_size=500,
                   recvae_gamma=0.005, recvae_encoder_epochs=3, epochs=200, patience=20,
                   implicit_threshold=4.0, refit=True),
}
PRESETS.update(TOP_N_PRESETS)
# The lowest validation RMSE found: GLocal-K and I-AutoRec stacked with non-negative weights
# fitted on one shared validation slice (builder/blend.py), members refit on all of u1.base.
PRESETS["best"] = dict(blend=["glocal-k", "autorec-i"], val_fraction=0.05)


def preset(name: str) -> dict:
    """A copy of the named recipe's TrainConfig changes; KeyError naming the known presets otherwise."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
