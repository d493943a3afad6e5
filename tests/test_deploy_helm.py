"""deploy/helm/crackseg-office, checked without helm or a cluster (neither is available here).

The chart is rendered by tests/deploy_helm.py (the subset of Helm's template language it uses) for
three sets of values; every manifest is validated against the Kubernetes 1.30 JSON Schemas in strict
mode (kubernetes-validate, offline), every workload is checked against the hardening rules below,
and every crackseg-office command and flag in the chart is parsed by the real argparse parser, with
the services, secrets, ports and environment it names present in the same release.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from office.cli import build_parser as office_parser
from tests.deploy_helm import Chart, RequiredValueError, Unsupported

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "crackseg-office"
K8S = "1.30.0"
SECRETS = {"secrets": {"postgresPassword": "pg-secret", "mqttPassword": "mqtt-secret"}}
VALUE_SETS = {
    "defaults": SECRETS,
    "scaled": {**SECRETS, "ingest": {"replicas": 4},
               "web": {"tileUrl": "https://{s}.tile.example.org/{z}/{x}/{y}.png", "tileAttribution": "(c) example",
                       "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "office-tls",
                                   "annotations": {"nginx.ingress.kubernetes.io/auth-type": "basic"}}}},
    "external-db": {"existingSecret": "office-credentials", "postgresql": {"enabled": False},
                    "externalDatabase": {"url": "postgresql://office@db.example.org:5432/office"}},
}
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(CHART)


def _docs(chart: Chart, name: str) -> list[dict[str, Any]]:
    return chart.manifests(VALUE_SETS[name])


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == CHART.name and meta["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    from office import __version__

    assert meta["appVersion"] == __version__, "the chart deploys this office version"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["office"]["image"]["tag"] == __version__
    assert (CHART / ".helmignore").exists()


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_manifests_validate_against_the_kubernetes_schemas(chart: Chart, values: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[office-test]' (kubernetes-validate)")
    docs = _docs(chart, values)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("StatefulSet") == (3 if values != "external-db" else 2)
    assert ("Secret" in kinds) == (values != "external-db") and ("Ingress" in kinds) == (values == "scaled")
    for doc in docs:
        kv.validate(doc, K8S, strict=True)   # raises ValidationError with the path of the problem
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "no two objects of one kind share a name"
    chart.render(VALUE_SETS[values])["NOTES.txt"]


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_workloads_are_hardened(chart: Chart, values: str) -> None:
    for doc in _docs(chart, values):
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        where = doc["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, where
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            limits = c["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(c["resources"]["requests"])
            image = c["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
            for env in c.get("env", []):
                if re.search(r"PASSWORD", env["name"]) and env["name"] != "POSTGRES_DB":
                    assert "valueFrom" in env and "value" not in env, f"{env['name']} must come from a Secret"
        for c in pod["containers"]:
            if c["name"] != "ingest":   # ingest serves nothing; its liveness is its MQTT session
                assert "readinessProbe" in c and "livenessProbe" in c, (where, c["name"])


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_office_commands_exist_in_the_real_cli_and_fit_the_release(chart: Chart, values: str) -> None:
    docs = _docs(chart, values)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    secret_name = VALUE_SETS[values].get("existingSecret") or next(
        d["metadata"]["name"] for d in docs if d["kind"] == "Secret")
    parser = office_parser()
    seen = set()
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        for c in _containers(doc["spec"]["template"]["spec"]):
            if not c["image"].startswith("crackseg-office:"):
                continue
            env = {e["name"]: e for e in c.get("env", [])}
            args = [re.sub(r"\$\((\w+)\)", lambda m: f"<{m.group(1)}>", a) for a in c["args"]]
            for ref in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
                assert ref in env, f"$({ref}) needs an env var of that name"
            ns = parser.parse_args(args)        # SystemExit (a failure) on an unknown command or flag
            seen.add(ns.command)
            assert "PGPASSWORD" in env and env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == secret_name
            host = re.match(r"postgresql://[^@:/]+@([^:/]+)", ns.db)
            assert host, ns.db
            if VALUE_SETS[values].get("postgresql", {}).get("enabled", True):
                assert host.group(1) in services
            if ns.command == "ingest":
                assert ns.client_id == "<POD_NAME>" and env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
                    "metadata.name", "the pod name (stable in a StatefulSet) is the MQTT client id"
                assert doc["kind"] == "StatefulSet" and doc["spec"]["replicas"] == VALUE_SETS[values].get(
                    "ingest", {}).get("replicas", 2)
                broker = re.match(r"mqtt://([^:/]+):1883$", ns.mqtt_url)
                assert broker and broker.group(1) in services
                assert env[ns.password_env]["valueFrom"]["secretKeyRef"]["key"] == "mqtt-password"
            if ns.command == "serve":
                assert ns.host == "0.0.0.0" and c["ports"][0]["containerPort"] == ns.port
                service = next(s for s in services.values() if s["spec"]["selector"].items() <= labels.items())
                assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
                assert (ns.tile_url is not None) == bool(VALUE_SETS[values].get("web", {}).get("tileUrl"))
    assert seen == {"init", "ingest", "serve"}


def test_every_service_selects_a_workload(chart: Chart) -> None:
    docs = _docs(chart, "defaults")
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in WORKLOADS]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert any(svc["spec"]["selector"].items() <= labels.items() for labels in pods), svc["metadata"]["name"]


def test_secrets_are_required_unless_an_existing_secret_is_named(chart: Chart) -> None:
    with pytest.raises(RequiredValueError, match="secrets.postgresPassword"):
        chart.render({})
    with pytest.raises(RequiredValueError, match="externalDatabase.url"):
        chart.render({**SECRETS, "postgresql": {"enabled": False}})
    docs = _docs(chart, "external-db")
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = re.findall(r"secretKeyRef:\s+key: [\w-]+\s+name: ([\w-]+)", yaml.safe_dump_all(docs))
    assert refs and set(refs) == {"office-credentials"}


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """So a chart change beyond the subset fails here instead of being checked wrongly."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("name: x\nversion: 0.1.0\n")
    (tmp_path / "values.yaml").write_text("items: [a, b]\n")
    for body in ("{{ range .Values.items }}{{ . }}{{ end }}", "{{ lookup \"v1\" \"Secret\" \"ns\" \"x\" }}",
                 "{{ $x := 1 }}", "{{ .Values.items }}"):
        (tmp_path / "templates" / "t.yaml").write_text(body)
        with pytest.raises(Unsupported):
            Chart(tmp_path).render()
