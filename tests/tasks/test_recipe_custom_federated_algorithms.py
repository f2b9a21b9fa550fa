"""The recipe custom_federated_algorithms on the Airflow side (no TensorFlow): its settings, the decay setting only
a plugged-in process reads, and the data it stages: ten clients that each hold one digit in the tutorial's ten
batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks import recipes
from tasks import stage as staging
from tasks.config import ConfigError, ExperimentConfig
from tasks.config_schema import param_schemas

FC_FEDAVG = "trainer.custom_federated_algorithms:fedavg_from_primitives"


def test_the_recipe_plugs_in_the_federated_core_fedavg_with_the_tutorials_decaying_rate():
    cfg = ExperimentConfig.from_mapping(recipes.apply({"recipe": "custom_federated_algorithms"}))
    assert cfg.learning_process == FC_FEDAVG and cfg.model == "softmax" and cfg.engine == "tff"
    assert (cfg.client_learning_rate, cfg.client_learning_rate_decay) == (0.1, 0.9)
    assert (cfg.partition, cfg.classes_per_client, cfg.num_clients, cfg.clients_per_round) == (
        "pathological",
        1,
        10,
        10,
    )
    changed = recipes.apply({"recipe": "custom_federated_algorithms", "client_learning_rate_decay": 0.5})
    assert ExperimentConfig.from_mapping(changed).client_learning_rate_decay == 0.5


def test_a_learning_rate_decay_without_a_process_that_reads_it_is_refused_naming_the_fix():
    assert ExperimentConfig().client_learning_rate_decay == 1.0
    with pytest.raises(ConfigError, match=r"client_learning_rate_decay applies to a learning_process.*Fix: set"):
        ExperimentConfig(client_learning_rate_decay=0.9)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"client_learning_rate_decay must be > 0 and <= 1\. Got"):
            ExperimentConfig(learning_process=FC_FEDAVG, client_learning_rate_decay=bad)
    schema = param_schemas()["client_learning_rate_decay"]
    assert schema["section"] == "Algorithm" and schema["default"] == 1.0 and schema["maximum"] == 1


def test_the_recipe_stages_ten_clients_each_holding_one_digit_in_ten_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path))
    cfg = ExperimentConfig.from_mapping(recipes.apply({"recipe": "custom_federated_algorithms"}))
    manifest = staging.stage_dataset(cfg).manifest
    labels = [np.unique(manifest.read_client("train", cid).y).tolist() for cid in manifest.client_ids("train")]
    assert sorted(digit for (digit,) in labels) == list(range(10))  # one digit each, every digit once
    sizes = [len(manifest.read_client("train", cid).y) for cid in manifest.client_ids("train")]
    assert {math.ceil(n / cfg.batch_size) for n in sizes} == {10}  # the tutorial's 10 batches per client
