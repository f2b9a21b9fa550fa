"""Client-efficient large-model federated learning with ``tff.federated_select`` and sparse aggregation: TFF's
tutorials federated_select and sparse_federated_learning, on TFF 0.87.

The model is the sparse tutorial's multi-label logistic regression without bias: one weight table of shape
``[vocab_size, num_tags]`` (a row per token, a column per tag), ``p(tag | tokens) = sigmoid(sum of the rows of
the example's tokens)``. One round (:func:`build_sparse_round`), as the tutorial writes it:

1. each client counts in how many of its examples each token occurs and keeps the ``max_tokens`` most frequent
   (``keys_for_client``; ties go to the smaller token id, as ``tf.argsort`` orders them), padded with key 0;
2. ``tff.federated_select`` sends each client exactly those rows of the server's table (``table[keys]``), the
   padding included, so every client downloads ``max_tokens x num_tags`` float32 values, not the whole table;
3. the client maps its tokens to local ids ``0..max_tokens-1`` (tokens not selected are dropped), trains its
   small ``[max_tokens, num_tags]`` model with SGD on the binary cross-entropy, and sends back the change of its
   ``actual_num_tokens`` real rows with their keys (an ``IndexedSlices``-like update);
4. the server sums the sparse updates into a dense table (``federated_aggregate``), divides by the number of
   clients and adds the mean update to its table (server learning rate 1 in the tutorial; ``server_learning_rate``
   scales it).

TFF 0.87 has no ``SparseTensorSpec`` in ``tff.SequenceType``, where the tutorial's datasets yield a
``tf.SparseTensor`` of tokens. Here a batch carries that sparse tensor's three components as plain tensors
(:func:`batch_spec`: ``tokens=<indices=int64[?,2], values=int32[?], dense_shape=int64[2]>``, the tutorial's
printed type) and every TF function rebuilds the ``tf.SparseTensor`` from them: the same values, the same ops.

The client's local training is written with TF ops (a ``dataset.reduce`` of SGD steps) instead of a Keras
model built inside the computation (FACTS.md: Keras models built under TFF traces break each other); the
arithmetic is the tutorial's: a sigmoid layer without bias, Keras' mean binary cross-entropy, plain SGD.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

TOKEN_DTYPE = tf.int64  # tf.SparseTensor indices
SELECT_KEY_DTYPE = tf.int32  # tff.federated_select keys
TOKEN_COUNT_DTYPE = tf.int32
FEATURE_DTYPE = tf.int32
FLOAT_BYTES = 4
KEY_BYTES = 4


class Error(Exception):
    """Base class for sparse federated learning errors."""


@dataclasses.dataclass(frozen=True)
class SparseProblem:
    """The sizes of one sparse model: ``vocab_size`` rows (OOV token included), ``num_tags`` columns (OOV tag
    included), ``max_tokens`` rows selected per client, and the clients' SGD learning rate."""

    vocab_size: int
    num_tags: int
    max_tokens: int
    client_learning_rate: float
    server_learning_rate: float = 1.0  # the tutorial's: the table plus the mean update

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= self.vocab_size:
            raise Error(
                f"max_tokens must be in [1, vocab_size={self.vocab_size}]. Got {self.max_tokens}. "
                "Fix: select at most as many rows as the table has."
            )

    @property
    def row_bytes(self) -> int:
        return self.num_tags * FLOAT_BYTES

    @property
    def dense_model_bytes(self) -> int:
        return self.vocab_size * self.row_bytes


def batch_spec(num_tags: int) -> collections.OrderedDict:
    """A batch as TFF 0.87 can carry it: the token ``tf.SparseTensor``'s components and the multi-hot tags."""
    tokens = collections.OrderedDict(
        indices=tff.TensorType(np.int64, [None, 2]),
        values=tff.TensorType(np.int32, [None]),
        dense_shape=tff.TensorType(np.int64, [2]),
    )
    return collections.OrderedDict(tokens=tokens, tags=tff.TensorType(np.float32, [None, num_tags]))


def sparse_tokens(batch) -> tf.SparseTensor:
    tokens = batch["tokens"]
    return tf.SparseTensor(tokens["indices"], tokens["values"], tokens["dense_shape"])


