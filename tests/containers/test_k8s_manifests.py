"""deploy/k8s/ against the Kubernetes schemas (kubernetes-validate, strict: no unknown fields), and what the
schemas cannot say: probes, requests and limits on every container, and the same scale-out settings as compose.
No cluster is needed (none has run these manifests: README, "Kubernetes")."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.containers.engine import COMPOSE_FILE

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported by the large managed offerings
SHARED = {"INFAAS_REDIS_URL", "INFAAS_BROKER_URL", "INFAAS_MODEL_STORE", "INFAAS_DATABASE_URL", "INFAAS_ADMIN_KEY"}


def _resources() -> list[tuple[str, dict]]:
    found = [
        (path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]
    assert found, f"no manifests under {K8S}"
    return found


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in _resources() if doc["kind"] == kind}


@pytest.mark.parametrize(("name", "resource"), _resources(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_matches_the_kubernetes_schema(name: str, resource: dict) -> None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} {resource['kind']}/{resource['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_schema_check_rejects_a_broken_manifest() -> None:
    """The check above is not vacuous: a misspelt field and a wrong type are both refused."""
    deployment = _by_kind("Deployment")["infaas-worker"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for broken in ({**container, "readinesProbe": container["readinessProbe"]}, {**container, "ports": "8101"}):
        spec = {**deployment["spec"]["template"]["spec"], "containers": [broken]}
        bad = {
            **deployment,
            "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"], "spec": spec}},
        }
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _containers() -> dict[str, dict]:
    return {name: c for name, d in _by_kind("Deployment").items() for c in d["spec"]["template"]["spec"]["containers"]}


def _env(container: dict) -> dict[str, str]:
    """Variables set on the container itself, and the names its ConfigMap and Secret bring in."""
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        (doc,) = [d for _, d in _resources() if d["kind"] == kind and d["metadata"]["name"] == ref["name"]]
        env.update({k: v for k, v in (doc.get("data") or doc.get("stringData")).items() if k not in env})
    return env


def test_every_container_has_probes_requests_and_limits_and_runs_as_non_root() -> None:
    deployments = _by_kind("Deployment")
    assert set(deployments) == {"infaas-api", "infaas-worker", "infaas-jobs"}
    for name, container in _containers().items():
        assert container.get("readinessProbe") and container.get("livenessProbe"), name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        assert SHARED <= set(_env(container)), (name, SHARED - set(_env(container)))
        assert deployments[name]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_scale_out_settings_match_compose() -> None:
    """Router-only front-ends, and workers that advertise an address other pods reach (not 0.0.0.0)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    api = _env(_containers()["infaas-api"])
    router_only = ("INFAAS_IN_PROCESS_WORKER", "INFAAS_MIN_WORKERS", "INFAAS_MAX_WORKERS")
    assert {k: api[k] for k in router_only} == {k: compose["api"]["environment"][k] for k in router_only}
    worker = _containers()["infaas-worker"]
    env = _env(worker)
    assert env["INFAAS_WORKER_ADVERTISE"] == f"http://$(POD_IP):{env['INFAAS_WORKER_PORT']}"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health"
    assert int(env["INFAAS_WORKER_CORES"]) == int(worker["resources"]["limits"]["cpu"])
    limit_mb = int(worker["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert int(env["INFAAS_WORKER_MEMORY_MB"]) < limit_mb  # the variant budget fits inside the pod's limit
    assert _containers()["infaas-jobs"]["command"][:2] == ["infaas", "jobs"]
