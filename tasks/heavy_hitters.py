"""Private heavy hitters in plain Python: the tokeniser, the exact histograms TFF's IBLT computation must decode,
and the tutorial's central DP release. Both environments import it: the trainer feeds the same tokens to
``build_iblt_computation`` and to the reference histograms here, so a mismatch is TFF's, not the tokeniser's.

Tokenisation (TFF's private_heavy_hitters tutorial, without ``tensorflow-text``): a line is split on
whitespace (``str.split``, the Unicode whitespace that ``tf_text.WhitespaceTokenizer`` splits on), each token
is case-folded (``str.casefold``, the full Unicode case folding of ``tf_text.case_fold_utf8``), and tokens made
only of punctuation or symbols (every character in a Unicode ``P*`` or ``S*`` category: ``tf_text.wordshape``'s
``IS_PUNCT_OR_SYMBOL``) are dropped. Punctuation attached to a word stays (``"lord,"`` is not ``"lord"``), as
in the tutorial.

What a client contributes (TFF 0.87, ``iblt_tff.build_iblt_computation`` and ``analytics.data_processing``),
its words truncated to ``string_max_bytes`` UTF-8 bytes first:

- no ``max_words_per_user``: every word with its count (``multi_contribution``) or a count of 1 per distinct
  word;
- ``max_words_per_user = m`` with ``multi_contribution``: the words of its first ``m // batch_size`` batches,
  with their counts (a batch is kept or dropped whole);
- ``max_words_per_user = m`` without: its ``m`` most frequent distinct words, 1 each; ties go to the word that
  appears first (``tf.unique`` keeps first-appearance order and ``tf.math.top_k`` prefers the lower index).
"""

from __future__ import annotations

import collections
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def is_punct_or_symbol(token: str) -> bool:
    """Whether every character of ``token`` is punctuation or a symbol (Unicode categories P* and S*)."""
    return all(unicodedata.category(ch)[0] in "PS" for ch in token)


def tokenize(line: str) -> list[str]:
    """A line's words: whitespace-split, case-folded, punctuation-only tokens dropped (see module docstring)."""
    return [word for word in (token.casefold() for token in line.split()) if not is_punct_or_symbol(word)]


def client_words(lines: Iterable[str]) -> list[str]:
    """A client's words, in the order of its lines."""
    return [word for line in lines for word in tokenize(line)]


def truncate(word: str, string_max_bytes: int) -> bytes:
    """The IBLT's key of ``word``: its UTF-8 bytes, cut to ``string_max_bytes`` (possibly inside a character,
    as ``tf.strings.substr(unit='BYTE')`` cuts)."""
    return word.encode("utf-8")[:string_max_bytes]


def contribution(
    words: Sequence[str], *, string_max_bytes: int, max_words_per_user: int, multi_contribution: bool, batch_size: int
) -> collections.Counter[bytes]:
    """What one client adds to the sketch (see the module docstring); ``max_words_per_user`` 0 = no bound."""
    keys = [truncate(w, string_max_bytes) for w in words]
    if max_words_per_user and multi_contribution:
        keys = keys[: (max_words_per_user // batch_size) * batch_size]
    counts = collections.Counter(keys)  # insertion order = first appearance, as tf.unique
    if max_words_per_user and not multi_contribution:
        ranked = sorted(enumerate(counts.items()), key=lambda item: (-item[1][1], item[0]))
        counts = collections.Counter({key: count for _, (key, count) in ranked[:max_words_per_user]})
    if not multi_contribution:
        counts = collections.Counter(dict.fromkeys(counts, 1))
    return counts


def expected_histogram(clients: Iterable[Sequence[str]], **rule) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """(count, clients contributing) of every key, summed over ``clients`` under :func:`contribution`'s ``rule``:
    what an IBLT with enough capacity decodes exactly."""
    counts: collections.Counter[bytes] = collections.Counter()
    users: collections.Counter[bytes] = collections.Counter()
    for words in clients:
        contributed = contribution(words, **rule)
        counts.update(contributed)
        users.update(contributed.keys())
    return dict(counts), dict(users)


def word_counter(clients: Iterable[Sequence[str]], string_max_bytes: int) -> dict[bytes, int]:
    """A direct ``collections.Counter`` of every word of every client (truncated as the IBLT keys them)."""
    return dict(collections.Counter(truncate(w, string_max_bytes) for words in clients for w in words))


def dp_release(counts: Mapping[bytes, int], *, scale: float, threshold: float, seed: int) -> dict[bytes, int]:
    """The tutorial's central DP step: each count plus Laplace(``scale``) noise; a word is released with
    ``int(noisy count)`` when the noisy count is >= ``threshold``. The noise is drawn from ``seed`` in the
    keys' byte order, so a run is reproducible."""
    rng = np.random.default_rng([seed, 0x4857])
    released = {}
    for key in sorted(counts):
        noisy = counts[key] + rng.laplace(scale=scale)
        if noisy >= threshold:
            released[key] = int(noisy)
    return released


def show(key: bytes) -> str:
    """A key as text: UTF-8, a character cut by truncation shown as a backslash escape."""
    return key.decode("utf-8", "backslashreplace")