def batches(token_ids: np.ndarray, tags: np.ndarray, vocab_size: int, batch_size: int) -> tf.data.Dataset:
    """A client's dataset: ``token_ids`` [n, L] int64, each row an example's distinct tokens in increasing order,
    padded with -1; ``tags`` [n, num_tags] multi-hot float32. Batches of ``batch_size`` whose tokens are the
    components of the ``[batch, vocab_size]`` sparse tensor of ones the tutorial's preprocessing builds."""
    ids = np.asarray(token_ids, np.int64).reshape(len(tags), -1)

    def components(ids_batch, tags_batch):
        where = tf.where(ids_batch >= 0)  # row-major: rows ascending, tokens ascending within a row
        tokens = tf.gather_nd(ids_batch, where)
        indices = tf.stack([where[:, 0], tokens], axis=1)
        dense_shape = tf.stack([tf.shape(ids_batch, out_type=TOKEN_DTYPE)[0], tf.constant(vocab_size, TOKEN_DTYPE)])
        return collections.OrderedDict(
            tokens=collections.OrderedDict(
                indices=indices, values=tf.ones_like(tokens, dtype=FEATURE_DTYPE), dense_shape=dense_shape
            ),
            tags=tags_batch,
        )

    data = tf.data.Dataset.from_tensor_slices((ids, np.asarray(tags, np.float32)))
    return data.batch(batch_size).map(components)


# -- the client's steps (the tutorial's functions, on the carried components) -------------------------------
def keys_for_client(dataset: tf.data.Dataset, vocab_size: int, max_tokens: int):
    """(``max_tokens`` int32 keys, the number of real ones): the client's most frequent tokens by the number of
    examples they occur in, padded with 0. The tutorial's ``token_count_fn`` and ``keys_for_client``."""
    initial = tf.SparseTensor(
        indices=tf.zeros((0, 1), TOKEN_DTYPE), values=tf.zeros((0,), TOKEN_COUNT_DTYPE), dense_shape=[vocab_size]
    )

    def count(token_counts, batch):
        flat = tf.sparse.reduce_sum(sparse_tokens(batch), axis=0, output_is_sparse=True)
        return tf.sparse.add(token_counts, tf.cast(flat, TOKEN_COUNT_DTYPE))

    counts = dataset.reduce(initial, count)
    tokens = tf.reshape(counts.indices, (-1,))
    order = tf.argsort(counts.values, direction="DESCENDING")
    tokens = tf.gather(tokens, order)
    actual = tf.minimum(max_tokens, tf.shape(tokens)[0])
    selected = tokens[:actual]
    padded = tf.reshape(tf.pad(selected, [[0, max_tokens - tf.shape(selected)[0]]]), (max_tokens,))
    return tf.cast(padded, SELECT_KEY_DTYPE), actual


def local_features(batch, keys, max_tokens: int) -> tf.SparseTensor:
    """The batch's tokens as local ids (their position in ``keys``, the real keys only): ``[batch, max_tokens]``
    ones; tokens not selected are dropped (the tutorial's ``map_to_local_token_ids``, vectorised)."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.cast(keys, TOKEN_DTYPE), tf.range(tf.shape(keys)[0], dtype=TOKEN_DTYPE)),
        default_value=-1,
    )
    tokens = sparse_tokens(batch)
    local = table.lookup(tokens.indices[:, 1])
    kept = local >= 0
    indices = tf.stack([tf.boolean_mask(tokens.indices[:, 0], kept), tf.boolean_mask(local, kept)], axis=1)
    features = tf.SparseTensor(
        indices,
        tf.ones(tf.shape(indices)[:1], tf.float32),
        tf.stack([tokens.dense_shape[0], tf.constant(max_tokens, TOKEN_DTYPE)]),
    )
    return tf.sparse.reorder(features)


def binary_cross_entropy(tags, logits):
    """Keras' ``BinaryCrossentropy()`` of ``sigmoid(logits)``: the mean over tags, then over the batch."""
    return tf.reduce_mean(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tags, logits=logits), -1))


def slices_to_tensor(slices: tf.data.Dataset, max_tokens: int):
    """The selected rows, which federated_select delivers as a dataset in key order, as one tensor."""
    return slices.batch(max_tokens).reduce(tf.zeros([0, 0]), lambda _, rows: rows)


def client_update(problem: SparseProblem, rows, dataset: tf.data.Dataset, keys, actual):
    """Trains the client's ``[max_tokens, num_tags]`` model from its selected ``rows`` (SGD over its batches in
    order) and returns (real keys, their rows' change, loss sum, examples)."""
    keys = keys[:actual]

    def step(state, batch):
        weights, loss_sum, examples = state
        features = local_features(batch, keys, problem.max_tokens)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = binary_cross_entropy(batch["tags"], tf.sparse.sparse_dense_matmul(features, weights))
        weights = weights - problem.client_learning_rate * tape.gradient(loss, weights)
        n = tf.shape(batch["tags"])[0]
        return weights, loss_sum + loss * tf.cast(n, tf.float32), examples + n

    start = tf.reshape(rows, [problem.max_tokens, problem.num_tags])
    weights, loss_sum, examples = dataset.reduce((start, tf.constant(0.0), tf.constant(0)), step)
    return keys, (weights - start)[:actual], loss_sum, examples


