"""A staged split as TFF's ``tff.simulation.datasets.ClientData``, and the working_with_client_data
tutorial's three ways of feeding it to a learning process.

:class:`StagedClientData` serves a staged split's clients (``client_ids``) two ways, as TFF's own
``ClientData`` classes do:

- ``create_tf_dataset_for_client`` reads one client's row group from the Parquet shards
  (``tasks/shards.py``) in Python: nothing else of the data set is read;
- ``serializable_dataset_fn`` / ``dataset_computation`` must run inside TFF's runtime (the C++
  ``worker_binary``, with no Python), so it cannot call pyarrow. It carries the split's examples in its
  graph as constants, with the client ids, offsets and counts, and slices out the requested client: the
  pattern of TFF's ``from_tensor_slices`` ClientData, for data sets of simulation size (up to
  :data:`MAX_EMBEDDED_BYTES`; a larger split is refused with the fix). TFF's ``SqlClientData`` reads its
  SQLite file with a TF op instead; staged Parquet has no TF reader.

Elements are ``OrderedDict(<x column>=..., <label column>=...)`` with the staged names (digits: ``pixels``,
``label``), one example each, as TFF's EMNIST ClientData yields ``pixels`` and ``label``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import shards

# The examples a dataset_computation may carry in its graph (TensorFlow's GraphDef limit is 2 GB).
MAX_EMBEDDED_BYTES = 256 << 20


class Error(Exception):
    """Base class for ClientData errors."""


class ClientDataError(Error, ValueError):
    """An unknown client, a split without clients, or a split too large for a dataset computation."""


class StagedClientData(tff.simulation.datasets.ClientData):
    """The clients of one split of a staged ``image``/``vector`` data set, as a TFF ``ClientData``."""

    def __init__(self, manifest: shards.Manifest, split: str = "train") -> None:
        self._manifest, self._split = manifest, split
        if manifest.kind not in ("image", "vector") or manifest.schema.label is None:
            raise ClientDataError(
                f"A StagedClientData serves labelled images or vectors; {manifest.root} holds {manifest.kind} data. "
                "Fix: stage an image or vector data set (text and ratings train through their own recipes)."
            )
        self._ids = manifest.client_ids(split)
        if not self._ids:
            raise ClientDataError(
                f"split {split!r} of {manifest.root} has no clients. Got splits "
                f"{manifest.splits}. Fix: pick one of them."
            )
        x = manifest.x_feature
        self._x_name, self._y_name = x.name, manifest.schema.label
        self._spec = collections.OrderedDict(
            [(self._x_name, tf.TensorSpec(x.shape, tf.as_dtype(x.dtype))), (self._y_name, tf.TensorSpec((), tf.int64))]
        )
        self._dataset_fn: Callable | None = None

    @property
    def client_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def element_type_structure(self):
        return self._spec

    def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
        """One client's examples, read from its row group of the shards."""
        try:
            examples = self._manifest.read_client(self._split, client_id)
        except shards.UnknownClientError as e:
            raise ClientDataError(
                f"No client {client_id!r} in split {self._split!r} ({len(self._ids)} clients, "
                f"e.g. {self._ids[:3]}). Fix: pick one of client_ids."
            ) from e
        return tf.data.Dataset.from_tensor_slices(self._element(examples.x, examples.y))

    @property
    def serializable_dataset_fn(self) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """client id (a string tensor) -> that client's dataset, in TensorFlow ops only (see the module)."""
        if self._dataset_fn is None:
            self._dataset_fn = self._build_dataset_fn()
        return self._dataset_fn

    def _element(self, x, y) -> collections.OrderedDict:
        return collections.OrderedDict([(self._x_name, x), (self._y_name, y)])

    def _build_dataset_fn(self) -> Callable[[tf.Tensor], tf.data.Dataset]:
        counts = np.array([e["num_examples"] for e in self._manifest.clients(self._split)], np.int64)
        x_bytes = int(counts.sum()) * int(np.prod(self._spec[self._x_name].shape)) * self._spec[self._x_name].dtype.size
        if x_bytes > MAX_EMBEDDED_BYTES:
            raise ClientDataError(
                f"split {self._split!r} holds {x_bytes / 2**20:.0f} MiB of examples; a dataset_computation carries "
                f"at most {MAX_EMBEDDED_BYTES >> 20} MiB in its graph. Fix: stage fewer clients (num_clients), or "
                "feed datasets built in Python (create_tf_dataset_for_client) to the process's next."
            )
        parts = [self._manifest.read_client(self._split, cid) for cid in self._ids]
        all_x, all_y = np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        ids = np.array(self._ids, dtype=object)

        def dataset_fn(client_id):
            # Constants made inside the trace: the graph TFF serialises carries the examples.
            known = tf.constant(ids, tf.string)
            match = tf.equal(known, client_id)
            check = tf.debugging.Assert(tf.reduce_any(match), ["No such client in this ClientData:", client_id])
            with tf.control_dependencies([check]):
                i = tf.argmax(tf.cast(match, tf.int32))
            start, n = tf.gather(tf.constant(starts), i), tf.gather(tf.constant(counts), i)
            x = tf.constant(all_x)[start : start + n]
            y = tf.constant(all_y)[start : start + n]
            return tf.data.Dataset.from_tensor_slices(self._element(x, y))

        return dataset_fn


