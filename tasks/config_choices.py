"""The choices a config field can take (data sets, models, algorithms, engines, aggregators ...), apart from
the fields themselves (tasks/config.py, which re-exports every name here). Standard library only."""

from __future__ import annotations

# Chunk tasks are a fixed chain built when the DAG is parsed; a config may use at most this many.
MAX_CHUNKS = 10

DATASETS = ("digits", "h5", "tff_sqlite", "leaf", "table", "shakespeare", "movielens")
PATH_DATASETS = ("h5", "tff_sqlite", "leaf", "table")
# Kinds of the named data sets known before staging (path sources are known once read).
DATASET_KINDS = {"digits": "image", "shakespeare": "text", "movielens": "ratings"}
PARTITIONS = ("dirichlet", "iid", "pathological", "shards")
SPLITS = ("auto", "central", "within_client", "by_client", "source")
MODELS = ("cnn", "mlp", "softmax", "matrix_factorization", "char_gru", "vgg_small", "vgg_large", "bag_of_words_logistic")
# Models of text data (next-character prediction; trainer/text.py), trained on the 'tff' engine.
TEXT_MODELS = ("char_gru",)
# A model in MLflow's registry by alias: the warm start of a run (and where its pretraining registers).
WARM_START_PATTERN = r"^(models:/[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}@[A-Za-z][A-Za-z0-9_\-]{0,99})?$"
# Names of trainer/algorithms.py's ALGORITHMS table (a test keeps the two in step).
ALGORITHMS = ("fedavg", "fedavg_unweighted", "fedsgd", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fed_recon",
              "sparse_select")
# Federated Reconstruction (trainer/reconstruction.py): matrix factorisation of the movielens ratings only.
RECONSTRUCTION = {"algorithm": "fed_recon", "model": "matrix_factorization", "dataset": "movielens"}
CLIENT_SAMPLING = ("uniform", "poisson", "fixed")
# Recipe sizes (recipes/<name>.yaml): "default" runs in minutes on 2 cores, "full" as the tutorial, "tiny" in tests.
RECIPE_VARIANTS = ("default", "full", "tiny")
# Training engines (README "Training on a GPU"): TFF's learning processes in worker_binary (the reference,
# CPU only in TFF's pip build), or client work as a tf.function in the trainer (a GPU when one is visible)
# with TFF's aggregation and server optimizer. The hybrid runs these algorithms (all but fed_recon and sparse_select).
ENGINES = ("tff", "hybrid", "jax")  # jax: tasks/config_jax.py (and why not "tff_jax")
# Sparse federated learning (trainer/sparse_training.py): each client federated_selects the rows of the words it
# uses from a bag-of-words model of the plays; only together, on the tff engine (so not a hybrid algorithm).
SPARSE_SELECT = {"algorithm": "sparse_select", "model": "bag_of_words_logistic", "dataset": "shakespeare"}
HYBRID_ALGORITHMS = tuple(a for a in ALGORITHMS if a not in (RECONSTRUCTION["algorithm"], SPARSE_SELECT["algorithm"]))
# TFF's recommended model-update aggregators (tff.learning.*_aggregator); built in trainer/aggregators.py.
AGGREGATORS = ("mean", "robust", "dp", "compression", "secure", "custom")
DP_CLIPPING = ("adaptive", "fixed")