def federated_indexed_slices_sum(indices, values, dense_shape):
    """Sums (indices, values) slices @CLIENTS into a dense tensor @SERVER (the tutorial's semi-sparse sum:
    sparse upload, dense accumulation)."""
    zero = tff.tensorflow.computation(lambda: tf.zeros(dense_shape, tf.float32))()

    @tff.tensorflow.computation
    def accumulate(dense, client_value):
        rows, slices = client_value
        return dense + tf.convert_to_tensor(tf.IndexedSlices(slices, rows, dense_shape))

    return tff.federated_aggregate(
        (indices, values),
        zero=zero,
        accumulate=accumulate,
        merge=tff.tensorflow.computation(lambda a, b: a + b),
        report=tff.tensorflow.computation(lambda d: d),
    )


def build_sparse_round(problem: SparseProblem) -> tff.Computation:
    """One round: ``(table@SERVER, {batches*}@CLIENTS) -> <table@SERVER, {stats}@CLIENTS>``.

    ``stats`` per client: ``downloaded_bytes`` (the size of the rows federated_select delivered),
    ``uploaded_bytes`` (keys and rows of the update), ``selected_rows`` (the real keys), ``loss_sum`` and
    ``examples`` of the local training. Tables and updates are float32.
    """
    shape = (problem.vocab_size, problem.num_tags)
    data_type = tff.SequenceType(batch_spec(problem.num_tags))
    table_type = tff.TensorType(np.float32, shape)
    keys_fn = tff.tensorflow.computation(
        lambda ds: keys_for_client(ds, problem.vocab_size, problem.max_tokens), data_type
    )
    select_fn = tff.tensorflow.computation(lambda table, key: tf.gather(table, key), table_type, np.int32)

    @tff.tensorflow.computation
    def train_fn(slices, dataset, keys, actual):
        rows = slices_to_tensor(slices, problem.max_tokens)
        update_keys, delta, loss_sum, examples = client_update(problem, rows, dataset, keys, actual)
        stats = collections.OrderedDict(
            downloaded_bytes=tf.size(rows) * FLOAT_BYTES,
            uploaded_bytes=tf.size(update_keys) * KEY_BYTES + tf.size(delta) * FLOAT_BYTES,
            selected_rows=actual,
            loss_sum=loss_sum,
            examples=examples,
        )
        return update_keys, delta, stats

    @tff.tensorflow.computation
    def server_update(table, update_sum, num_clients):
        return table + problem.server_learning_rate * (update_sum / num_clients)

    @tff.federated_computation(tff.FederatedType(table_type, tff.SERVER), tff.FederatedType(data_type, tff.CLIENTS))
    def sparse_round(table, data):
        keys, actual = tff.federated_map(keys_fn, data)
        max_key = tff.federated_value(problem.max_tokens, tff.SERVER)
        slices = tff.federated_select(keys, max_key, table, select_fn)
        update_keys, delta, stats = tff.federated_map(train_fn, (slices, data, keys, actual))
        update_sum = federated_indexed_slices_sum(update_keys, delta, shape)
        num_clients = tff.federated_sum(tff.federated_value(1.0, tff.CLIENTS))
        return tff.federated_map(server_update, (table, update_sum, num_clients)), stats

    return sparse_round


def build_selection(problem: SparseProblem) -> tff.Computation:
    """``(table@SERVER, {batches*}@CLIENTS) -> {<keys, actual, rows>}@CLIENTS``: what federated_select delivers to
    each client (its padded keys and the rows it received), to compare with ``table[keys]``."""
    data_type = tff.SequenceType(batch_spec(problem.num_tags))
    table_type = tff.TensorType(np.float32, (problem.vocab_size, problem.num_tags))
    keys_fn = tff.tensorflow.computation(
        lambda ds: keys_for_client(ds, problem.vocab_size, problem.max_tokens), data_type
    )
    select_fn = tff.tensorflow.computation(lambda table, key: tf.gather(table, key), table_type, np.int32)
    rows_fn = tff.tensorflow.computation(lambda slices: slices_to_tensor(slices, problem.max_tokens))

    @tff.federated_computation(tff.FederatedType(table_type, tff.SERVER), tff.FederatedType(data_type, tff.CLIENTS))
    def selection(table, data):
        keys, actual = tff.federated_map(keys_fn, data)
        slices = tff.federated_select(keys, tff.federated_value(problem.max_tokens, tff.SERVER), table, select_fn)
        return keys, actual, tff.federated_map(rows_fn, slices)

    return selection


