"""The plays as sparse tag prediction (trainer/sparse_data.py): plays from role ids, the vocabulary, passages."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import sparse_data


def test_a_role_belongs_to_the_play_with_the_longest_matching_id_prefix():
    plays = ["henry_v", "henry_vi_part_1", "romeo_and_juliet"]
    assert sparse_data.play_of("HENRY_VI_PART_1_TALBOT", plays) == 1
    assert sparse_data.play_of("HENRY_V_FLUELLEN", plays) == 0
    assert sparse_data.play_of("ROMEO_AND_JULIET_NURSE", plays) == 2
    with pytest.raises(sparse_data.Error, match=r"'HAMLET_HAM' belongs to none of the plays .* Fix: stage"):
        sparse_data.play_of("HAMLET_HAM", plays)


def test_the_vocabulary_is_the_words_in_the_most_lines_ties_by_the_word():
    lines = {"a": ["The king, the KING!", "my lord"], "b": ["my king", "o'er the sea"]}
    vocabulary = sparse_data.build_vocabulary(lines, 3)
    assert vocabulary.words == ["king", "my", "the"]  # in 3, 2 and 2 lines ('my' before 'the'); "o'er" etc. in 1
    assert vocabulary.size == 4  # + the OOV token


def test_a_role_is_encoded_as_passages_of_distinct_token_ids_with_its_play_as_the_one_tag():
    vocabulary = sparse_data.Vocabulary(["king", "the", "my"])
    lines = ["the king", "the king", "my lord", "sea", "the", "--", "x"]  # passages of 5 lines: 2
    role = vocabulary.encode(lines, tag=1, num_tags=3, client_id="P_R")
    assert sparse_data.LINES_PER_EXAMPLE == 5
    np.testing.assert_array_equal(role.token_ids, [[0, 1, 2, 3], [3, -1, -1, -1]])  # OOV = 3, sorted, -1 padded
    np.testing.assert_array_equal(role.tags, [[0, 1, 0], [0, 1, 0]])
    assert vocabulary.encode(["--"], 0, 3).num_examples == 0  # a passage without a word is dropped


def test_the_prior_predicts_each_plays_share_of_the_training_passages():
    vocabulary = sparse_data.Vocabulary(["a"])
    train = {"x": vocabulary.encode(["a"] * 15, 0, 2), "y": vocabulary.encode(["a"] * 5, 1, 2)}
    predictions = sparse_data.prior_predictor(train, {"z": vocabulary.encode(["a"] * 10, 1, 2)})
    np.testing.assert_allclose(predictions, [[0.75, 0.25]] * 2)
