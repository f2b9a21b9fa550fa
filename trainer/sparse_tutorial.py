"""The sparse_federated_learning tutorial's own tiny data set and run, for the reference check of the algorithm
(trainer/sparse_select.py) against the tutorial's printed numbers.

Twelve words in three groups (fruit, vegetable, fish) and three tags, one OOV token and one OOV tag; three
clients, batched by 2, 3 and 2; 10 rounds on the cohorts the tutorial printed (``np.random`` unseeded there, so
the cohorts are pinned here as printed), ``MAX_TOKENS_SELECTED_PER_CLIENT = 6``, client SGD 0.1, zero-initialised
table. After training the tutorial prints each client's loss, precision, AUC and recall@2 (:data:`PRINTED_AFTER`).
"""

from __future__ import annotations

import collections

import numpy as np

from trainer import sparse_select

FRUIT_WORDS = ["apple", "orange", "pear", "kiwi"]
VEGETABLE_WORDS = ["carrot", "broccoli", "arugula", "peas"]
FISH_WORDS = ["trout", "tuna", "cod", "salmon"]
WORD_VOCAB = FRUIT_WORDS + VEGETABLE_WORDS + FISH_WORDS
TAG_VOCAB = ["FRUIT", "VEGETABLE", "FISH"]
NUM_OOV_BUCKETS = 1
MAX_TOKENS_SELECTED_PER_CLIENT = 6
CLIENT_LEARNING_RATE = 0.1  # client_train_fn_tff's SGD
BATCH_SIZES = (2, 3, 2)
CLIENTS = (
    [
        ("apple orange apple orange", "FRUIT"),
        ("carrot trout", "VEGETABLE|FISH"),
        ("orange apple", "FRUIT"),
        ("orange", "ORANGE|CITRUS"),
    ],
    [
        ("pear cod", "FRUIT|FISH"),
        ("arugula peas", "VEGETABLE"),
        ("kiwi pear", "FRUIT"),
        ("sturgeon", "FISH"),
        ("sturgeon bass", "FISH"),
    ],
    [(" ".join([*WORD_VOCAB, "oovword"]), "|".join(TAG_VOCAB)), ("salmon oovword", "FISH|OOVTAG")],
)
# "Training on clients ..." as the tutorial printed it (docs/tutorials/sparse_federated_learning.ipynb).
PRINTED_COHORTS = ([0, 1], [0, 2, 1], [2, 0], [1, 0, 2], [2], [2, 0], [1, 2, 0], [0], [2], [1, 2])
# "After training": Client 1..3: loss, precision, auc, recall_at_2 (two decimals, as printed).
PRINTED_AFTER = (
    {"loss": 0.67, "precision": 0.80, "auc": 0.91, "recall_at_2": 0.80},
    {"loss": 0.68, "precision": 0.67, "auc": 0.96, "recall_at_2": 1.00},
    {"loss": 0.65, "precision": 1.00, "auc": 0.93, "recall_at_2": 0.80},
)
PRINTED_BEFORE = (
    {"loss": 0.69, "precision": 0.00, "auc": 0.50, "recall_at_2": 0.60},
    {"loss": 0.69, "precision": 0.00, "auc": 0.50, "recall_at_2": 0.50},
    {"loss": 0.69, "precision": 0.00, "auc": 0.50, "recall_at_2": 0.40},
)


def encode(text: str, tags: str, words: list[str], tag_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's ``to_ids``: the distinct token ids of ``text`` split on whitespace in increasing order (an
    unknown word is the OOV id ``len(words)``), and the multi-hot of ``tags`` split on ``|`` (OOV likewise)."""
    word_ids, tag_ids = {w: i for i, w in enumerate(words)}, {t: i for i, t in enumerate(tag_names)}
    tokens = np.unique([word_ids.get(w, len(words)) for w in text.split()]).astype(np.int64)
    multi_hot = np.zeros(len(tag_names) + NUM_OOV_BUCKETS, np.float32)
    multi_hot[[tag_ids.get(t, len(tag_names)) for t in tags.split("|")]] = 1.0
    return tokens, multi_hot


def padded(examples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Examples as ([n, L] token ids padded with -1, [n, num_tags] tags)."""
    width = max(len(tokens) for tokens, _ in examples)
    ids = np.full((len(examples), width), -1, np.int64)
    for i, (tokens, _) in enumerate(examples):
        ids[i, : len(tokens)] = tokens
    return ids, np.stack([tags for _, tags in examples])


def client_examples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [padded([encode(text, tags, WORD_VOCAB, TAG_VOCAB) for text, tags in raw]) for raw in CLIENTS]


def problem() -> sparse_select.SparseProblem:
    return sparse_select.SparseProblem(
        vocab_size=len(WORD_VOCAB) + NUM_OOV_BUCKETS,
        num_tags=len(TAG_VOCAB) + NUM_OOV_BUCKETS,
        max_tokens=MAX_TOKENS_SELECTED_PER_CLIENT,
        client_learning_rate=CLIENT_LEARNING_RATE,
    )


def run(cohorts=PRINTED_COHORTS) -> dict:
    """The tutorial's training cell on its cohorts: the per-client metrics before and after, the final table,
    and the per-round client stats (bytes, selected rows)."""
    spec = problem()
    examples = client_examples()
    datasets = [
        sparse_select.batches(ids, tags, spec.vocab_size, size)
        for (ids, tags), size in zip(examples, BATCH_SIZES, strict=True)
    ]
    sparse_round = sparse_select.build_sparse_round(spec)
    table = np.zeros((spec.vocab_size, spec.num_tags), np.float32)
    before = [sparse_select.evaluate(table, ids, tags) for ids, tags in examples]
    stats = []
    for cohort in cohorts:
        table, round_stats = sparse_round(table, [datasets[i] for i in cohort])
        table = np.asarray(table)
        stats.append([collections.OrderedDict((k, np.asarray(v).item()) for k, v in s.items()) for s in round_stats])
    after = [sparse_select.evaluate(table, ids, tags) for ids, tags in examples]
    return {"before": before, "after": after, "table": table, "stats": stats}
