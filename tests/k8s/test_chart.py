"""Helm chart validation: lint, render and strictly validate k8s/reasonrec, offline.

Rendering and linting use helm-python-sdk (Helm's Go SDK through a bundled C library: no helm
binary, no cluster). Built-in kinds are validated by kubernetes-validate against the bundled
Kubernetes JSON schemas in strict mode (unknown fields fail). CRD kinds (ServiceMonitor,
VirtualService, DestinationRule) have no bundled schema; they are checked against the subset
of their CRD fields the chart uses (strict too) and cross-checked against the objects they
point at.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (dev extra)")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "reasonrec"
PRODUCTION_VALUES = CHART / "values-gpu-production.yaml"
KUBE_VERSION = "1.31.0"
RELEASE = "rr"
NAMESPACE = "recs"
FULL = f"{RELEASE}-reasonrec"

Manifest = dict[str, Any]
CRD_KINDS = {"ServiceMonitor", "VirtualService", "DestinationRule"}


# ------------------------------------------------------------------------------------ helpers
def _load_chart() -> Any:
    try:
        return helm.Chart.load(CHART)
    except helm.HelmLibraryError as exc:  # the bundled native library failed to load
        pytest.skip(f"helm-python-sdk native library unusable here: {exc}")


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Render the chart with `values` into a list of Kubernetes objects."""
    with _load_chart() as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render_notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    with _load_chart() as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return rendered["reasonrec/templates/NOTES.txt"]


def production_values() -> dict[str, Any]:
    """values-gpu-production.yaml as a dict."""
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


def by_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    """Objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def the(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of `kind` named `name` (fails the test when absent)."""
    found = by_kind(objects, kind)
    assert name in found, f"no {kind}/{name}; have {sorted(found)}"
    return found[name]


def container(deployment: Manifest, name: str) -> Manifest:
    """A container of a Deployment's pod template by name."""
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert name in containers, f"{deployment['metadata']['name']} has no container {name}"
    return containers[name]