def check_selection(table: np.ndarray, selection) -> dict[str, float]:
    """Compares what each client received with ``table[keys]`` and the bytes with rows x row size.

    ``selection``: the output of :func:`build_selection` (keys, actual, rows per client). Returns counts of
    clients whose rows equal ``table[keys]`` exactly and whose received bytes equal keys x row bytes."""
    keys, actual, rows = (list(part) for part in selection)
    row_bytes = table.shape[1] * FLOAT_BYTES
    exact = sum(bool(np.array_equal(np.asarray(r), table[np.asarray(k)])) for k, r in zip(keys, rows, strict=True))
    bytes_match = sum(np.asarray(r).nbytes == len(np.asarray(k)) * row_bytes for k, r in zip(keys, rows, strict=True))
    return {
        "selection_clients_checked": len(keys),
        "selection_clients_exact": int(exact),
        "selection_clients_bytes_match": int(bytes_match),
        "selection_real_rows_mean": float(np.mean([int(a) for a in actual])) if keys else 0.0,
    }


# -- the federated_select tutorial's first example ----------------------------------------------------------
def federated_select_example(server_strings=("a", "b", "c"), client_data=("0,1", "1,2", "2,0")) -> list[str]:
    """The federated_select tutorial's ``broadcast_based_on_client_data``: each client parses two keys from its
    string, receives those elements of the server's list and joins them; the tutorial prints
    ``['a,b', 'b,c', 'c,a']``."""
    keys_type = tff.TensorType(np.int32, [2])
    get_size = tff.tensorflow.computation(lambda x: tf.size(x), tff.TensorType(np.str_, [None]))
    select_fn = tff.tensorflow.computation(
        lambda val, index: tf.gather(val, index), tff.TensorType(np.str_, [None]), np.int32
    )

    @tff.tensorflow.computation(np.str_)
    def keys_for_client_string(client_string):
        split = tf.strings.split([client_string], sep=",")[0]
        return tf.strings.to_number([split[0], split[1]], tf.int32)

    @tff.tensorflow.computation(tff.SequenceType(np.str_))
    def concatenate(values):
        def join(acc, item):
            return tf.cond(tf.math.equal(acc, ""), lambda: item, lambda: tf.strings.join([acc, item], ","))

        return values.reduce("", join)

    @tff.federated_computation(
        tff.FederatedType(tff.TensorType(np.str_, [None]), tff.SERVER), tff.FederatedType(np.str_, tff.CLIENTS)
    )
    def broadcast_based_on_client_data(strings, data):
        keys = tff.federated_map(keys_for_client_string, data)
        assert keys.type_signature.member == keys_type
        values = tff.federated_select(keys, tff.federated_map(get_size, strings), strings, select_fn)
        return tff.federated_map(concatenate, values)

    out = broadcast_based_on_client_data(list(server_strings), list(client_data))
    return [v.decode() if isinstance(v, bytes) else str(v) for v in out]


# -- evaluation (the tutorial's compiled Keras metrics) -----------------------------------------------------
def predict(table: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """``sigmoid(multi-hot(token_ids) @ table)``, ``token_ids`` as :func:`batches` takes them."""
    ids = np.asarray(token_ids, np.int64).reshape(len(token_ids), -1)
    rows, cols = np.nonzero(ids >= 0)
    features = tf.sparse.reorder(
        tf.SparseTensor(
            np.stack([rows, ids[rows, cols]], 1).astype(np.int64),
            np.ones(len(rows), np.float32),
            [len(ids), table.shape[0]],
        )
    )
    return tf.sigmoid(tf.sparse.sparse_dense_matmul(features, tf.constant(table, tf.float32))).numpy()


def score(predictions: np.ndarray, tags: np.ndarray, top_k: tuple[int, ...] = (2,)) -> dict[str, float]:
    """The tutorial's ``model.evaluate`` metrics of ``predictions`` (probabilities): mean binary cross-entropy
    ``loss``, ``precision`` (threshold 0.5), ``auc`` (Keras' ROC AUC over all (example, tag) pairs) and
    ``recall_at_<k>`` (``Recall(top_k=k)``); all batch-independent, so computed on all examples at once."""
    if not len(tags):
        raise Error("score needs at least one example. Got none. Fix: evaluate on clients with examples.")
    labels, predictions = tf.constant(tags, tf.float32), tf.constant(predictions, tf.float32)
    result = {"loss": float(tf.keras.losses.BinaryCrossentropy()(labels, predictions))}
    metrics = {
        "precision": tf.keras.metrics.Precision(),
        "auc": tf.keras.metrics.AUC(),
        **{f"recall_at_{k}": tf.keras.metrics.Recall(top_k=k) for k in top_k},
    }
    for name, metric in metrics.items():
        metric.update_state(labels, predictions)
        result[name] = float(metric.result())
    return result


def evaluate(table: np.ndarray, token_ids: np.ndarray, tags: np.ndarray, top_k: tuple[int, ...] = (2,)) -> dict:
    """:func:`score` of the table's predictions."""
    return score(predict(table, token_ids), tags, top_k)
