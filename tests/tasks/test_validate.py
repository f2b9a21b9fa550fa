import shutil

import numpy as np
import pytest

from tasks import atomic, shards, stage, validate
from tasks.config import ExperimentConfig

SMALL = ExperimentConfig(num_clients=5, clients_per_round=3, min_examples_per_client=10)
# The hand-built stages below have two tiny training clients.
TINY = ExperimentConfig(num_clients=2, clients_per_round=2, min_examples_per_client=2)
FEATURE = shards.Feature("pixels", "float32", (2, 2, 1))
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDFLOW_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        return stage.stage_dataset(SMALL)


@pytest.fixture
def staged_copy(staged, tmp_path):
    """A private copy of the staged digits that a test may damage."""
    root = tmp_path / staged.fingerprint
    shutil.copytree(staged.path, root)
    return shards.Manifest.read(root)


def client(client_id, labels, pixels=None):
    labels = np.asarray(labels, dtype=np.int64)
    if pixels is None:
        pixels = np.full((len(labels), 2, 2, 1), 0.5, dtype=np.float32)
    return shards.ClientExamples(client_id, pixels, labels)


def write_stage(root, train, test):
    """Writes shards and a manifest shaped like the one tasks.stage writes; returns the manifest."""
    root.mkdir()
    train_entries, train_files = shards.write_split(root, "train", train, FEATURE)
    test_entries, test_files = shards.write_split(root, "test", test, FEATURE)
    atomic.write_json(root / shards.MANIFEST, {
        "format_version": shards.FORMAT_VERSION,
        "dataset": "digits",
        "fingerprint": root.name,
        "settings": stage.staging_settings(TINY),
        "source": {"name": "hand-built test data", "num_examples": sum(len(c.y) for c in [*train, *test])},
        "num_classes": NUM_CLASSES,
        "features": {
            "x": {"column": FEATURE.column, "dtype": FEATURE.dtype, "shape": list(FEATURE.shape)},
            "y": {"column": "label", "dtype": "int64", "shape": []},
        },
        "splits": {
            "train": {"num_examples": sum(len(c.y) for c in train), "clients": train_entries},
            "test": {"num_examples": sum(len(c.y) for c in test), "clients": test_entries},
        },
        "files": {**train_files, **test_files},
    })
    return shards.Manifest.read(root)


def failed(report):
    """(expectation, column) of every failed expectation."""
    return {(e["expectation"], e["column"]) for e in report.expectations if not e["success"]}


def problem_about(report, expectation, column):
    matches = [p for p in report.problems() if p.startswith(f"expectation {expectation} on {column} failed")]
    assert len(matches) == 1, report.problems()
    return matches[0]


# -- the real staged digits ---------------------------------------------------------------------


def test_a_clean_stage_passes_structure_and_every_expectation(staged):
    report = validate.validate_staged(staged.manifest, SMALL)

    assert report.success, report.problems()
    assert report.problems() == []
    assert len(report.expectations) == 7 and all(e["success"] for e in report.expectations)
    assert report.statistics["examples"] == 1797
    assert report.statistics["train_clients"] == 5


def test_a_shard_with_a_modified_byte_fails_its_checksum_naming_the_shard(staged_copy):
    shard = staged_copy.root / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    report = validate.validate_staged(staged_copy, SMALL)

    assert not report.success
    assert report.problems() == [
        "shard train-00000.parquet does not match its manifest checksum (modified or truncated)"
    ]
    assert report.expectations == []  # the examples were not trusted enough to read


def test_a_missing_shard_is_reported_by_name(staged_copy):
    (staged_copy.root / "test-00000.parquet").unlink()

    report = validate.validate_staged(staged_copy, SMALL)

    assert not report.success
    assert report.problems() == [f"shard test-00000.parquet is missing from {staged_copy.root}"]


def test_a_stage_with_too_few_clients_or_examples_for_the_config_fails_naming_the_setting(staged):
    demanding = ExperimentConfig(num_clients=50, clients_per_round=6, min_examples_per_client=300)

    report = validate.validate_staged(staged.manifest, demanding)

    assert not report.success
    problems = "\n".join(report.problems())
    assert "clients with fewer than min_examples_per_client=300" in problems
    assert "clients_per_round=6 exceeds the 5 training clients" in problems


# -- hand-built corrupt stages ------------------------------------------------------------------


def test_a_manifest_that_disagrees_with_the_row_groups_fails_naming_the_client(tmp_path):
    manifest = write_stage(tmp_path / "stage", [client("a", range(10)), client("b", range(10))],
                           [client("test", range(10))])
    manifest.data["splits"]["train"]["clients"][1]["num_examples"] = 11
    manifest.data["splits"]["train"]["clients"][0]["row_group"] = 5

    report = validate.validate_staged(manifest, TINY)

    assert report.problems() == [
        "client a: row group 5 is not in train-00000.parquet",
        "client b: manifest says 11 examples, row group has 10",
    ]


def test_out_of_range_labels_non_finite_and_too_bright_pixels_each_fail_their_expectation(tmp_path):
    pixels = np.full((10, 2, 2, 1), 0.5, dtype=np.float32)
    pixels[2, 0, 1, 0] = np.nan
    pixels[3, 1, 1, 0] = 3.0
    manifest = write_stage(
        tmp_path / "stage",
        [client("a", range(10), pixels), client("b", [11, 0])],  # every class is present, plus an 11
        [client("test", range(10))],
    )

    report = validate.validate_staged(manifest, TINY)

    assert not report.success
    assert report.structural_problems == []
    assert failed(report) == {
        ("expect_column_values_to_be_between", "label"),
        ("expect_column_values_to_be_in_set", "pixels_finite"),
        ("expect_column_values_to_be_between", "pixel_max"),
    }
    assert "1 unexpected values, e.g. [11]" in problem_about(report, "expect_column_values_to_be_between", "label")
    assert "e.g. [False]" in problem_about(report, "expect_column_values_to_be_in_set", "pixels_finite")
    assert "e.g. [3.0]" in problem_about(report, "expect_column_values_to_be_between", "pixel_max")


def test_a_class_missing_from_training_fails_even_when_the_test_split_has_it(tmp_path):
    manifest = write_stage(
        tmp_path / "stage",
        [client("a", [0, 1, 2, 3, 4]), client("b", [5, 6, 7, 8, 8])],  # no 9 in training
        [client("test", range(10))],
    )

    report = validate.validate_staged(manifest, TINY)

    assert not report.success
    assert failed(report) == {("expect_column_distinct_values_to_contain_set", "label")}
    problem = problem_about(report, "expect_column_distinct_values_to_contain_set", "label")
    assert problem.endswith("1 missing values: [9]")


def test_the_report_serialises_to_a_json_file(staged, tmp_path):
    report = validate.validate_staged(staged.manifest, SMALL)

    atomic.write_json(tmp_path / "validation.json", report.to_dict())

    assert atomic.read_json(tmp_path / "validation.json")["success"] is True
