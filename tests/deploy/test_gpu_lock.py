"""requirements/tff-gpu.lock is requirements/tff.lock plus TensorFlow 2.14.1's CUDA wheels, and `make envs`
builds .venv-tff from the lock it should (TFF_GPU=1/0, else `nvidia-smi -L`), re-syncing when it switches.

Stdlib only (runs in .venv); nothing here installs anything or needs a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
# TensorFlow 2.14.1's `and-cuda` extra (tensorflow-2.14.1.dist-info/METADATA) without tensorrt==8.5.3.1,
# which has no cp311 wheel (so `tensorflow[and-cuda]==2.14.1` cannot resolve on Python 3.11).
AND_CUDA = {
    "nvidia-cublas-cu11": "11.11.3.6",
    "nvidia-cuda-cupti-cu11": "11.8.87",
    "nvidia-cuda-nvcc-cu11": "11.8.89",
    "nvidia-cuda-runtime-cu11": "11.8.89",
    "nvidia-cudnn-cu11": "8.7.0.84",
    "nvidia-cufft-cu11": "10.9.0.58",
    "nvidia-curand-cu11": "10.3.0.86",
    "nvidia-cusolver-cu11": "11.4.1.48",
    "nvidia-cusparse-cu11": "11.7.5.86",
    "nvidia-nccl-cu11": "2.16.5",
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if m := _PIN.match(line.strip()):
            found[normalize(m.group(1))] = m.group(2)
    return found


def test_the_gpu_lock_pins_everything_the_cpu_lock_pins_to_the_same_version():
    cpu, gpu = pins(REQUIREMENTS / "tff.lock"), pins(REQUIREMENTS / "tff-gpu.lock")
    assert cpu and gpu["tensorflow"] == "2.14.1" and gpu["tensorflow-federated"] == cpu["tensorflow-federated"]
    different = {name: (version, gpu.get(name)) for name, version in cpu.items() if gpu.get(name) != version}
    assert not different, f"tff-gpu.lock differs from tff.lock (cpu, gpu): {different}"
    # and adds nothing but the CUDA wheels: the two envs compute the same thing
    assert {name: gpu[name] for name in set(gpu) - set(cpu)} == AND_CUDA


def test_the_gpu_lock_has_tensorflows_cuda_wheels_and_no_tensorrt():
    gpu = pins(REQUIREMENTS / "tff-gpu.lock")
    assert {name: gpu.get(name) for name in AND_CUDA} == AND_CUDA
    assert not [name for name in gpu if name.startswith("tensorrt")]
    listed = pins(REQUIREMENTS / "tff-gpu.in")
    assert {name: v for name, v in listed.items() if name.startswith("nvidia-")} == AND_CUDA
    assert "-r tff.in" in (REQUIREMENTS / "tff-gpu.in").read_text().splitlines()


def test_the_gpu_lock_is_resolved_the_way_make_lock_resolves_it():
    header = (REQUIREMENTS / "tff-gpu.lock").read_text().splitlines()[1]
    command = header.lstrip("# ").split()
    assert command[:3] == ["uv", "pip", "compile"]
    makefile = (ROOT / "Makefile").read_text()
    lock_recipe = makefile[makefile.index("\nlock:"):]
    lock_recipe = " ".join(lock_recipe[:lock_recipe.index("\n\n")].replace("\\\n", " ").split())
    # every option of the header is in `make lock`'s GPU command, which runs after tff.lock is re-resolved
    for option in ("--python-version 3.11", "--python-platform x86_64-manylinux_2_31",
                   "--override requirements/tff-overrides.txt", "--constraint requirements/tff.lock",
                   "requirements/tff-gpu.in -o requirements/tff-gpu.lock"):
        assert option in " ".join(command) and option in lock_recipe, option
    assert lock_recipe.index("-o requirements/tff.lock") < lock_recipe.index("-o requirements/tff-gpu.lock")


def test_the_extra_matches_the_installed_tensorflow_metadata():
    metadata = ROOT / ".venv-tff/lib/python3.11/site-packages/tensorflow-2.14.1.dist-info/METADATA"
    if not metadata.exists():
        pytest.skip(f"{metadata.relative_to(ROOT)} is not installed")
    extra = {}
    for line in metadata.read_text().splitlines():
        m = re.match(r"Requires-Dist: (\S+) \(==([^)]+)\) ; extra == 'and-cuda'", line)
        if m:
            extra[normalize(m.group(1))] = m.group(2)
    assert extra == {**AND_CUDA, "tensorrt": "8.5.3.1"}


@pytest.fixture
def fake_checkout(tmp_path):
    """The Makefile with fake locks, venvs and a `uv` that only records its arguments."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / "requirements").mkdir()
    for lock in ("airflow.lock", "tff.lock", "tff-gpu.lock"):
        (tmp_path / "requirements" / lock).touch()
    for venv in (".venv", ".venv-tff"):
        (tmp_path / venv / "bin").mkdir(parents=True)
        (tmp_path / venv / "bin" / "python").touch(mode=0o755)
    (tmp_path / ".venv" / ".fedflow-stamp").touch()
    (tmp_path / "bin").mkdir()
    uv = tmp_path / "bin" / "uv"
    uv.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/uv.log\n')
    uv.chmod(0o755)
    return tmp_path


def make_envs(checkout: Path, *args: str, gpu: bool = False) -> str | None:
    """`make envs`; returns the lock it synced .venv-tff from (None: nothing to do)."""
    bin_dir = checkout / "bin"
    if gpu:
        (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: fake (UUID: GPU-0)"\n')
        (bin_dir / "nvidia-smi").chmod(0o755)
    else:
        (bin_dir / "nvidia-smi").unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("TFF_GPU", None)
    log = checkout / "uv.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["make", "-s", "envs", f"UV={bin_dir / 'uv'}", *args], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    synced = re.findall(r"pip sync .* (requirements/\S+\.lock)", log.read_text() if log.exists() else "")
    return synced[0] if synced else None


def test_make_envs_picks_the_lock_and_resyncs_when_it_switches(fake_checkout):
    assert make_envs(fake_checkout) == "requirements/tff.lock"  # no nvidia-smi: CPU, as in CI
    assert make_envs(fake_checkout) is None  # up to date
    assert make_envs(fake_checkout, gpu=True) == "requirements/tff-gpu.lock"  # nvidia-smi -L lists a GPU
    assert make_envs(fake_checkout, gpu=True) is None
    assert make_envs(fake_checkout, "TFF_GPU=0", gpu=True) == "requirements/tff.lock"  # forced CPU
    assert make_envs(fake_checkout, "TFF_GPU=1") == "requirements/tff-gpu.lock"  # forced GPU
    assert make_envs(fake_checkout, "TFF_GPU=1") is None
    assert make_envs(fake_checkout, "TFF_GPU=0") == "requirements/tff.lock"  # back: never a stale stamp
    os.utime(fake_checkout / ".venv-tff" / ".fedflow-stamp-cpu", (1, 1))  # the lock changed since the sync
    assert make_envs(fake_checkout, "TFF_GPU=0") == "requirements/tff.lock"


def test_make_rejects_an_unknown_tff_gpu_value(fake_checkout):
    done = subprocess.run(["make", "-s", "envs", "TFF_GPU=yes"], cwd=fake_checkout, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "TFF_GPU must be 0" in done.stderr
