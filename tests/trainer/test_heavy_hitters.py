"""Private heavy hitters with real TFF rounds on a few tiny text clients: the three identities the tutorial's
computation must satisfy, and what a too-small sketch does."""

from __future__ import annotations

import collections

import pytest

from tasks import atomic, shards
from tasks.analytics_config import CONFIG_FILE, AnalyticsConfig
from tasks.heavy_hitters import tokenize
from tasks.sources import shakespeare
from trainer import heavy_hitters

LINES = {
    "PLAY_A": ["The king, the KING! the queen.", "-- ... !", "Long live the king"],
    "PLAY_B": ["Queen queen the", "what? what! what", "Café café"],
    "PLAY_C": ["Lord lord lord, king", "the"],
    "PLAY_D": ["a b c d e f g h i j k l"],
}
CLIENTS = [(cid, [w for line in lines for w in tokenize(line)]) for cid, lines in sorted(LINES.items())]
QUIET = {"dp": False, "counter_check": False, "secure_sum_bitwidth": 0}


def test_tokens_are_whitespace_split_case_folded_and_punctuation_only_tokens_are_dropped():
    assert tokenize("The king, the KING! -- ... Straße") == ["the", "king,", "the", "king!", "strasse"]
    assert CLIENTS[0][1] == ["the", "king,", "the", "king!", "the", "queen.", "long", "live", "the", "king"]


def test_with_no_dp_enough_capacity_and_multi_contribution_the_counts_equal_a_counter():
    cfg = AnalyticsConfig(**QUIET, capacity=100, max_words_per_user=0, max_heavy_hitters=0, multi_contribution=True)
    tables, results = heavy_hitters.measure(cfg, CLIENTS)
    counter = collections.Counter(w for _, words in CLIENTS for w in words)
    assert {r["word"]: r["count"] for r in tables["release"]} == counter
    assert results["num_not_decoded"] == 0 and results["count_mismatches"] == 0 and results["clients"] == 4
    clients_with = {r["word"]: r["clients"] for r in tables["release"]}
    assert clients_with["the"] == 3 and clients_with["café"] == 1  # heavy_hitters_unique_counts


def test_with_one_contribution_per_client_counts_are_the_clients_whose_top_words_hold_the_word():
    # The tutorial's settings but two words per client, with a secure sum (TFF's test runtime).
    cfg = AnalyticsConfig(
        **{**QUIET, "secure_sum_bitwidth": 32},
        capacity=50,
        max_words_per_user=2,
        max_heavy_hitters=0,
        multi_contribution=False,
        batch_size=5,
    )
    tables, results = heavy_hitters.measure(cfg, CLIENTS)
    # Each client's two most frequent words; among equal counts the word that appears first.
    tops = {"PLAY_A": {"the", "king,"}, "PLAY_B": {"queen", "café"}, "PLAY_C": {"lord", "lord,"}, "PLAY_D": {"a", "b"}}
    expected = collections.Counter(w for top in tops.values() for w in top)
    assert {r["word"]: r["count"] for r in tables["release"]} == expected
    assert all(r["clients"] == r["count"] for r in tables["release"])
    assert results["count_mismatches"] == 0 and results["words_released"] == len(expected)


def test_with_dp_every_released_word_is_in_the_non_dp_result_and_the_counter_check_passes():
    cfg = AnalyticsConfig(
        dp=True,
        dp_epsilon=50.0,
        dp_delta=0.01,
        capacity=50,
        max_words_per_user=3,
        max_heavy_hitters=2,
        multi_contribution=False,
        secure_sum_bitwidth=0,
        counter_check=True,
    )
    tables, results = heavy_hitters.measure(cfg, CLIENTS)
    assert results["words_released"] == 2  # max_heavy_hitters; the DP step reads the full histogram
    assert results["dp_non_dp_words"] > 2 and results["dp_words_not_in_non_dp"] == 0
    assert results["dp_threshold"] == pytest.approx(1 + (3 / 50) * __import__("math").log(3 / 0.02))
    assert {r["word"] for r in tables["dp"]} <= {w for _, words in CLIENTS for w in words}
    assert results["counter_mismatches"] == 0 and results["counter_not_decoded"] == 0
    assert results["counter_tokens"] == sum(len(w) for _, w in CLIENTS)


def test_a_sketch_far_below_capacity_leaves_words_undecoded_and_the_reference_check_sees_it():
    cfg = AnalyticsConfig(**QUIET, capacity=1, max_words_per_user=0, max_heavy_hitters=0, multi_contribution=True)
    _, results = heavy_hitters.measure(cfg, CLIENTS)
    assert results["num_not_decoded"] > 0
    assert results["words_released"] < results["distinct_words_expected"]


def test_run_reads_every_staged_client_of_both_splits_and_writes_the_results(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    clients = [shards.Client(cid, {"snippets": lines}) for cid, lines in sorted(LINES.items())]
    shards.write_dataset(
        staged,
        {"train": clients[:3], "test": clients[3:]},
        shakespeare.schema(),
        metadata={"dataset": "shakespeare", "fingerprint": "t", "settings": {}, "source": {}},
    )
    run = tmp_path / "run"
    run.mkdir()
    cfg = AnalyticsConfig(**{**QUIET, "counter_check": True}, capacity=100, max_heavy_hitters=3)
    atomic.write_json(run / CONFIG_FILE, cfg.to_dict())
    atomic.write_json(run / "staged.json", {"path": str(staged)})
    results = heavy_hitters.run(run)
    assert results["clients"] == results["staged_clients"] == 4 and results["counter_mismatches"] == 0
    written = atomic.read_json(run / heavy_hitters.HEAVY_HITTERS_FILE)
    assert len(written["release"]) == 3 and written["results"] == atomic.read_json(run / heavy_hitters.RESULTS_FILE)
