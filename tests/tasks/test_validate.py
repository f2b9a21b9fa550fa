"""The validate step on small hand-built stages (real shards, real Great Expectations, no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import atomic, expectations, shards, stage, validate
from tasks.config import ExperimentConfig
from tasks.shards import Client, Column, Schema

CFG = ExperimentConfig(num_clients=2, clients_per_round=2, min_examples_per_client=2)
IMAGE = Schema("image", (Column("pixels", "float32", (2, 2, 1)), Column("label", "int64")), x="pixels", label="label",
               num_classes=3)
VECTOR = Schema("vector", (Column("x", "float32", (4,)), Column("label", "int64")), x="x", label="label", num_classes=3)
TEXT = Schema("text", (Column("snippets", "string"),), x="snippets")
RATINGS = Schema("ratings", (Column("item_id", "int64"), Column("rating", "float32"), Column("timestamp", "int64")))
SOURCE = {"reader": "h5/1", "files": {"train": {"file": "emnist_train.h5", "bytes": 10, "sha256": "a" * 64}}}


def image(client_id, labels, pixels=None):
    labels = np.asarray(labels, dtype=np.int64)
    if pixels is None:
        pixels = np.full((len(labels), 2, 2, 1), 0.5, dtype=np.float32)
    return Client(client_id, {"pixels": pixels, "label": labels})


def text(client_id, lines):
    return Client(client_id, {"snippets": list(lines)})


def ratings(client_id, items, values, stamps=None):
    stamps = stamps if stamps is not None else [1_000] * len(items)
    return Client(client_id, {"item_id": np.asarray(items, np.int64), "rating": np.asarray(values, np.float32),
                              "timestamp": np.asarray(stamps, np.int64)})


CLEAN_TRAIN = [image("a", [0, 1, 2, 0]), image("b", [1, 2, 0, 1])]
CLEAN_TEST = [image("t", [0, 1, 2])]


def write(root, train, test, schema=IMAGE, *, split="central", source=None):
    """A staged data set as the writer leaves it (manifest with its content_sha256)."""
    root.mkdir()
    settings = {"split": split, **({"source": source} if source is not None else {})}
    shards.write_dataset(root, {"train": train, "test": test}, schema,
                         metadata={"dataset": "x", "fingerprint": "f", "settings": settings, "source": {}})
    return shards.Manifest.read(root)


def edit(manifest, change, *, redigest=True):
    """Edits manifest.json in place; ``redigest`` records a matching content_sha256 (a consistent stage)."""
    data = atomic.read_json(manifest.root / shards.MANIFEST)
    change(data)
    if redigest:
        data["content_sha256"] = validate.manifest_digest(data)
    atomic.write_json(manifest.root / shards.MANIFEST, data)
    return shards.Manifest.read(manifest.root)


def the_problem(report, *fragments):
    """The one problem line containing every fragment."""
    matches = [p for p in report.problems() if all(f in p for f in fragments)]
    assert len(matches) == 1, report.problems()
    return matches[0]


def expectations_ran(report):
    return any(c.origin == "great_expectations" for c in report.checks)


# -- a clean stage ------------------------------------------------------------------------------


def test_a_clean_image_stage_passes_and_writes_data_docs(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG, docs_dir=tmp_path / "docs")

    assert report.success, report.problems()
    assert report.problems() == [] and report.warnings() == []
    assert report.docs_index == str(tmp_path / "docs" / "index.html")
    assert (tmp_path / "docs" / "index.html").read_text().count("<html") == 1
    assert report.statistics["examples"] == 11
    assert report.statistics["splits"] == {"train": {"clients": 2, "examples": 8},
                                           "test": {"clients": 1, "examples": 3}}
    assert report.statistics["examples_per_client"] == {"min": 4, "median": 4.0, "max": 4}
    names = [c.name for c in report.checks]
    assert "expect_column_values_to_be_between(label, 0..2)" in names
    assert "expect_column_values_to_be_between(pixels_max, 0..1)" in names
    assert "expect_column_values_to_be_between(num_examples, ≥ 2, train split)" in names
    assert json.loads(json.dumps(report.to_dict()))["problems"] == []


def test_data_docs_are_replaced_as_a_whole_on_a_rerun(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "stale.html").write_text("old")

    validate.validate_staged(manifest, CFG, docs_dir=tmp_path / "docs")

    assert not (tmp_path / "docs" / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "stage"]  # no temporary site left beside it
    assert len(list((tmp_path / "docs" / "validations").rglob("*.html"))) == 2  # the examples and the clients


def test_the_summary_fits_one_screen_and_lists_every_check_and_the_verdict(tmp_path):
    report = validate.validate_staged(write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST), CFG)
    summary = report.summary()

    lines = summary.splitlines()
    assert len(lines) <= expectations.SUMMARY_LINES
    assert lines[0] == "Validation of x (image), fingerprint f"
    assert "train: 2 clients, 8 examples; test: 1 client, 3 examples" in summary
    assert "examples per train client: min 4, median 4, max 4" in summary
    assert "  ✓ shard files: 1 files" not in summary  # one train and one test shard
    assert "  ✓ shard files: 2 files" in summary
    assert "  ✓ expect_column_values_to_be_between(label, 0..2): 11 examples" in summary
    assert "Data Docs: not built" in summary
    assert lines[-1].startswith("Verdict: PASSED")


def test_the_summary_of_a_failed_stage_marks_the_failed_checks_and_names_the_first_problem(tmp_path):
    manifest = write(tmp_path / "stage", [image("a", [0, 1, 2, 9]), image("b", [1, 2, 0, 1])], CLEAN_TEST)

    summary = validate.validate_staged(manifest, CFG).summary()

    assert "  ✗ expect_column_values_to_be_between(label, 0..2): 1 of 11 examples, clients ['a']" in summary
    assert summary.splitlines()[-1].startswith(
        "Verdict: FAILED: 1 problem(s), first: expect_column_values_to_be_between")


def test_the_summary_folds_passing_expectations_when_the_checks_do_not_fit(tmp_path):
    train = [ratings("1", [1, 2], [4.0, 3.0]), ratings("2", [3, 4, 5], [1.0, 3.0, 5.0])]
    manifest = write(tmp_path / "stage", train, [ratings("3", [1], [3.0])], RATINGS, source=SOURCE)

    report = validate.validate_staged(manifest, CFG, source_identity=SOURCE)
    lines = report.summary().splitlines()

    assert len(report.checks) + 5 > expectations.SUMMARY_LINES == len(lines)  # 3 header lines, Data Docs, verdict
    assert any(line.startswith("  ✗ model compatibility: model 'cnn' cannot train") for line in lines)
    assert "  ✓ source unchanged: 1 source file(s) match the staged checksums" in lines
    assert any(line.endswith("more expectation(s) passed (see Data Docs)") for line in lines)


def test_staged_digits_pass_with_data_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    cfg = ExperimentConfig()
    staged = stage.stage_dataset(cfg)

    report = validate.validate_staged(staged.manifest, cfg, docs_dir=tmp_path / "docs")

    assert report.success, report.problems()
    assert report.statistics["examples"] == 1797
    assert (tmp_path / "docs" / "index.html").is_file()
    assert report.statistics["seconds"]["total"] < 30


# -- the examples (Great Expectations) -----------------------------------------------------------


def test_labels_out_of_range_name_the_expectation_the_clients_and_the_values(tmp_path):
    train = [image("client_03", [0, 1, 2, 5, 5]), image("client_07", [0, 7, 1, 2]), image("client_09", [0, 1, 2])]
    manifest = write(tmp_path / "stage", train, CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG)

    assert not report.success
    assert the_problem(report, "label") == (
        "expect_column_values_to_be_between(label, 0..2) failed: 3 of 15 examples, clients ['client_03', "
        "'client_07'], e.g. values [5, 5, 7]. Fix: map the source's classes to 0..num_classes-1, or raise "
        "num_classes and re-stage.")


def test_a_problem_lists_at_most_five_clients(tmp_path):
    train = [image(f"c{i}", [0, 1, 2, 3]) for i in range(7)]
    manifest = write(tmp_path / "stage", train, CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG)

    assert the_problem(report, "(label, 0..2)").startswith(
        "expect_column_values_to_be_between(label, 0..2) failed: 7 of 31 examples, clients ['c0', 'c1', 'c2', 'c3', "
        "'c4'] and 2 more, e.g. values [3, 3, 3, 3, 3]. Fix:")


def test_nan_and_inf_pixels_fail_the_finite_check_naming_the_client(tmp_path):
    pixels = np.full((4, 2, 2, 1), 0.5, dtype=np.float32)
    pixels[1, 0, 0, 0] = np.nan
    pixels[3, 1, 1, 0] = np.inf
    manifest = write(tmp_path / "stage", [image("a", [0, 1, 2, 0]), image("b", [0, 1, 2, 0], pixels)], CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG)

    problem = the_problem(report, "pixels_finite")
    assert problem.startswith("expect_column_values_to_be_in_set(pixels_finite, [True]) failed: 2 of 11 examples, "
                              "clients ['b'], e.g. values [False, False]")
    assert "Fix: repair or drop those examples" in problem
    assert len(report.problems()) == 1  # the finite values of those examples are still in [0, 1]


def test_pixels_above_one_fail_the_range_check_with_the_scaling_fix(tmp_path):
    pixels = np.full((4, 2, 2, 1), 0.5, dtype=np.float32)
    pixels[2, 0, 1, 0] = 255.0
    manifest = write(tmp_path / "stage", [image("a", [0, 1, 2, 0], pixels), image("b", [0, 1, 2, 0])], CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG)

    problem = the_problem(report, "pixels_max")
    assert problem.startswith("expect_column_values_to_be_between(pixels_max, 0..1) failed: 1 of 11 examples, "
                              "clients ['a'], e.g. values [255.0]")
    assert "divide by 255" in problem


def test_a_class_missing_from_training_fails_when_there_are_few_classes(tmp_path):
    manifest = write(tmp_path / "stage", [image("a", [0, 1, 0]), image("b", [1, 0, 1])], CLEAN_TEST)

    report = validate.validate_staged(manifest, CFG)

    problem = the_problem(report, "distinct")
    assert problem.startswith("expect_column_distinct_values_to_contain_set(label, 0..2, train split) failed: "
                              "missing 1: [2]")
    assert "Fix: a partition that gives every class to some training client" in problem


def test_a_class_missing_from_training_is_only_a_warning_with_many_classes(tmp_path):
    many = Schema("image", IMAGE.columns, x="pixels", label="label", num_classes=150)
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST, many)

    report = validate.validate_staged(manifest, CFG)

    assert report.success, report.problems()
    [warning] = report.warnings()
    assert warning.startswith("expect_column_distinct_values_to_contain_set(label, 0..149, train split) failed: "
                              "missing 147: [3, 4, 5, 6, 7] and 142 more")
    assert "⚠ expect_column_distinct_values_to_contain_set" in report.summary()


def test_a_client_below_min_examples_per_client_is_named_with_its_count(tmp_path):
    manifest = write(tmp_path / "stage", [image("a", [0, 1, 2, 0, 1]), image("b", [0, 1, 2])], CLEAN_TEST)
    cfg = ExperimentConfig(num_clients=2, clients_per_round=2, min_examples_per_client=4)

    report = validate.validate_staged(manifest, cfg)

    problem = the_problem(report, "num_examples")
    assert problem.startswith("expect_column_values_to_be_between(num_examples, ≥ 4, train split) failed: 1 of 2 "
                              "clients ['b'], with num_examples [3]")
    assert "Fix: lower min_examples_per_client" in problem


def test_text_with_characters_out_of_vocabulary_above_the_threshold_fails_naming_them(tmp_path):
    train = [text("a", ["To be, or not to be"] * 3), text("b", ["Ça ira, ça ira £", "naïve café"])]
    manifest = write(tmp_path / "stage", train, [text("t", ["that is the question"])], TEXT)

    report = validate.validate_staged(manifest, CFG, training=False)

    problem = the_problem(report, "out of vocabulary")
    assert problem.startswith("expect_column_sum_to_be_between(snippets_oov, 0..1) failed: 4.85% of 103 characters "
                              "out of vocabulary (threshold 1%): 5 in 2 of 6 examples, clients ['b'], e.g. characters")
    for ch in "Çç£ïé":
        assert repr(ch) in problem
    assert "Fix: map or strip those characters in the source" in problem
    assert report.statistics["oov_rate"] == pytest.approx(5 / 103)
    assert dict(report.statistics["top_unknown_characters"])["ç"] == 1


def test_text_with_a_few_unknown_characters_passes_and_reports_the_rate(tmp_path):
    lines = ["All the world's a stage, and all the men and women merely players"] * 5 + ["café"]
    manifest = write(tmp_path / "stage", [text("a", lines), text("b", lines)], [text("t", ["exit"])], TEXT)

    report = validate.validate_staged(manifest, CFG, training=False)

    assert report.success, report.problems()
    assert report.statistics["top_unknown_characters"] == [["é", 2]]
    assert 0 < report.statistics["oov_rate"] < expectations.MAX_OOV_RATE
    assert "text: 662 characters, out of vocabulary 0.302% (top: 'é' ×2)" in report.summary()


def test_empty_strings_fail_the_length_check_naming_the_client(tmp_path):
    manifest = write(tmp_path / "stage", [text("a", ["a line", "another"]), text("b", ["", "x"])],
                     [text("t", ["y"])], TEXT)

    report = validate.validate_staged(manifest, CFG, training=False)

    problem = the_problem(report, "lengths")
    assert problem.startswith("expect_column_value_lengths_to_be_between(snippets, 1..10000) failed: 1 of 5 examples, "
                              "clients ['b'], e.g. values ['']")
    assert "Fix: drop empty" in problem


def test_ratings_outside_one_to_five_fail_naming_clients_and_values(tmp_path):
    train = [ratings("1", [1, 2], [4.0, 7.0]), ratings("2", [3, 4, 5], [0.5, 3.0, 5.0])]
    manifest = write(tmp_path / "stage", train, [ratings("3", [1], [3.0])], RATINGS)

    report = validate.validate_staged(manifest, CFG, training=False)

    problem = the_problem(report, "(rating")
    assert problem.startswith("expect_column_values_to_be_between(rating, 1..5) failed: 2 of 6 examples, "
                              "clients ['1', '2'], e.g. values [7.0, 0.5]")
    assert "source.rating_range" in problem


def test_ratings_with_bad_ids_timestamps_or_types_fail_their_expectations(tmp_path):
    schema = Schema("ratings", (Column("item_id", "int64"), Column("rating", "float64"), Column("timestamp", "int64")))
    train = [ratings("1", [0, 2], [4.0, 3.0], [5, -1]), ratings("2", [3, 4], [1.0, 2.0])]
    manifest = write(tmp_path / "stage", train, [ratings("3", [1], [3.0])], schema)

    report = validate.validate_staged(manifest, CFG, training=False)

    assert the_problem(report, "(item_id, ≥ 1)").startswith(
        "expect_column_values_to_be_between(item_id, ≥ 1) failed: 1 of 5 examples, clients ['1'], e.g. values [0]")
    assert the_problem(report, "(timestamp, ≥ 0)").startswith(
        "expect_column_values_to_be_between(timestamp, ≥ 0) failed: 1 of 5 examples, clients ['1'], e.g. values [-1]")
    assert the_problem(report, "of_type(rating").startswith(
        "expect_column_values_to_be_of_type(rating, float32) failed: observed 'float64'")


# -- structure: files, manifest, clients ---------------------------------------------------------


def test_a_modified_shard_fails_its_checksum_and_the_examples_are_not_read(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    shard = manifest.root / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    report = validate.validate_staged(manifest, CFG, docs_dir=tmp_path / "docs")

    assert report.problems() == ["shard train-00000.parquet does not match its manifest checksum (SHA-256; modified). Fix: "
                                 "delete the staged directory and re-run the DAG (staging writes a fresh copy)."]
    assert not expectations_ran(report) and report.docs_index is None


def test_a_truncated_shard_is_named_with_its_size(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    shard = manifest.root / "test-00000.parquet"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])

    report = validate.validate_staged(manifest, CFG)

    assert the_problem(report, "test-00000.parquet").startswith(
        f"shard test-00000.parquet has 100 bytes, the manifest says {size:,} (truncated or modified). Fix: delete")
    assert not expectations_ran(report)


def test_a_missing_shard_is_reported_by_name(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    (manifest.root / "test-00000.parquet").unlink()

    report = validate.validate_staged(manifest, CFG)

    assert report.problems() == [f"shard test-00000.parquet is missing from {manifest.root}. Fix: delete the staged "
                                 "directory and re-run the DAG (staging writes a fresh copy)."]


def test_a_manifest_edited_after_staging_fails_its_content_digest(tmp_path):
    manifest = edit(write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST), lambda d: d.update(num_classes=30),
                    redigest=False)

    report = validate.validate_staged(manifest, CFG)

    problem = the_problem(report, "edited after staging")
    assert problem.startswith(f"manifest {manifest.root / 'manifest.json'} was edited after staging: its "
                              "content_sha256 is ")
    assert "Fix: delete the staged directory" in problem
    assert not expectations_ran(report)


def test_the_manifest_digest_is_the_sha256_of_the_canonical_json_without_itself(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)

    assert validate.manifest_digest(manifest.data) == manifest.data["content_sha256"]
    assert validate.manifest_digest({**manifest.data, "content_sha256": "x"}) == manifest.data["content_sha256"]
    assert validate.manifest_digest({**manifest.data, "num_classes": 4}) != manifest.data["content_sha256"]


def test_a_manifest_that_disagrees_with_the_row_groups_names_the_client(tmp_path):
    def change(data):
        data["splits"]["train"]["clients"][1]["num_examples"] = 11
        data["splits"]["train"]["num_examples"] = 15

    manifest = edit(write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST), change)

    report = validate.validate_staged(manifest, CFG)

    assert report.problems() == ["client 'b' (train): the manifest says 11 examples, row group 1 of "
                                 "train-00000.parquet has 4. Fix: delete the staged directory and re-run the DAG "
                                 "(staging writes a fresh copy)."]


def test_duplicate_client_ids_in_a_split_are_named(tmp_path):
    def change(data):
        data["splits"]["train"]["clients"][1]["id"] = "a"

    manifest = edit(write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST), change)

    report = validate.validate_staged(manifest, CFG)

    assert the_problem(report, "duplicate").startswith("split 'train' lists duplicate client ids ['a']. Fix: delete")
    assert not expectations_ran(report)


def test_an_empty_client_is_named(tmp_path):
    """A crafted shard: client 'c' is an empty row group that the manifest lists with 0 examples."""
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    shard = manifest.root / "train-00000.parquet"
    table = pq.read_table(shard)
    with pq.ParquetWriter(shard, table.schema) as writer:
        writer.write_table(table.slice(0, 4))
        writer.write_table(table.slice(4, 4))
        writer.write_table(table.slice(0, 0))

    def change(data):
        data["splits"]["train"]["clients"].append({"id": "c", "shard": shard.name, "row_group": 2, "num_examples": 0})
        data["splits"]["train"]["num_clients"] = 3
        data["files"][shard.name] = {"sha256": atomic.sha256_file(shard), "bytes": shard.stat().st_size}

    report = validate.validate_staged(edit(manifest, change), CFG)

    assert report.problems() == ["split 'train' has empty clients (no examples): ['c']. Fix: drop empty clients from "
                                 "the source and re-stage."]


def test_a_client_in_both_train_and_test_fails_a_by_client_split(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, [image("b", [0, 1, 2]), image("t", [0])], split="by_client")

    report = validate.validate_staged(manifest, CFG)

    assert the_problem(report, "by_client").startswith(
        "split 'by_client' must keep test clients out of training, but 1 client(s) are in both train and test: ['b']")


def test_the_same_client_in_train_and_test_is_fine_within_client(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, [image("a", [0, 1, 2]), image("b", [0])], split="within_client")

    assert validate.validate_staged(manifest, CFG).success


def test_an_empty_test_split_fails(tmp_path):
    root = tmp_path / "stage"
    root.mkdir()
    shards.write_dataset(root, {"train": CLEAN_TRAIN}, IMAGE,
                         metadata={"dataset": "x", "fingerprint": "f", "settings": {"split": "central"}, "source": {}})

    report = validate.validate_staged(shards.Manifest.read(root), CFG)

    assert the_problem(report, "'test'").startswith("split 'test' is empty (no clients or no examples).")


def test_more_clients_per_round_than_training_clients_fails_naming_the_setting(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST)
    cfg = ExperimentConfig(num_clients=5, clients_per_round=2, heldout_clients=1, min_examples_per_client=2)

    report = validate.validate_staged(manifest, cfg)

    assert report.problems() == [
        "clients_per_round=2 exceeds the 1 training clients (2 train clients - 1 held out). Fix: lower "
        "clients_per_round or heldout_clients, or stage more clients (num_clients)."]
    assert validate.validate_staged(manifest, cfg, training=False).success  # the data DAG does not train


# -- model compatibility and the source ----------------------------------------------------------


def test_text_data_for_training_fails_naming_the_kind_and_the_data_dag(tmp_path):
    manifest = write(tmp_path / "stage", [text("a", ["to be"] * 2), text("b", ["or not"] * 2)], [text("t", ["x"])],
                     TEXT)

    report = validate.validate_staged(manifest, CFG)

    assert report.problems() == [
        "model 'cnn' cannot train this data set: the training engine trains labelled images and feature vectors, and "
        "this is text data (kind 'text'). Fix: use the federated_data DAG to stage/validate only (training on text "
        "and ratings comes with their recipes)."]
    assert validate.validate_staged(manifest, CFG, training=False).success


def test_vector_data_with_the_cnn_fails_with_the_mlp_or_feature_shape_fix(tmp_path):
    vector = [Client(c, {"x": np.full((3, 4), 0.5, np.float32), "label": np.array([0, 1, 2])}) for c in "ab"]
    manifest = write(tmp_path / "stage", vector, [Client("t", {"x": np.zeros((1, 4), np.float32),
                                                                "label": np.array([0])})], VECTOR)

    report = validate.validate_staged(manifest, CFG)

    assert report.problems() == [
        "model 'cnn' needs images (x of rank 2 or 3); 'x' has shape (4,) (vector). Fix: set model 'mlp', or "
        "feature_shape (e.g. '28,28') to read each example as an image, and re-stage."]
    mlp = ExperimentConfig(num_clients=2, clients_per_round=2, min_examples_per_client=2, model="mlp")
    assert validate.validate_staged(manifest, mlp).success


def test_a_changed_source_file_is_named_with_the_rerun_fix(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST, source=SOURCE)
    changed = {**SOURCE, "files": {"train": {"file": "emnist_train.h5", "bytes": 10, "sha256": "b" * 64}}}

    report = validate.validate_staged(manifest, CFG, source_identity=changed)

    problem = the_problem(report, "changed since staging")
    assert problem.startswith("source file(s) changed since staging: emnist_train.h5 (sha256 bbbbbbbbbbbb…, staged "
                              "from aaaaaaaaaaaa…). Fix: re-run the DAG")
    assert "new fingerprint" in problem
    assert validate.validate_staged(manifest, CFG, source_identity=SOURCE).success


def test_a_source_that_cannot_be_read_now_is_reported(tmp_path):
    manifest = write(tmp_path / "stage", CLEAN_TRAIN, CLEAN_TEST, source=SOURCE)
    gone = {"unreadable": "h5 source: /data/emnist_train.h5 does not exist. Fix: set source_path to an existing path."}

    report = validate.validate_staged(manifest, CFG, source_identity=gone)

    assert report.problems() == ["the source cannot be read now, so it may have changed since staging: h5 source: "
                                 "/data/emnist_train.h5 does not exist. Fix: set source_path to an existing path."]