def model_input_preprocess(
    input_shape: tuple[int, ...], x_name: str, y_name: str, *, batch_size: int, local_epochs: int
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """The tutorial's ``preprocess_dataset``, for our models: elements renamed to ``x``/``y``, ``x`` as float32
    of ``input_shape`` (uint8 scaled to [0, 1], as the trainer does), ``local_epochs`` passes, batches of
    ``batch_size``. Deterministic: the tutorial's unseeded ``shuffle(5)`` would give each feeding path
    another order, and the three paths must see the same batches."""

    def to_model_input(element):
        x = element[x_name]
        x = tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else tf.cast(x, tf.float32)
        return collections.OrderedDict(x=tf.reshape(x, input_shape), y=tf.cast(element[y_name], tf.int64))

    def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.map(to_model_input).repeat(local_epochs).batch(batch_size)

    return preprocess


def manual_composition(dataset_computation, process) -> tff.templates.IterativeProcess:
    """The tutorial's "manually composing preprocessing logic": a federated computation that maps the
    dataset computation over the client ids at the clients and hands the datasets to ``process.next``."""
    clients_type = tff.FederatedType(dataset_computation.type_signature.parameter, tff.CLIENTS)

    @tff.federated_computation(process.next.type_signature.parameter[0], clients_type)
    def next_from_ids(server_state, client_ids):
        return process.next(server_state, tff.federated_map(dataset_computation, client_ids))

    return tff.templates.IterativeProcess(initialize_fn=process.initialize, next_fn=next_from_ids)


def three_ways(
    process, preprocessed: tff.simulation.datasets.ClientData, start_state, cohorts: list[list[str]]
) -> dict[str, float]:
    """Runs ``process`` from ``start_state`` over ``cohorts`` (client ids per round) three ways: datasets built
    in Python and passed to ``next``; client ids to ``compose_dataset_computation_with_learning_process``;
    client ids to :func:`manual_composition`. Returns the largest |difference| of any state value between
    the first and each other way after the last round, the examples each trained on, and whether the
    composed and manual processes have the same ``next`` result type (the tutorial's last cell)."""
    composed = tff.simulation.compose_dataset_computation_with_learning_process(
        preprocessed.dataset_computation, process
    )
    manual = manual_composition(preprocessed.dataset_computation, process)
    states = [start_state] * 3
    examples = [0, 0, 0]
    for cohort in cohorts:
        outputs = [
            process.next(states[0], [preprocessed.create_tf_dataset_for_client(cid) for cid in cohort]),
            composed.next(states[1], cohort),
            manual.next(states[2], cohort),
        ]
        states = [_state(output) for output in outputs]
        for k, output in enumerate(outputs):
            examples[k] += int(_metrics(output)["client_work"]["train"]["num_examples"])
    leaves = [[np.asarray(v, np.float64) for v in tf.nest.flatten(s)] for s in states]

    def max_difference(other):
        return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(leaves[0], other, strict=True))

    return {
        "max_state_difference_composed": max_difference(leaves[1]),
        "max_state_difference_manual": max_difference(leaves[2]),
        "examples_python_datasets": examples[0],
        "examples_composed": examples[1],
        "examples_manual": examples[2],
        "composed_and_manual_same_result_type": float(
            str(composed.next.type_signature.result) == str(manual.next.type_signature.result)
        ),
    }


def _state(output):
    return output.state if hasattr(output, "state") else output[0]


def _metrics(output):
    return output.metrics if hasattr(output, "metrics") else output[1]
