import dataclasses
import re

import jsonschema
import pytest

from tasks import config_checks
from tasks.config import MAX_CHUNKS, ConfigError, ExperimentConfig
from tasks.config_schema import param_schemas

# (field, bad value): each must be rejected by ExperimentConfig and by the field's JSON schema.
BAD_VALUES = [
    ("num_clients", 1),  # below minimum
    ("num_clients", 100001),  # above maximum
    ("dirichlet_alpha", 0.0),  # exclusiveMinimum
    ("test_fraction", 0.9),
    ("rounds", "40"),  # wrong type
    ("client_learning_rate", "fast"),
    ("batch_size", True),  # a bool is not an int
    ("dataset", "mnist"),  # not in the enum
    ("model", "resnet"),
    ("experiment_name", "-leading-dash"),  # pattern
    ("registered_model_name", "has space"),
]


def test_the_defaults_construct_a_valid_config():
    cfg = ExperimentConfig()

    assert cfg.num_clients == 20
    assert cfg.clients_per_round <= cfg.num_clients
    assert cfg.num_chunks <= MAX_CHUNKS


def test_every_field_has_a_schema_with_title_description_section_and_a_valid_default():
    schemas = param_schemas()

    assert set(schemas) == {f.name for f in dataclasses.fields(ExperimentConfig)}
    for name, schema in schemas.items():
        assert schema["type"] in ("integer", "number", "string", "boolean", ["string", "null"]), name
        assert schema["title"] and schema["description"] and schema["section"], name
        jsonschema.validate(schema["default"], schema)
        assert getattr(ExperimentConfig(), name) == schema["default"]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_a_bad_value_is_rejected_naming_the_field_and_the_value(field, value):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(**{field: value})

    assert field in str(e.value)
    assert repr(value) in str(e.value)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_the_json_schema_rejects_the_same_bad_values_as_the_config(field, value):
    schema = param_schemas()[field]

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, schema)


def test_an_out_of_range_value_message_states_the_bounds():
    with pytest.raises(ConfigError, match=r"num_clients must be >= 2 and <= 100000\. Got 1\."):
        ExperimentConfig(num_clients=1)


def test_a_wrong_type_message_names_the_expected_type():
    with pytest.raises(ConfigError, match=r"rounds must be of type integer\. Got '40' \(str\)"):
        ExperimentConfig(rounds="40")


def test_a_bad_enum_value_message_lists_the_choices():
    with pytest.raises(ConfigError, match=r"partition must be one of \['dirichlet', 'iid', 'pathological', 'shards'\]\. Got 'random'"):
        ExperimentConfig(partition="random")


def test_a_non_finite_float_is_rejected():
    with pytest.raises(ConfigError, match="dirichlet_alpha must be a finite number. Got inf"):
        ExperimentConfig(dirichlet_alpha=float("inf"))


def test_an_int_is_accepted_for_a_float_field_and_stored_as_float():
    cfg = ExperimentConfig(server_learning_rate=1, dirichlet_alpha=2)

    assert cfg.server_learning_rate == 1.0 and isinstance(cfg.server_learning_rate, float)
    assert isinstance(cfg.dirichlet_alpha, float)


def test_a_bool_is_rejected_for_an_int_field():
    with pytest.raises(ConfigError, match=r"local_epochs must be of type integer\. Got True \(bool\)"):
        ExperimentConfig(local_epochs=True)


def test_more_clients_per_round_than_clients_is_rejected_naming_both():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(num_clients=5, clients_per_round=6)

    message = str(e.value)
    assert "clients_per_round" in message and "num_clients - heldout_clients (5)" in message and "Got 6" in message


def test_too_many_chunks_is_rejected_with_the_smallest_rounds_per_chunk_that_fits():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(rounds=101, rounds_per_chunk=10)

    message = str(e.value)
    assert f"need 11 chunks, but the DAG has {MAX_CHUNKS}" in message
    assert "Fix: set rounds_per_chunk >= 11" in message
    ExperimentConfig(rounds=101, rounds_per_chunk=11)  # the suggested fix is accepted


def test_the_chunk_plan_ends_at_the_last_round_and_then_stops():
    cfg = ExperimentConfig(rounds=45, rounds_per_chunk=20)

    assert cfg.num_chunks == 3
    assert [cfg.chunk_target_round(i) for i in range(4)] == [20, 40, 45, None]
    assert cfg.chunk_target_round(MAX_CHUNKS - 1) is None


def test_a_negative_chunk_index_is_rejected():
    with pytest.raises(ConfigError, match="chunk_index must be >= 0. Got -1"):
        ExperimentConfig().chunk_target_round(-1)


def test_from_mapping_rejects_unknown_keys_naming_them():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_mapping({"rounds": 4, "num_client": 3, "lr": 0.1})

    assert "Unknown parameter(s) ['lr', 'num_client']" in str(e.value)


def test_from_mapping_fills_missing_keys_with_the_defaults():
    cfg = ExperimentConfig.from_mapping({"rounds": 4})

    assert cfg == dataclasses.replace(ExperimentConfig(), rounds=4)


