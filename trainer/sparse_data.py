"""The plays as a sparse tag-prediction task (algorithm ``sparse_select``): bag-of-words of a passage of speech ->
the play it is from.

The sparse tutorial predicts a StackOverflow post's tags from the bag of its words (its own example: 12 words,
3 tags). Here the clients are the staged Shakespeare roles (``<PLAY>_<ROLE>``), an example is a passage of
:data:`LINES_PER_EXAMPLE` consecutive lines of a role's speech, its tokens the passage's distinct words (lower
case, ``[a-z]+('[a-z]+)*``) and its one tag the play (one of the configured ``plays``, in their sorted order). The
vocabulary is the ``vocab_size`` words that occur in the most training lines (ties by the word), built from the
training clients only (the held-out and test roles never shape it), plus one OOV token, as the tutorial's
``NUM_OOV_BUCKETS = 1``; every play is a known tag, so there is no OOV tag. A large vocabulary and roles that
use a few hundred words each make the model worth selecting rows from: each client downloads
``max_tokens_per_client`` of its ``vocab_size + 1`` rows.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

from tasks import shards
from tasks.config import ExperimentConfig

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# An example is a passage of this many consecutive lines of a role (its last passage may be shorter): one line has
# ~7 words, too few to tell 14 plays apart; the tutorial's StackOverflow examples are whole posts.
LINES_PER_EXAMPLE = 5


class Error(Exception):
    """Base class for sparse-data errors."""


def words(line: str) -> set[str]:
    """The distinct words of a line, lower case."""
    return set(WORD.findall(line.lower()))


def id_prefix(play: str) -> str:
    """``romeo_and_juliet`` -> ``ROMEO_AND_JULIET_`` (the staged client ids' play part; tasks/sources/shakespeare)."""
    return re.sub(r"[^A-Z0-9]+", "_", play.upper()).strip("_") + "_"


def play_of(client_id: str, plays: list[str]) -> int:
    """The index in ``plays`` of the play a role's client id belongs to (the longest matching prefix)."""
    matches = [(len(id_prefix(p)), i) for i, p in enumerate(plays) if client_id.startswith(id_prefix(p))]
    if not matches:
        raise Error(
            f"client {client_id!r} belongs to none of the plays {plays}. Fix: stage the data set with the "
            "same plays as the run (plays=...)."
        )
    return max(matches)[1]


@dataclasses.dataclass(frozen=True)
class RoleLines:
    """One client's examples: ``token_ids`` [n, L] (distinct, increasing, padded with -1), ``tags`` [n, plays]."""

    client_id: str
    token_ids: np.ndarray
    tags: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.tags)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    words: list[str]  # row i of the table is words[i]; row len(words) is the OOV token

    @property
    def size(self) -> int:
        return len(self.words) + 1

    def encode(self, lines, tag: int, num_tags: int, client_id: str = "") -> RoleLines:
        """A role's passages (:data:`LINES_PER_EXAMPLE` lines each) as token ids, all tagged ``tag``."""
        index, oov = {w: i for i, w in enumerate(self.words)}, len(self.words)
        lines = list(lines)
        passages = [" ".join(lines[i : i + LINES_PER_EXAMPLE]) for i in range(0, len(lines), LINES_PER_EXAMPLE)]
        tokens = [sorted({index.get(w, oov) for w in words(passage)}) for passage in passages]
        width = max((len(t) for t in tokens), default=0) or 1
        ids = np.full((len(tokens), width), -1, np.int64)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = t
        tags = np.zeros((len(tokens), num_tags), np.float32)
        tags[:, tag] = 1.0
        keep = (ids >= 0).any(axis=1)  # a line without a word (e.g. "--") has no features: dropped
        return RoleLines(client_id, ids[keep], tags[keep])


def build_vocabulary(lines_by_client: dict[str, list[str]], vocab_size: int) -> Vocabulary:
    """The ``vocab_size`` words in the most lines of these clients, ties by the word."""
    counts = collections.Counter()
    for lines in lines_by_client.values():
        for line in lines:
            counts.update(words(line))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return Vocabulary([w for w, _ in ranked[:vocab_size]])


@dataclasses.dataclass(frozen=True)
class PlayLines:
    """A run's clients by role: ``train`` clients train, ``heldout`` (the last ``heldout_clients`` staged training
    clients) and ``test`` (the test split) are only evaluated. ``index``: each client's seed index."""

    vocabulary: Vocabulary
    plays: list[str]
    train: dict[str, RoleLines]
    heldout: dict[str, RoleLines]
    test: dict[str, RoleLines]
    index: dict[str, int]

    @classmethod
    def read(cls, manifest: shards.Manifest, cfg: ExperimentConfig) -> PlayLines:
        if manifest.kind != "text":
            raise Error(
                f"sparse_select predicts a line's play from its words; {manifest.root} holds {manifest.kind} "
                "data. Fix: dataset='shakespeare'."
            )
        plays, column = cfg.parsed_plays, manifest.schema.x
        train_ids, test_ids = manifest.client_ids("train"), manifest.client_ids("test")
        raw = {("train", c): list(manifest.read_columns("train", c, [column])[column]) for c in train_ids}
        raw.update({("test", c): list(manifest.read_columns("test", c, [column])[column]) for c in test_ids})
        cut = len(train_ids) - cfg.heldout_clients
        vocabulary = build_vocabulary({c: raw["train", c] for c in train_ids[:cut]}, cfg.vocab_size)

        def encode(split: str, cid: str) -> RoleLines:
            return vocabulary.encode(raw[split, cid], play_of(cid, plays), len(plays), cid)

        return cls(
            vocabulary,
            plays,
            {c: encode("train", c) for c in train_ids[:cut]},
            {c: encode("train", c) for c in train_ids[cut:]},
            {c: encode("test", c) for c in test_ids},
            {c: i for i, c in enumerate(train_ids + test_ids)},
        )


def pooled(clients: dict[str, RoleLines]) -> tuple[np.ndarray, np.ndarray]:
    """All examples of ``clients`` as one (token_ids, tags) pair (padded to the widest)."""
    parts = [c for c in clients.values() if c.num_examples]
    if not parts:
        raise Error("no examples to pool. Fix: evaluate on clients with lines.")
    width = max(c.token_ids.shape[1] for c in parts)
    ids = np.concatenate(
        [np.pad(c.token_ids, ((0, 0), (0, width - c.token_ids.shape[1])), constant_values=-1) for c in parts]
    )
    return ids, np.concatenate([c.tags for c in parts])


def prior_predictor(train: dict[str, RoleLines], evaluated: dict[str, RoleLines]) -> np.ndarray:
    """The trivial baseline's predictions for ``evaluated``'s examples: every line gets each play's share of
    the training lines (the best constant predictor; its top-1 is the majority play)."""
    _, train_tags = pooled(train)
    _, tags = pooled(evaluated)
    return np.tile(train_tags.mean(axis=0), (len(tags), 1))
