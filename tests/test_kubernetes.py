"""deploy/kubernetes/ (a kustomize base) is valid for a current Kubernetes and keeps the
service's operating rules; a broken copy is caught (so the check can fail)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.runtime.config import load as load_config
from server.runtime.config import networks
from tests.helpers import ROOT

BASE = ROOT / "deploy" / "kubernetes"
# The newest release the pinned kubernetes-validate knows (1.37.0 knows up to 1.37).
KUBERNETES_VERSION = "1.37.0"


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """The base's resources by kind, after checking the kustomization lists every file."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(present)}"
    resources = {}
    for name in sorted(listed):
        for doc in yaml.safe_load_all((folder / name).read_text()):
            resources[doc["kind"]] = doc
    return resources


def validation_errors(folder: Path) -> list[str]:
    errors = []
    for kind, resource in load(folder).items():
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{kind}: {exc.message} at {'.'.join(map(str, exc.path))}")
    return errors


def test_every_manifest_is_valid_for_a_current_kubernetes() -> None:
    assert validation_errors(BASE) == []


@pytest.mark.parametrize(
    ("broken", "replacement"),
    [
        ("replicas: 2", 'replicas: "two"'),  # wrong type
        ("terminationGracePeriodSeconds: 45", "terminationGracePeriod: 45"),  # unknown field (strict)
        ("      containers:\n        - name: api", "      containers:\n        - nam: api"),  # required field missing
    ],
)
def test_a_broken_manifest_fails_validation(tmp_path: Path, broken: str, replacement: str) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(BASE, copy)
    deployment = copy / "deployment.yaml"
    assert broken in deployment.read_text()
    deployment.write_text(deployment.read_text().replace(broken, replacement, 1))
    errors = validation_errors(copy)
    assert len(errors) == 1 and errors[0].startswith("Deployment:"), errors


def test_pods_drain_before_they_stop_and_get_the_time_the_service_asks_for() -> None:
    resources = load(BASE)
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    grace = int(resources["ConfigMap"]["data"]["SHUTDOWN_GRACE_SECONDS"])
    pause = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + grace
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["resources"]["requests"] and api["resources"]["limits"]


def test_pods_and_the_migration_job_run_as_the_images_non_root_user() -> None:
    resources = load(BASE)
    dockerfile_user = next(
        line.split()[1].split(":")[0]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    )
    for kind in ("Deployment", "Job"):
        pod = resources[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (migrate,) = resources["Job"]["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]


def test_selectors_and_references_match() -> None:
    resources = load(BASE)
    deployment = resources["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = resources[kind]["spec"]
        selector = spec["selector"] if kind == "Service" else spec["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), kind
    assert resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    for kind in ("Deployment", "Job"):
        (container,) = resources[kind]["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": resources["ConfigMap"]["metadata"]["name"]}}]
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
        assert secrets == {"storefront-secrets"}, kind


def test_metrics_need_the_metrics_token_from_the_secret() -> None:
    (api,) = load(BASE)["Deployment"]["spec"]["template"]["spec"]["containers"]
    (token,) = [e for e in api["env"] if e["name"] == "METRICS_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == "storefront-secrets"
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)


def test_stripes_secrets_come_from_the_secret_and_the_configmaps_provider_is_a_valid_setting() -> None:
    resources = load(BASE)
    (api,) = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    secret_keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in api["env"] if "valueFrom" in e}
    assert secret_keys["STRIPE_API_KEY"] == "STRIPE_API_KEY"
    assert secret_keys["STRIPE_WEBHOOK_SECRET"] == "STRIPE_WEBHOOK_SECRET"
    provider = resources["ConfigMap"]["data"]["PAYMENT_PROVIDER"]
    assert load_config(environ=resources["ConfigMap"]["data"]).payment_provider == provider


def test_client_addresses_are_believed_only_from_the_ingress() -> None:
    """TRUST_FORWARDED_FOR believes the right-most X-Forwarded-For entry from anyone:
    a client that reaches a pod directly picks its address. TRUSTED_PROXIES names the
    ingress controller, and everyone else is their own address."""
    settings = load(BASE)["ConfigMap"]["data"]
    config = load_config(environ=settings)
    assert not config.trust_forwarded_for
    assert networks(config.trusted_proxies)


def test_only_the_ingress_and_prometheus_reach_the_pods() -> None:
    resources = load(BASE)
    policy = resources["NetworkPolicy"]["spec"]
    pod_labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in policy["policyTypes"]
    sources = []
    for rule in policy["ingress"]:
        assert rule["ports"] == [{"port": "http"}]
        for peer in rule["from"]:  # each names a namespace and the pods in it, never "anyone"
            assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"], peer
            sources.append(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    assert sorted(sources) == ["ingress-nginx", "prometheus"]
