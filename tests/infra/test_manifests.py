"""infra/ and jobs/: every YAML parses, Kubernetes manifests validate, every job a file names exists and parses."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import typer
import yaml

from mtc_cli.app import app
from tests.conftest import REPO

K8S_VERSION = "1.32.0"
RAY_API = "ray.io/v1"
YAML_FILES = sorted([*REPO.glob("infra/**/*.yaml"), *REPO.glob("jobs/*.yaml")])
K8S_FILES = sorted(REPO.glob("infra/k8s/*.yaml"))
JOBS = sorted(p.stem for p in REPO.glob("jobs/*.py"))
DOCS = sorted([*REPO.glob("infra/**/*"), *REPO.glob("jobs/*"), REPO / "README.md"])
JOB_CALL = re.compile(r"python (\S*?)jobs/(\w+)\.py([^\n`|;]*)")


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in K8S_FILES for d in _documents(p)]


def _custom(kind: str) -> list[dict]:
    return [d for _, d in _k8s_objects() if d["kind"] == kind]


def _as_pod(template: dict) -> dict:
    """A pod template as a Pod, so that its spec validates against the Kubernetes schema."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template"}, "spec": template["spec"]}


def _job_calls() -> list[tuple[str, str, str]]:
    """(file, job name, arguments) for every `python jobs/<name>.py ...` in infra/, jobs/ and the README."""
    calls = []
    for path in DOCS:
        if path.is_file():
            text = path.read_text().replace("\\\n", " ")
            if path.suffix == ".yaml":  # folded YAML strings: read the entrypoints as YAML gives them
                text += "\n".join(d["spec"]["entrypoint"] for d in _documents(path) if d.get("kind") == "RayJob")
            calls += [(path.name, m[2], m[3]) for m in JOB_CALL.finditer(text)]
    return calls


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    assert _documents(path), f"{path} holds no document"


@pytest.mark.parametrize(
    ("name", "obj"),
    [o for o in _k8s_objects() if "/" not in o[1]["apiVersion"] or not o[1]["apiVersion"].startswith("ray.io")],
)
def test_builtin_kinds_validate_against_the_kubernetes_schema(name: str, obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(next(d for _, d in _k8s_objects() if d["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy_"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_raycluster_structure() -> None:
    (cluster,) = _custom("RayCluster")
    assert cluster["apiVersion"] == RAY_API
    head, groups = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"]
    templates = [head["template"], *(g["template"] for g in groups)]
    for params in (head["rayStartParams"], *(g["rayStartParams"] for g in groups)):
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
    for template in templates:
        kubernetes_validate.validate(_as_pod(template), K8S_VERSION, strict=True)
        assert template["spec"]["containers"][0]["image"]
    for group in groups:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in groups
    )
    assert gpus >= 8, "sized for mtc train --gpus 8"
    claims = {d["metadata"]["name"] for _, d in _k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    for template in templates:
        used = {
            v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v
        }
        assert used <= claims
        assert any(m["mountPath"] == "/shared" for m in template["spec"]["containers"][0]["volumeMounts"])


@pytest.mark.parametrize("job", _custom("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_rayjob_structure(job: dict) -> None:
    (cluster,) = _custom("RayCluster")
    assert job["apiVersion"] == RAY_API
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert spec["entrypoint"].startswith("python jobs/")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/mtc"  # infra/Dockerfile's checkout
    kubernetes_validate.validate(_as_pod(spec["submitterPodTemplate"]), K8S_VERSION, strict=True)


def test_mlflow_server_uses_postgres_and_proxied_artifacts() -> None:
    (deployment,) = [d for _, d in _k8s_objects() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["command"] + container["args"])
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args and "--artifacts-destination=s3://" in args
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "uri"
    services = {d["metadata"]["name"] for _, d in _k8s_objects() if d["kind"] == "Service"}
    assert {"mlflow", "mlflow-postgres"} <= services
    env = next(d for _, d in _k8s_objects() if d["kind"] == "ConfigMap")["data"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
    compose = _documents(REPO / "infra/mlflow/compose.yaml")[0]["services"]
    assert "postgresql://" in compose["mlflow"]["command"] and "--artifacts-destination" in compose["mlflow"]["command"]
    assert compose["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_ray_cluster_launcher_config() -> None:
    (config,) = _documents(REPO / "infra/ray/cluster.yaml")
    assert config["head_node_type"] in config["available_node_types"]
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) <= config["max_workers"]
    setup = "\n".join(config["setup_commands"])
    assert re.search(r'"torch==[\d.]+" --index-url https://download.pytorch.org/whl/cu', setup)
    assert setup.index("torch==") < setup.index("install --quiet -e ~/mtc"), "torch first, then mtc keeps it"
    assert config["file_mounts"] == {"~/mtc": "."}


def test_runtime_env_ships_the_code_and_names_the_shared_services() -> None:
    (env,) = _documents(REPO / "jobs/runtime_env.yaml")
    assert all((REPO / p / "__init__.py").exists() for p in env["py_modules"])
    assert {"MLFLOW_TRACKING_URI", "MTC_STORAGE"} <= set(env["env_vars"])


def test_every_job_named_anywhere_exists_and_its_arguments_parse() -> None:
    calls = _job_calls()
    assert {job for _, job, _ in calls} == set(JOBS) == {"featurize", "train", "tune", "screen", "embed"}
    commands = typer.main.get_command(app).commands
    for where, job, args in calls:
        assert (REPO / "jobs" / f"{job}.py").exists(), f"{where} names jobs/{job}.py"
        words = shlex.split(args)
        if words and not any(w in ("...", "ARGS") for w in words):  # a full command line: its options must exist
            commands[job].make_context(f"jobs/{job}.py", words)


@pytest.mark.parametrize("job", JOBS)
def test_job_entrypoint_help(job: str) -> None:
    result = subprocess.run(
        [sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: jobs/{job}.py" in result.stdout
