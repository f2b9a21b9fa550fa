"""docker-compose.yml is a valid Compose file whose services are wired the way the DAGs need them.

Validated by `docker compose config` where the Compose plugin exists; otherwise (no Docker engine on
these machines) against the Compose Specification's JSON schema as shipped in the docker-compose 1.29.2
wheel (fetched once with `pip download`, pinned by SHA-256), after interpolating `.env.example` the way
Compose does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from tasks.sources.download import PinnedPackage, fetch, read_member
from tests.conftest import ROOT

COMPOSE_SPEC = PinnedPackage("docker-compose==1.29.2", "docker_compose-1.29.2-py2.py3-none-any.whl",
                             "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809", sdist=False)
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-worker-gpu")
SHARED_SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                  "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND")
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$`` (a ``$``)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op in (":?", "?"):
            raise ValueError(f"required variable {name} is unset: {arg}")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(sub, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text(), env_example()))


def compose_plugin() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


def test_the_file_is_valid_compose(compose, tmp_path):
    if compose_plugin():
        done = subprocess.run(["docker", "compose", "--env-file", ".env.example", "config", "--quiet"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return
    wheel = fetch(COMPOSE_SPEC)
    schema = json.loads(read_member(wheel, "compose/config/compose_spec.json"))
    # The top-level project `name` joined the Compose Specification after this 2021 copy of its schema.
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_every_reference_resolves(compose):
    services, volumes = compose["services"], set(compose["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(("./", "/")) or source in volumes, f"{name} mounts undeclared volume {source}"
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing file {source}"
        if "build" in service:
            dockerfile = (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).read_text()
            assert re.search(rf"^FROM .+ AS {service['build']['target']}$", dockerfile, re.M), name


def test_airflow_runs_on_celery_postgres_and_redis_with_one_shared_secret_set(compose):
    services = compose["services"]
    assert {"postgres", "redis", "airflow-init", "mlflow", *AIRFLOW_SERVICES} <= set(services)
    envs = {name: services[name]["environment"] for name in (*AIRFLOW_SERVICES, "airflow-init")}
    for name, env in envs.items():
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:"), name
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0"), name
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
        assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > 24 * 3600  # > a chunk
    for secret in SHARED_SECRETS:  # the same value everywhere, else "Invalid auth token" and friends
        assert len({env[secret] for env in envs.values()}) == 1, secret
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert {"postgres", "redis"} <= set(depends), name
        assert "fedflow-data:/data" in services[name]["volumes"], name  # one data dir for every worker


def test_training_chunks_have_a_gpu_worker_of_their_own(compose):
    services = compose["services"]
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][-4:] == ["--queues", "gpu", "--concurrency", "1"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["target"] == "gpu"
    assert gpu["environment"]["FEDFLOW_WORKER_ROLE"] == "gpu"
    default = services["airflow-worker"]["command"]
    assert default[default.index("--queues") + 1] == "default"  # never the gpu queue
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and 'pools set gpu "${GPU_WORKERS}"' in init
    assert "passwords.json" in init


def test_each_gpu_worker_is_pinned_to_one_gpu(compose):
    gpu = compose["services"]["airflow-worker-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    # one host GPU, chosen by GPU_DEVICE_ID (count and device_ids are mutually exclusive); .env.example: 0
    assert "count" not in device and device["device_ids"] == [env_example()["GPU_DEVICE_ID"]] == ["0"]
    raw = (ROOT / "docker-compose.yml").read_text()
    assert 'device_ids: ["${GPU_DEVICE_ID:-0}"]' in raw
    # the container sees only the reserved GPU, as device 0; the trainer inherits the worker's environment
    assert gpu["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    for name, service in compose["services"].items():
        if name != "airflow-worker-gpu":
            assert "CUDA_VISIBLE_DEVICES" not in service.get("environment", {}), name
            assert "deploy" not in service, name


def test_the_gpu_image_builds_the_tff_env_from_the_gpu_lock_before_the_code():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    bases = {stage: base for base, stage in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.M)}
    body = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))
    assert bases["gpu"] == "envs-gpu" and bases["envs-gpu"] == "envs" and bases["cpu"] == "envs"
    assert re.search(r"^RUN make envs TFF_GPU=1 ", body["envs-gpu"], re.M)  # exactly `make envs TFF_GPU=1`
    assert "make envs PYTHON=python3.11 TFF_GPU=0" in body["envs"]  # the CPU lock, whatever the builder has
    # the environments are layers below the code (a code change re-downloads no CUDA wheel)
    assert "COPY --chown=fedflow:0 . ." not in body["envs"] + body["envs-gpu"]
    assert "pip install" not in body["envs-gpu"]
    assert body["gpu"].strip() == body["cpu"].strip()  # the same code and settings on both
    assert list(bases)[-1] == "cpu"  # the default target stays the CPU image


def test_mlflow_runs_on_postgres_with_served_artifacts_and_allowed_service_names(compose):
    command = compose["services"]["mlflow"]["command"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    assert options["backend-store-uri"].startswith("postgresql+psycopg2://mlflow:")
    assert "--serve-artifacts" in command and options["artifacts-destination"] == "/mlflow/artifacts"
    assert {"mlflow", "mlflow:5000"} <= set(options["allowed-hosts"].split(","))
    init = (ROOT / "docker" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE mlflow" in init


def test_ports_are_bound_to_loopback_and_no_secret_is_committed(compose):
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    secrets = {k: v for k, v in env_example().items() if k.endswith(("PASSWORD", "KEY", "SECRET"))}
    assert secrets and set(secrets.values()) == {"change-me"}
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in secrets:  # secrets are required from .env, never defaulted in the file
        assert f"${{{name}:-" not in raw and f"${{{name}:?" in raw, name


def test_a_missing_secret_stops_interpolation_naming_it():
    env = {k: v for k, v in env_example().items() if k != "AIRFLOW_JWT_SECRET"}
    with pytest.raises(ValueError, match="AIRFLOW_JWT_SECRET is unset: set it in .env"):
        interpolate((ROOT / "docker-compose.yml").read_text(), env)


def test_the_image_never_copies_host_environments_secrets_or_data():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv/", ".venv-tff/", ".env", "data/", "mlruns/", ".airflow/"} <= ignored
