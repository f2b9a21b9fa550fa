"""The hybrid engine computes what TFF computes: one round from the same state equals the TFF learning
process (≤ 1e-6) for every algorithm and aggregator it runs; many rounds agree within float32
round-off; chunks and engine switches are seamless; a cohort's client work is one graph call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tasks import metrics_log, shards
from tests.trainer.conftest import NUM_CLASSES, checkpoint, synthetic_client
from trainer import hybrid, program

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """Clients of different sizes (a ragged last batch for most), so batching and weighting matter."""
    rng = np.random.default_rng(11)
    out = tmp_path_factory.mktemp("staged_hybrid")
    sizes = [5, 13, 24, 31, 17, 40, 9, 22]
    shards.write_dataset(
        out,
        {"train": [synthetic_client(f"c{i}", rng, n) for i, n in enumerate(sizes)],
         "test": [synthetic_client("test", rng, 40)]},
        shards.Schema("image", (shards.Column("pixels", "float32", (8, 8, 1)), shards.Column("label", "int64")),
                      x="pixels", label="label", num_classes=NUM_CLASSES),
        metadata={"dataset": "synthetic", "fingerprint": "synthetic", "settings": {}, "source": {}},
    )
    return out


def run_config(**overrides) -> dict:
    return {"num_clients": 8, "clients_per_round": 4, "local_epochs": 2, "batch_size": 7, **overrides}


def one_round_all_engines(run, lock_step_modes=(False, None)):
    """Round 1 from the same seeded round-0 state on the tff engine, then on the hybrid with each
    ``lock_step`` mode (False: one client after another; None: lock-step where it applies):
    [(state, metrics, engine or None for tff), ...]."""
    exp = program.load_experiment(run.root)
    state = program.initial_state(exp)
    ids = exp.manifest.client_ids("train")
    clients = {cid: program.read_client(exp, "train", cid) for cid in ids}
    index = {cid: i for i, cid in enumerate(ids)}
    runner = program.RoundRunner(exp, "tff", clients, index, ids)
    results = [(*runner.next(state, 1, 1), None)]
    examples = [program.client_examples(exp, clients[cid], index[cid], 1) for cid in runner.sampled(1)]
    for lock_step in lock_step_modes:
        engine = hybrid.HybridEngine(exp.cfg, exp.model_fn, exp.process, lock_step=lock_step)
        results.append((*engine.next(state, engine.prepare(examples, program.model_input_shape(exp.manifest))), engine))
    return results


def one_round_both_engines(run):
    """(tff, hybrid) results of round 1 from the same seeded round-0 state: ((state, metrics), ...)."""
    (tff_state, tff_metrics, _), (hybrid_state, hybrid_metrics, _) = one_round_all_engines(run, (None,))
    return (tff_state, tff_metrics), (hybrid_state, hybrid_metrics)


def numeric_leaves(structure) -> list[np.ndarray]:
    leaves = [np.asarray(v) for v in tf.nest.flatten(structure)]
    return [v for v in leaves if v.dtype.kind in "fiub"]


def max_abs_difference(a, b) -> float:
    pairs = list(zip(numeric_leaves(a), numeric_leaves(b), strict=True))
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)) for x, y in pairs)


PARITY_CASES = {
    "fedavg": {},
    "fedavg_unweighted": {"algorithm": "fedavg_unweighted"},
    "server_momentum": {"server_momentum": 0.9, "server_learning_rate": 0.5},
    "fedsgd": {"algorithm": "fedsgd"},
    "fedprox": {"algorithm": "fedprox", "proximal_strength": 0.5},
    "fedadam": {"algorithm": "fedadam", "server_learning_rate": 0.05},
    "fedyogi": {"algorithm": "fedyogi", "server_learning_rate": 0.05},
    "robust": {"aggregator": "robust"},
    "dp_adaptive_zero_noise": {"aggregator": "dp", "noise_multiplier": 0.0},
    "dp_fixed_zero_noise": {"aggregator": "dp", "noise_multiplier": 0.0, "dp_clipping": "fixed", "dp_clip": 0.5},
    "compression_deterministic": {"aggregator": "compression", "compression_threshold": 100,
                                  "compression_stochastic": False, "compression_bits": 4},
    "secure": {"aggregator": "secure"},
    "custom_factory": {"aggregator": "custom", "custom_aggregator": "tests.trainer.custom_factories:clipped_mean"},
    "cnn": {"model": "cnn", "local_epochs": 1},
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_one_round_equals_the_tff_learning_process(make_run, case):
    """Both client-work paths of the hybrid: one client after another, and lock-step (MLP, local SGD)."""
    run = make_run(case, **run_config(**PARITY_CASES[case]))
    (tff_state, tff_metrics, _), *hybrids = one_round_all_engines(run)
    assert hybrids[0][2].lock_step is None
    assert (hybrids[1][2].lock_step is not None) == (case not in ("fedsgd", "cnn"))
    for hybrid_state, hybrid_metrics, _ in hybrids:
        assert max_abs_difference(tff_state.global_model_weights, hybrid_state.global_model_weights) <= 1e-6
        assert max_abs_difference(tff_state, hybrid_state) <= 1e-6  # optimizer, clip estimates, noise seeds ...
        tff_row, hybrid_row = program.round_metrics(tff_metrics), program.round_metrics(hybrid_metrics)
        assert tff_row.keys() == hybrid_row.keys()
        for key, value in tff_row.items():
            assert hybrid_row[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_dp_noise_is_the_configured_gaussian_and_the_same_seeded_noise_as_tff(make_run):
    """Fixed clip C, noise multiplier z, n clients, server SGD 1.0: the noised model minus the noise-free
    one is -noise/n per coordinate, noise ~ N(0, (zC)^2). Seeded noise makes both engines draw the same."""
    n, z, clip = 4, 1.0, 0.5
    common = run_config(aggregator="dp", dp_clipping="fixed", dp_clip=clip, clients_per_round=n)
    (tff_noised, _), (hybrid_noised, _) = one_round_both_engines(make_run("noised", **common, noise_multiplier=z))
    (_, _), (hybrid_clean, _) = one_round_both_engines(make_run("clean", **common, noise_multiplier=0.0))
    assert max_abs_difference(tff_noised, hybrid_noised) <= 1e-6
    difference = np.concatenate([
        (a - b).ravel() for a, b in zip(hybrid_noised.global_model_weights.trainable,
                                        hybrid_clean.global_model_weights.trainable, strict=True)
    ])
    expected_std = z * clip / n
    # N coordinates: the sample std has relative sd 1/sqrt(2N) (0.75% here); allow ~6 sd, and the mean 6 sd.
    assert difference.std() == pytest.approx(expected_std, rel=6 / np.sqrt(2 * difference.size))
    assert abs(difference.mean()) < 6 * expected_std / np.sqrt(difference.size)


def test_a_client_update_with_a_non_finite_value_is_zeroed_as_tff_does(make_run, monkeypatch):
    """A client whose examples hold NaN: TFF zeroes its update, gives it weight 0 and drops its metrics."""
    original = program.read_client

    def poisoned(exp, split, client_id):
        examples = original(exp, split, client_id)
        if client_id == "c3":
            examples.x[0, 0, 0, 0] = np.nan
        return examples

    monkeypatch.setattr(program, "read_client", poisoned)
    for case in ({}, {"algorithm": "fedavg_unweighted"}, {"aggregator": "robust"}):
        run = make_run(f"nan_{len(case)}_{'_'.join(case.values())}", **run_config(clients_per_round=8, **case))
        (tff_state, tff_metrics, _), *hybrids = one_round_all_engines(run)
        for hybrid_state, hybrid_metrics, _ in hybrids:
            assert max_abs_difference(tff_state, hybrid_state) <= 1e-6
            assert program.round_metrics(hybrid_metrics)["train_examples"] == sum([5, 13, 24, 17, 40, 9, 22]) * 2
            assert program.round_metrics(tff_metrics) == pytest.approx(program.round_metrics(hybrid_metrics),
                                                                       rel=1e-6)


# Measured here: after 6 rounds of this MLP the two engines' weights differ by 3e-8 and the train loss
# by 4e-9 (float32 sums in another order inside TFF's aggregation and metric sums). Each round amplifies a
# difference by at most the Lipschitz factor of a local-SGD pass; 1e-5 leaves an order of magnitude.
MULTI_ROUND_TOLERANCE = 1e-5


def test_several_rounds_agree_with_tff_within_float32_round_off(make_run):
    common = run_config(rounds=6, rounds_per_chunk=6, eval_every=3, client_sampling="poisson")
    by_engine = {}
    for engine in ("tff", "hybrid"):
        run = make_run(f"multi_{engine}", **common, engine=engine)
        program.train_until_round(run.root, 6)
        by_engine[engine] = (run, metrics_log.read_rows(run.metrics))
    (tff_run, tff_rows), (hybrid_run, hybrid_rows) = by_engine["tff"], by_engine["hybrid"]
    assert [r["engine"] for r in hybrid_rows] == ["hybrid"] * 6
    for tff_row, hybrid_row in zip(tff_rows, hybrid_rows, strict=True):
        assert tff_row["clients_sampled"] == hybrid_row["clients_sampled"]
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            if key in tff_row:
                assert hybrid_row[key] == pytest.approx(tff_row[key], abs=MULTI_ROUND_TOLERANCE), key
    assert max_abs_difference(checkpoint(tff_run).leaves, checkpoint(hybrid_run).leaves) <= MULTI_ROUND_TOLERANCE
    assert (hybrid_run.model / "MLmodel").exists()


def test_hybrid_chunks_equal_one_go_and_a_run_can_switch_engine_between_chunks(make_run):
    common = run_config(rounds=5, rounds_per_chunk=5, algorithm="fedadam", server_learning_rate=0.05)
    one_go, chunked = make_run("one_go", **common, engine="hybrid"), make_run("chunked", **common, engine="hybrid")
    program.train_until_round(one_go.root, 5)
    program.train_until_round(chunked.root, 2)
    program.train_until_round(chunked.root, 5)
    for a, b in zip(checkpoint(one_go).leaves, checkpoint(chunked).leaves, strict=True):
        np.testing.assert_array_equal(a, b)

    switched = make_run("switched", **common, engine="tff")
    program.train_until_round(switched.root, 2)  # rounds 1-2 on tff
    program.train_until_round(switched.root, 5, engine="hybrid")  # the same checkpoint, resumed on hybrid
    assert [r["engine"] for r in metrics_log.read_rows(switched.metrics)] == ["tff"] * 2 + ["hybrid"] * 3
    assert max_abs_difference(checkpoint(switched).leaves, checkpoint(one_go).leaves) <= MULTI_ROUND_TOLERANCE


PLACEMENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from trainer import hybrid, lifecycle, program
    lifecycle.install()
    tf.debugging.set_log_device_placement(True)  # only takes effect before TensorFlow's context starts
    exp = program.load_experiment(sys.argv[1])
    state = program.initial_state(exp)
    engine = hybrid.HybridEngine(exp.cfg, exp.model_fn, exp.process)
    rng = np.random.default_rng(0)
    def cohort(sizes, padded=False):
        c = engine.prepare([(rng.uniform(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 4, n))
                            for n in sizes], (8, 8, 1))
        return tuple(tf.constant(a) for a in (c.padded if padded else (c.x, c.y, c.starts, c.lengths)))
    w = state.global_model_weights
    args = ([tf.constant(v) for v in w.trainable], [tf.constant(v) for v in w.non_trainable],
            [tf.constant(v) for v in tf.nest.flatten(state.client_work)])
    lock_step_args = (args[0], tf.constant(0.1))
    result = {}
    # One client after another (for TFF's aggregation / with the in-graph mean), and the MLP in lock-step.
    for name, function, fixed, padded in (("_train_cohort", engine.train_cohort, args, False),
                                          ("_train_cohort_mean", engine.train_cohort_mean, args, False),
                                          ("lock_step_mean", engine.train_lock_step_mean, lock_step_args, True)):
        small, large = cohort([7, 3], padded), cohort([70, 33, 5, 61], padded)
        function(*fixed, *cohort([3], padded))  # the one trace
        for size, c in (("small", small), ("large", large)):
            print(f"@@begin {name} {size}", file=sys.stderr, flush=True)
            function(*fixed, *c)
            print(f"@@end {name} {size}", file=sys.stderr, flush=True)
        graph = function.get_concrete_function(*fixed, *small).graph
        ops = {op.type for op in graph.get_operations()}
        for f in graph.as_graph_def().library.function:
            ops |= {node.op for node in f.node_def}
        result[name] = {"traces": function.experimental_get_tracing_count(), "ops": sorted(ops)}
    print("@@result " + json.dumps(result), flush=True)
""")


def test_a_cohort_of_clients_trains_in_one_graph_call_with_no_python_or_numpy_per_batch(make_run):
    """With TF's placement logging on, training 2 clients (2 batches) and 4 clients (25 batches) each
    executes exactly one op eagerly: the compiled cohort function (each of the three client-work paths).
    Its graph loops (While) and holds no Python/numpy callbacks; clients of other sizes reuse the trace."""
    run = make_run("placement", **run_config())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "0", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", PLACEMENT_SCRIPT, str(run.root)], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("@@result ")[1].splitlines()[0])
    for name in ("_train_cohort", "_train_cohort_mean", "lock_step_mean"):
        for size in ("small", "large"):
            section = done.stderr.split(f"@@begin {name} {size}")[1].split(f"@@end {name} {size}")[0]
            executed = [line for line in section.splitlines() if "Executing op" in line]
            assert len(executed) == 1, executed
            assert "Executing op __inference_" in executed[0] and "device:CPU:0" in executed[0]
        assert results[name]["traces"] == 1
        assert "While" in results[name]["ops"] or "StatelessWhile" in results[name]["ops"]
        assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(results[name]["ops"])