def env_of(c: Manifest) -> dict[str, Any]:
    """A container's env as name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether matchLabels `selector` selects an object with `labels`."""
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(deployment name, pod template) of every Deployment."""
    for name, dep in by_kind(objects, "Deployment").items():
        yield name, dep["spec"]["template"]


def dockerfile_cmd(name: str) -> list[str]:
    """The exec-form CMD of docker/<name>."""
    text = (ROOT / "docker" / name).read_text()
    match = re.search(r"^CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form CMD in docker/{name}"
    return json.loads(match.group(1))


# ------------------------------------------------------------------ CRD subsets (strict)
_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "labels"],
    "properties": {"name": _STR, "labels": _LABELS},
    "additionalProperties": False,
}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
    }


def _strict(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": props,
    }


_DESTINATION = _strict(
    {"host": _STR, "subset": _STR, "port": _strict({"number": {"type": "integer"}}, ["number"])},
    ["host"],
)
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    # monitoring.coreos.com/v1 ServiceMonitor: the fields the chart sets, as the CRD types them.
    "ServiceMonitor": _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _strict(
            {
                "selector": _strict({"matchLabels": _LABELS}, ["matchLabels"]),
                "namespaceSelector": _strict(
                    {"matchNames": {"type": "array", "items": _STR}, "any": {"type": "boolean"}},
                    [],
                ),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "port": _STR,
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": r"^[0-9]+(ms|s|m|h)$",
                            },
                        },
                        ["port"],
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    ),
    # networking.istio.io/v1 DestinationRule / VirtualService (subsets, weighted http routes).
    "DestinationRule": _crd(
        "networking.istio.io/v1",
        "DestinationRule",
        _strict(
            {
                "host": _STR,
                "subsets": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict({"name": _STR, "labels": _LABELS}, ["name", "labels"]),
                },
            },
            ["host", "subsets"],
        ),
    ),
    "VirtualService": _crd(
        "networking.istio.io/v1",
        "VirtualService",
        _strict(
            {
                "hosts": {"type": "array", "minItems": 1, "items": _STR},
                "gateways": {"type": "array", "items": _STR},
                "http": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "name": _STR,
                            "match": {
                                "type": "array",
                                "items": _strict(
                                    {
                                        "headers": {
                                            "type": "object",
                                            "additionalProperties": _strict(
                                                {"exact": _STR, "prefix": _STR, "regex": _STR},
                                                [],
                                            ),
                                        }
                                    },
                                    [],
                                ),
                            },
                            "route": {
                                "type": "array",
                                "minItems": 1,
                                "items": _strict(
                                    {
                                        "destination": _DESTINATION,
                                        "weight": {"type": "integer", "minimum": 0, "maximum": 100},
                                    },
                                    ["destination"],
                                ),
                            },
                        },
                        ["route"],
                    ),
                },
            },
            ["hosts", "http"],
        ),
    ),
}


def validate_all(objects: list[Manifest]) -> list[str]:
    """Strictly validate every object; returns the problems (empty: all valid)."""
    problems: list[str] = []
    for obj in objects:
        ident = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj["kind"] in CRD_KINDS:
            validator = jsonschema.Draft7Validator(CRD_SCHEMAS[obj["kind"]])
            problems += [f"{ident}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
            continue
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{ident}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            problems.append(f"{ident}: no Kubernetes {KUBE_VERSION} schema: {exc.message}")
    return problems


# -------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def default_objects() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def prod_objects() -> list[Manifest]:
    return render(production_values())


# ------------------------------------------------------------------------- lint + validate
@pytest.mark.parametrize("values_name", ["default", "gpu-production"])
def test_chart_lints_clean(values_name: str) -> None:
    values = production_values() if values_name == "gpu-production" else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


@pytest.mark.parametrize("values_name", ["default", "gpu-production"])
def test_every_manifest_validates_strictly(
    values_name: str, default_objects: list[Manifest], prod_objects: list[Manifest]
) -> None:
    objects = prod_objects if values_name == "gpu-production" else default_objects
    assert objects
    assert validate_all(objects) == []


def test_strict_validation_catches_a_misspelt_field(default_objects: list[Manifest]) -> None:
    # Negative control: the validators above must reject what a cluster would reject.
    broken = copy.deepcopy(the(default_objects, "Deployment", f"{FULL}-api"))
    container(broken, "api")["imagePullPolcy"] = "Always"
    assert any("imagePullPolcy" in p for p in validate_all([broken]))
    monitors = by_kind(render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    monitor = copy.deepcopy(monitors[f"{FULL}-api"])
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    assert any("intervall" in p for p in validate_all([monitor]))


def _port_names(template: Manifest) -> set[str]:
    """Named container ports of a pod template."""
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


def dangling_references(objects: list[Manifest]) -> list[str]:
    """References that point at nothing: selectors, named ports, volumes, scale targets."""
    problems: list[str] = []
    pods = dict(pod_templates(objects))
    for name, dep in by_kind(objects, "Deployment").items():
        if not selects(
            dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
        ):
            problems.append(f"Deployment {name}: selector does not match its pod template")
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"Deployment {name}: {probe} port {port} is not declared")
            problems += [
                f"Deployment {name}: mount of unknown volume {m['name']}"
                for m in c.get("volumeMounts", [])
                if m["name"] not in volumes
            ]
    services = by_kind(objects, "Service")
    for name, svc in services.items():
        sel = svc["spec"]["selector"]
        matched = [t for t in pods.values() if selects(sel, t["metadata"]["labels"])]
        if not matched:
            problems.append(f"Service {name} selects no pod")
        problems += [
            f"Service {name}: targetPort {p['targetPort']} not on its pods"
            for p in svc["spec"]["ports"]
            if matched and not any(p["targetPort"] in _port_names(t) for t in matched)
        ]
    for name, hpa in by_kind(objects, "HorizontalPodAutoscaler").items():
        if hpa["spec"]["scaleTargetRef"]["name"] not in pods:
            problems.append(f"HPA {name} scales a missing Deployment")
    for name, pdb in by_kind(objects, "PodDisruptionBudget").items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, t["metadata"]["labels"]) for t in pods.values()):
            problems.append(f"PDB {name} selects no pod")
    for name, sm in by_kind(objects, "ServiceMonitor").items():
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services.values() if selects(sel, s["metadata"]["labels"])]
        if not targets:
            problems.append(f"ServiceMonitor {name} selects no Service")
        for endpoint in sm["spec"]["endpoints"]:
            if not all(
                endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in targets
            ):
                problems.append(f"ServiceMonitor {name}: port {endpoint['port']} missing")
    for name, dr in by_kind(objects, "DestinationRule").items():
        for subset in dr["spec"]["subsets"]:
            if not any(selects(subset["labels"], t["metadata"]["labels"]) for t in pods.values()):
                problems.append(f"DestinationRule {name}: subset {subset['name']} selects no pod")
    return problems


def test_every_reference_resolves(
    default_objects: list[Manifest], prod_objects: list[Manifest]
) -> None:
    canary_on = render({"canary": {"enabled": True, "image": {"tag": "b"}}})
    for objects in (default_objects, prod_objects, canary_on):
        assert dangling_references(objects) == []
    # Negative control: a Service whose selector matches nothing is reported.
    broken = copy.deepcopy(default_objects)
    the(broken, "Service", f"{FULL}-api")["spec"]["selector"]["app.kubernetes.io/component"] = "x"
    assert dangling_references(broken) == [f"Service {FULL}-api selects no pod"]


# ----------------------------------------------------------------------------- defaults
def test_default_objects(default_objects: list[Manifest]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in default_objects}
    assert kinds == {
        ("ServiceAccount", FULL),
        ("ConfigMap", f"{FULL}-experiments"),
        ("PersistentVolumeClaim", f"{FULL}-release"),
        ("Deployment", f"{FULL}-api"),
        ("Service", f"{FULL}-api"),
        ("HorizontalPodAutoscaler", f"{FULL}-api"),
        ("PodDisruptionBudget", f"{FULL}-api"),
        ("Deployment", f"{FULL}-worker-cpu"),
        ("Service", f"{FULL}-worker-metrics"),
        ("Deployment", f"{FULL}-beat"),
        ("Deployment", f"{FULL}-redis"),
        ("Service", f"{FULL}-redis"),
    }


def test_api_deployment_and_service(default_objects: list[Manifest]) -> None:
    dep = the(default_objects, "Deployment", f"{FULL}-api")
    api = container(dep, "api")
    assert api["args"] == dockerfile_cmd("Dockerfile.api")
    assert {p["name"]: p["containerPort"] for p in api["ports"]} == {"http": 8000, "grpc": 50051}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    svc = the(default_objects, "Service", f"{FULL}-api")
    assert {p["name"]: (p["port"], p.get("appProtocol")) for p in svc["spec"]["ports"]} == {
        "http": (8000, "http"),
        "grpc": (50051, "grpc"),
    }
    hpa = the(default_objects, "HorizontalPodAutoscaler", f"{FULL}-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert the(default_objects, "PodDisruptionBudget", f"{FULL}-api")["spec"]["minAvailable"] == 1


def test_api_environment_and_mounts(default_objects: list[Manifest]) -> None:
    spec = the(default_objects, "Deployment", f"{FULL}-api")["spec"]["template"]["spec"]
    api = container(the(default_objects, "Deployment", f"{FULL}-api"), "api")
    env = env_of(api)
    assert env["REDIS_URL"] == f"redis://{FULL}-redis:6379/0"
    assert env["REASONREC_RELEASE_DIR"] == "/models/release"
    assert env["REASONREC_EXPERIMENTS_FILE"] == "/etc/reasonrec/experiments/experiments.yaml"
    assert env["REASONREC_LOG_LEVEL"] == "INFO"
    assert "REASONREC_API_KEY" not in env  # no auth unless a Secret is named
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    # Hot reload needs a directory mount: subPath mounts never see ConfigMap updates.
    assert "subPath" not in mounts["/etc/reasonrec/experiments"]
    assert mounts["/models/release"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["experiments"]["configMap"]["name"] == f"{FULL}-experiments"
    assert volumes["release"]["persistentVolumeClaim"]["claimName"] == f"{FULL}-release"


def test_pods_run_non_root_with_read_only_root(
    default_objects: list[Manifest], prod_objects: list[Manifest]
) -> None:
    for objects in (default_objects, prod_objects):
        for name, template in pod_templates(objects):
            spec = template["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["runAsUser"] != 0, name
            assert spec["automountServiceAccountToken"] is False, name
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
                assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
                assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
                assert c["resources"].get("requests"), (name, c["name"])


def test_cpu_worker_and_beat(default_objects: list[Manifest]) -> None:
    worker_dep = the(default_objects, "Deployment", f"{FULL}-worker-cpu")
    worker = container(worker_dep, "worker")
    assert worker["args"] == dockerfile_cmd("Dockerfile.worker")
    assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert worker_dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})
    beat = the(default_objects, "Deployment", f"{FULL}-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert container(beat, "beat")["args"] == ["slow-path", "beat"]


def test_in_chart_redis_never_evicts(default_objects: list[Manifest]) -> None:
    args = container(the(default_objects, "Deployment", f"{FULL}-redis"), "redis")["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


# --------------------------------------------------------------------------- production
def test_production_objects(prod_objects: list[Manifest]) -> None:
    deployments = by_kind(prod_objects, "Deployment")
    assert set(deployments) == {
        f"{FULL}-api",
        f"{FULL}-api-canary",
        f"{FULL}-worker-gpu",
        f"{FULL}-beat",
    }
    assert "PersistentVolumeClaim" not in {o["kind"] for o in prod_objects}
    monitors = by_kind(prod_objects, "ServiceMonitor")
    assert {n: m["spec"]["endpoints"][0]["port"] for n, m in monitors.items()} == {
        f"{FULL}-api": "http",
        f"{FULL}-worker": "metrics",
    }
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_production_gpu_worker(prod_objects: list[Manifest]) -> None:
    dep = the(prod_objects, "Deployment", f"{FULL}-worker-gpu")
    spec = dep["spec"]["template"]["spec"]
    worker = container(dep, "worker")
    assert worker["image"] == "registry.example.com/reasonrec/worker-gpu:0.1.0"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"] == dockerfile_cmd("Dockerfile.worker-gpu")
    assert env_of(worker)["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert spec["terminationGracePeriodSeconds"] >= 600
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert "nodeAffinity" in spec["affinity"]
    shm = {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]
    assert shm["medium"] == "Memory"
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts >= {"/dev/shm", "/tmp", "/models/release"}
    assert dep["spec"]["replicas"] == 4


def test_production_secrets_and_release_image(prod_objects: list[Manifest]) -> None:
    api_dep = the(prod_objects, "Deployment", f"{FULL}-api")
    env = env_of(container(api_dep, "api"))
    assert env["REDIS_URL"] == {"secretKeyRef": {"name": "reasonrec-redis", "key": "redis-url"}}
    api_key = {"secretKeyRef": {"name": "reasonrec-api-key", "key": "api-key"}}
    assert env["REASONREC_API_KEY"] == api_key
    release_image = "registry.example.com/reasonrec/release"
    init = api_dep["spec"]["template"]["spec"]["initContainers"]
    assert [c["image"] for c in init] == [f"{release_image}:2025-01-15"]
    canary = the(prod_objects, "Deployment", f"{FULL}-api-canary")
    canary_init = canary["spec"]["template"]["spec"]["initContainers"]
    assert [c["image"] for c in canary_init] == [f"{release_image}:2025-01-22"]
    assert canary["spec"]["replicas"] == 2
    beat = the(prod_objects, "Deployment", f"{FULL}-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def test_production_mesh_canary_splits_by_weight(prod_objects: list[Manifest]) -> None:
    vs = the(prod_objects, "VirtualService", f"{FULL}-api")
    weighted = next(r for r in vs["spec"]["http"] if r["name"] == "weighted")["route"]
    weights = {r["destination"]["subset"]: r["weight"] for r in weighted}
    assert weights == {"stable": 90, "canary": 10}
    host = f"{FULL}-api.{NAMESPACE}.svc.cluster.local"
    assert vs["spec"]["hosts"][0] == host
    dr = the(prod_objects, "DestinationRule", f"{FULL}-api")
    assert dr["spec"]["host"] == host
    assert {s["name"] for s in dr["spec"]["subsets"]} == {"stable", "canary"}
    assert "not users" in render_notes(production_values())


# ------------------------------------------------------------------- schema + guards
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"replica": 3}}, "replica"),  # typo of `replicas`
        ({"api": {"replicas": "3"}}, "want integer"),
        ({"beat": {"replicas": 2}}, "replicas"),  # beat is always exactly one
        ({"workers": {"cpu": {"gpusPerPod": 1}}}, "gpusPerPod"),
        ({"workers": {"gpu": {"gpusPerPod": 0}}}, "gpusPerPod"),
        ({"redis": {"enabled": False}}, "existingSecret"),
        ({"release": {"source": "s3"}}, "source"),
        ({"canary": {"weight": 150}}, "weight"),
        ({"experimets": {"enabled": False}}, "experimets"),
        ({"images": {"api": {"digest": "latest"}}}, "digest"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"canary": {"enabled": True}}, "canary differs"),
        ({"release": {"source": "image"}}, "release.image.repository"),
        ({"release": {"pvc": {"create": False}}}, "existingClaim"),
    ],
)
def test_template_guards(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_experiments_hot_reload_or_rollout() -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        dep = the(render(values), "Deployment", f"{FULL}-api")
        return dep["spec"]["template"]["metadata"].get("annotations", {})

    assert "checksum/experiments" not in annotations({})  # default: the app hot-reloads
    first = annotations({"experiments": {"rolloutOnChange": True, "content": "a: 1\n"}})
    second = annotations({"experiments": {"rolloutOnChange": True, "content": "a: 2\n"}})
    assert first["checksum/experiments"] != second["checksum/experiments"]
    cm = the(render({"experiments": {"content": "a: 1\n"}}), "ConfigMap", f"{FULL}-experiments")
    assert yaml.safe_load(cm["data"]["experiments.yaml"]) == {"a": 1}


def test_gpu_and_cpu_pools_together_and_custom_metric() -> None:
    objects = render(
        {
            "workers": {"gpu": {"enabled": True, "gpusPerPod": 2}},
            "api": {"autoscaling": {"customMetric": {"enabled": True}}},
        }
    )
    assert validate_all(objects) == []
    assert {f"{FULL}-worker-cpu", f"{FULL}-worker-gpu"} <= set(by_kind(objects, "Deployment"))
    gpu = container(the(objects, "Deployment", f"{FULL}-worker-gpu"), "worker")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 2
    hpa = the(objects, "HorizontalPodAutoscaler", f"{FULL}-api")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
