"""The trainer's devices: GPU memory growth, the GPUs TensorFlow sees, the record of the environment a chunk
ran in (``tff_env.json``) and the GPU's peak memory per round."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import tensorflow as tf

from tasks import atomic
from tasks.paths import RunPaths


def configure_devices() -> list[str]:
    """GPU memory grows as needed (TensorFlow would otherwise reserve the whole card at start-up);
    returns the visible GPUs. A GPU worker pins its trainer to one card with CUDA_VISIBLE_DEVICES."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process (tests build several experiments)
            pass
    return [gpu.name for gpu in gpus]


LINEAGE_PACKAGES = ("tensorflow", "tensorflow-federated", "numpy", "jax", "jaxlib", "dp-accounting", "mlflow")


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees, by model name (e.g. 'NVIDIA H100 80GB HBM3')."""
    return [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]


def record_environment(run: RunPaths, engine: str = "tff") -> dict:
    """Writes the TFF environment's package versions, devices, engine and the device the client work
    trains on to ``tff_env.json`` (each chunk: a resumed run may continue on another machine or engine;
    the newest record wins). The ``tff`` engine computes in TFF's CPU-only ``worker_binary``."""
    devices = gpu_names() or ["CPU"]
    versions = {}
    for name in LINEAGE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    env = {
        "python": platform.python_version(),
        "packages": versions,
        "devices": devices,
        "engine": engine,
        "train_device": devices[0] if engine == "hybrid" else "CPU (TFF worker_binary)",
        **({"train_device": f"jax {jax_device()}"} if engine == "jax" else {}),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "host": platform.node(),
    }
    atomic.write_json(run.tff_env, env)
    return env


def jax_device() -> str:
    from trainer import jax_engine  # noqa: PLC0415 - imports jax, needed by this engine only

    return jax_engine.device_name()


def gpu_memory_peak_mb() -> dict[str, float]:
    """Peak memory TensorFlow allocated on the GPU since the last call (empty without a GPU)."""
    if not tf.config.list_logical_devices("GPU"):
        return {}
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    tf.config.experimental.reset_memory_stats("GPU:0")
    return {"gpu_memory_peak_mb": peak / 2**20}