def test_a_config_survives_a_json_round_trip(tmp_path):
    cfg = ExperimentConfig(num_clients=7, clients_per_round=3, partition="iid", dirichlet_alpha=3,
                           experiment_name="team/fed exp.1", rounds=9, rounds_per_chunk=4)

    cfg.write_json(tmp_path / "config.json")
    back = ExperimentConfig.read_json(tmp_path / "config.json")

    assert back == cfg
    assert isinstance(back.dirichlet_alpha, float)



@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dataset": "h5"}, "source_path is required for dataset 'h5'"),
        ({"source_path": "/x.h5"}, "source_path / source_test_path apply to the h5, tff_sqlite, leaf, table datasets"),
        ({"dataset": "leaf", "source_path": "/d", "split": "source"}, "split 'source' needs source_test_path"),
        ({"dataset": "leaf", "source_path": "/d", "source_test_path": "/t", "split": "by_client"},
         "source_test_path is only read with split 'source' or 'auto'"),
        ({"dataset": "h5", "source_path": "/x.h5", "split": "central"}, "split 'central' pools a stratified test set"),
        ({"partition": "pathological", "classes_per_client": 11}, "classes_per_client must be <= 10"),
    ],
)
def test_inconsistent_data_settings_are_rejected_with_the_fix(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExperimentConfig(**settings)


def test_auto_split_is_central_for_digits_source_with_a_test_file_else_within_client():
    assert ExperimentConfig().effective_split == "central"
    assert ExperimentConfig(dataset="h5", source_path="/a.h5").effective_split == "within_client"
    assert ExperimentConfig(dataset="h5", source_path="/a.h5", source_test_path="/b.h5").effective_split == "source"


def test_feature_shape_and_columns_parse():
    cfg = ExperimentConfig(dataset="table", source_path="/t.csv", feature_shape=" 28, 28 ", feature_columns="a, b,c")

    assert cfg.parsed_feature_shape == (28, 28)
    assert cfg.parsed_feature_columns == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="feature_shape must match"):
        ExperimentConfig(feature_shape="28x28")


@pytest.mark.parametrize("dataset", ["shakespeare", "movielens"])
def test_text_and_ratings_data_are_refused_for_classifier_training_pointing_at_the_data_dag(dataset):
    cfg = ExperimentConfig(dataset=dataset)  # fine for staging

    with pytest.raises(ConfigError, match="federated_data DAG"):
        cfg.check_trainable()
    ExperimentConfig().check_trainable()


def test_data_settings_alone_reproduce_the_staging_settings():
    from tasks.stage import staging_settings

    staged = ExperimentConfig(num_clients=12, partition="pathological", classes_per_client=3, test_fraction=0.3,
                              seed=7, rounds=50, algorithm="fedprox", clients_per_round=4)
    trained = ExperimentConfig.from_mapping({**staged.data_settings(), "clients_per_round": 2})
    assert staging_settings(trained, None) == staging_settings(staged, None)
    assert "rounds" not in staged.data_settings() and staged.data_settings()["seed"] == 7


def test_optional_text_fields_accept_null_from_the_trigger_form_as_not_set():
    schemas = param_schemas()
    optional = [name for name, schema in schemas.items() if schema["default"] == ""]
    assert "source_path" in optional and "custom_aggregator" in optional
    for name in optional:
        assert schemas[name]["type"] == ["string", "null"], name
        jsonschema.validate(None, {k: v for k, v in schemas[name].items() if k not in ("section", "default")})
        assert getattr(ExperimentConfig.from_mapping({name: None}), name) == ""
    assert schemas["rounds"]["type"] == "integer"  # required fields stay non-nullable
    with pytest.raises(ConfigError, match="rounds must be of type integer"):
        ExperimentConfig.from_mapping({"rounds": None})


def test_the_engine_is_tff_or_hybrid_and_the_hybrid_refuses_an_algorithm_it_does_not_run(monkeypatch):
    assert ExperimentConfig().engine == "tff"
    with pytest.raises(ConfigError, match=r"engine must be one of \['tff', 'hybrid', 'jax'\]"):
        ExperimentConfig(engine="gpu")
    monkeypatch.setattr(config_checks, "HYBRID_ALGORITHMS", ("fedavg",))
    with pytest.raises(ConfigError, match="runs on the 'tff' engine only.*Fix: engine='tff'"):
        ExperimentConfig(engine="hybrid", algorithm="fedprox")
    assert ExperimentConfig(engine="hybrid").engine == "hybrid"


def test_a_corrupted_client_fault_is_off_by_default_and_runs_on_the_hybrid_engine_only():
    cfg = ExperimentConfig()
    assert cfg.corrupt_clients == 0 and cfg.corrupt_update_scale == 1e4
    assert ExperimentConfig(engine="hybrid", corrupt_clients=1).corrupt_clients == 1
    with pytest.raises(ConfigError, match=r"Got engine='tff', corrupt_clients=1\. Fix: engine='hybrid'"):
        ExperimentConfig(corrupt_clients=1)
    with pytest.raises(ConfigError, match=r"corrupt_clients must be <= clients_per_round \(10\)\. Got 11"):
        ExperimentConfig(engine="hybrid", corrupt_clients=11)
    with pytest.raises(ConfigError, match=r"corrupt_update_scale must be > 0 .*Got 0\.0"):
        ExperimentConfig(engine="hybrid", corrupt_clients=1, corrupt_update_scale=0)
