"""Offline checks of the deployment files: deploy/, Dockerfile, .dockerignore, docker-compose.yml.

Nothing here needs a cluster, a Docker engine or the network. The manifests are rendered with
`kubectl kustomize` and validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate; the Dagster instance is validated with Dagster's own schema and turned into a
run-pod Job with dagster-k8s's own helpers; the Helm values are validated against the chart's
schema when its offline copy is present. This module does not import medkg_pdf.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VLLM = DEPLOY / "k8s" / "vllm"
MEDKG_NS_DIR = DEPLOY / "k8s" / "medkg-pdf"
INSTANCE_YAML = DEPLOY / "dagster" / "dagster.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
HELM_SCHEMA = DEPLOY / "helm" / "dagster-values.schema.json"
HELM_CHART_DEFAULTS = DEPLOY / "helm" / "dagster-chart-values.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Oldest Kubernetes minor we target; kubernetes-validate >= 1.30 ships its schemas.
K8S_VERSION = "1.30"
IMAGE_REPOSITORY = "ghcr.io/medkg/medkg-pdf"
CODE_LOCATION_MODULE = "medkg_pdf.definitions"
VLLM_CLIENT_LABEL = "medkg-pdf/vllm-client"

KUSTOMIZATIONS = {
    "vllm-base": VLLM / "base",
    "vllm-dev": VLLM / "overlays" / "dev",
    "vllm-prod": VLLM / "overlays" / "prod",
    "medkg-pdf": MEDKG_NS_DIR,
}
EXPECTED_NAMESPACE = {
    "vllm-base": "medkg-vllm",
    "vllm-dev": "medkg-vllm",
    "vllm-prod": "medkg-vllm",
    "medkg-pdf": "medkg-pdf",
}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_yaml_all(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def k8s_validate(doc: dict, where: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # pragma: no cover - failure path
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        pytest.fail(f"{where}: {name} is not a valid Kubernetes {K8S_VERSION} object: {exc.message}")


@functools.lru_cache(maxsize=1)
def kubectl_or_skip_reason() -> tuple[str | None, str]:
    """(path to kubectl, "") when it can render our kustomizations, else (None, reason)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None, "kubectl is not installed (needed for `kubectl kustomize`)"
    try:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        kustomize_version = json.loads(out).get("kustomizeVersion", "")
    except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return None, f"cannot query kubectl's version: {exc}"
    match = re.match(r"v(\d+)\.", kustomize_version)
    if not match or int(match.group(1)) < 4:
        return None, (
            f"kubectl's built-in kustomize is {kustomize_version or 'unknown (kubectl < 1.24)'}; "
            "the kustomizations use `labels`/`patches`, which need kustomize >= v4"
        )
    return kubectl, ""


@functools.lru_cache(maxsize=None)
def render(name: str) -> tuple[dict, ...]:
    kubectl, reason = kubectl_or_skip_reason()
    if kubectl is None:
        pytest.skip(reason)
    proc = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[name]} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def find(docs, kind: str, name: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d.get("metadata", {}).get("name") == name)
    ]


def one(docs, kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selector_matches(match_labels: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (match_labels or {}).items())


def label_selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels and matchExpressions)."""
    if not selector_matches(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []) or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def vllm_container(docs) -> dict:
    dep = one(docs, "Deployment", "vllm")
    containers = dep["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "vllm")


def expand_k8s_args(container: dict) -> list[str]:
    """Expand $(VAR) in args the way the kubelet does, from the container's literal env."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}

    def sub(arg: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)

    return [sub(str(a)) for a in container.get("args", [])]


def arg_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def instance() -> dict:
    return load_yaml(INSTANCE_YAML)


def launcher_config() -> dict:
    return instance()["run_launcher"]["config"]


def run_pod_labels() -> dict:
    cfg = launcher_config()
    labels = dict(cfg.get("labels") or {})
    meta = (cfg.get("run_k8s_config") or {}).get("pod_template_spec_metadata") or {}
    labels.update(meta.get("labels") or {})
    return labels


def medkg_namespace_labels() -> dict:
    ns = one(load_yaml_all(MEDKG_NS_DIR / "namespace.yaml"), "Namespace")
    return ns["metadata"].get("labels", {})


def configmap_data() -> dict:
    return one(load_yaml_all(MEDKG_NS_DIR / "configmap.yaml"), "ConfigMap", "medkg-pdf-config")["data"]


def helm_values() -> dict:
    return load_yaml(HELM_VALUES)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_valid_objects(name):
    docs = render(name)
    assert docs, f"{name} rendered nothing"
    for doc in docs:
        k8s_validate(doc, f"kubectl kustomize {KUSTOMIZATIONS[name].relative_to(ROOT)}")
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace") == EXPECTED_NAMESPACE[name], (
                f"{doc['kind']}/{doc['metadata']['name']} in {name} is not in namespace "
                f"{EXPECTED_NAMESPACE[name]}"
            )
    # no Secret is ever rendered: they are created by the operator
    assert not find(docs, "Secret"), f"{name} renders a Secret; secrets must not live in the repo"


@pytest.mark.parametrize("directory", [VLLM / "base", MEDKG_NS_DIR], ids=["vllm-base", "medkg-pdf"])
def test_manifest_files_validate_without_kustomize(directory):
    """Each resource file and each documentation template validates on its own (kubectl not needed)."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    files = [directory / r for r in kustomization["resources"]]
    files += sorted(directory.glob("*.template.yaml"))
    for path in files:
        for doc in load_yaml_all(path):
            k8s_validate(doc, str(path.relative_to(ROOT)))
    # templates are documentation only and must not be applied by kustomize
    for template in directory.glob("*.template.yaml"):
        assert template.name not in kustomization["resources"]


@pytest.mark.parametrize("overlay,replicas,max_num_seqs", [("dev", 1, 8), ("prod", 2, 16)])
def test_vllm_deployment(overlay, replicas, max_num_seqs):
    docs = render(f"vllm-{overlay}")
    dep = one(docs, "Deployment", "vllm")
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == replicas
    assert selector_matches(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])

    c = vllm_container(docs)
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", c["image"]), "pin the vLLM image tag"
    assert c["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    assert pod["spec"]["nodeSelector"], "GPU nodeSelector missing"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])

    args = expand_k8s_args(c)
    assert not [a for a in args if "$(" in a], f"unexpanded variable in {args}"
    assert int(arg_value(args, "--max-model-len")) == 8192
    assert int(arg_value(args, "--max-num-seqs")) == max_num_seqs
    assert float(arg_value(args, "--gpu-memory-utilization")) <= 0.95
    assert json.loads(arg_value(args, "--limit-mm-per-prompt")) == {"image": 1}
    assert int(arg_value(args, "--port")) == 8000
    assert arg_value(args, "--served-model-name") == configmap_data()["MEDKG_VLLM_MODEL"]

    # probes on /health of the serving port
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = c[probe]["httpGet"]
        assert http["path"] == "/health", probe
        assert ports.get(http["port"], http["port"]) == 8000, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "startup must allow model download"

    # API key from a Secret only
    env = {e["name"]: e for e in c["env"]}
    key = env["VLLM_API_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"]["name"] == "vllm-api-key"
    assert not any(a.startswith("--api-key") for a in args), "the key must not be on the command line"

    # cache and shared memory
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["/dev/shm"] in volumes and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    cache = volumes[mounts["/root/.cache/huggingface"]]
    assert "persistentVolumeClaim" in cache or "ephemeral" in cache
    claims = {d["metadata"]["name"] for d in find(docs, "PersistentVolumeClaim")}
    for vol in volumes.values():
        if "persistentVolumeClaim" in vol:
            assert vol["persistentVolumeClaim"]["claimName"] in claims, "volume refers to a PVC not rendered"
    if replicas > 1:
        # several replicas on several nodes cannot share one ReadWriteOnce claim
        assert "ephemeral" in cache
        pdb = one(docs, "PodDisruptionBudget")
        assert label_selector_matches(pdb["spec"]["selector"], pod["metadata"]["labels"])
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    else:
        assert dep["spec"]["strategy"]["type"] == "Recreate"

    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and "ALL" in sc["capabilities"]["drop"]

    # the Service fronts these pods on 8000
    svc = one(docs, "Service", "vllm")
    assert selector_matches(svc["spec"]["selector"], pod["metadata"]["labels"])
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000]


def _admitting_rules(netpol: dict, pod_labels: dict, namespace_labels: dict, port: int) -> list[dict]:
    rules = []
    for rule in netpol["spec"].get("ingress", []):
        if not any(p.get("port") == port for p in rule.get("ports", [])):
            continue
        for peer in rule.get("from", []):
            ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
            if ns_sel is None and pod_sel is None:
                continue
            if ns_sel is not None and not label_selector_matches(ns_sel, namespace_labels):
                continue
            if pod_sel is not None and not label_selector_matches(pod_sel, pod_labels):
                continue
            rules.append(peer)
    return rules


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_networkpolicy_admits_dagster_run_pods_only(overlay):
    docs = render(f"vllm-{overlay}")
    netpol = one(docs, "NetworkPolicy")
    vllm_pod_labels = one(docs, "Deployment", "vllm")["spec"]["template"]["metadata"]["labels"]
    assert label_selector_matches(netpol["spec"]["podSelector"], vllm_pod_labels)
    assert "Ingress" in netpol["spec"]["policyTypes"]

    # labels read from deploy/dagster/dagster.yaml and deploy/k8s/medkg-pdf/namespace.yaml
    pod_labels, ns_labels = run_pod_labels(), medkg_namespace_labels()
    assert VLLM_CLIENT_LABEL in pod_labels
    assert _admitting_rules(netpol, pod_labels, ns_labels, 8000), (
        f"no ingress rule admits run pods labelled {pod_labels} in a namespace labelled {ns_labels}"
    )
    # ...and the same pods without the client label are not admitted
    unlabelled = {k: v for k, v in pod_labels.items() if k != VLLM_CLIENT_LABEL}
    assert not _admitting_rules(netpol, unlabelled, ns_labels, 8000)
    # the code server (Helm user deployment) is admitted too
    user_deployment = helm_values()["dagster-user-deployments"]["deployments"][0]
    assert _admitting_rules(netpol, user_deployment["labels"], ns_labels, 8000)


def test_vllm_base_url_points_at_the_service():
    url = urllib.parse.urlsplit(configmap_data()["MEDKG_VLLM_BASE_URL"])
    host_parts = url.hostname.split(".")
    assert host_parts[2:] == ["svc", "cluster", "local"], url.hostname
    service_name, namespace = host_parts[0], host_parts[1]
    docs = render("vllm-prod")
    svc = one(docs, "Service", service_name)
    assert svc["metadata"]["namespace"] == namespace
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    assert url.scheme == "http" and url.path in ("", "/")


def test_vllm_capacity_covers_the_dagster_pool():
    """pool slots x per-step client concurrency <= replicas x --max-num-seqs (prod)."""
    docs = render("vllm-prod")
    replicas = one(docs, "Deployment", "vllm")["spec"]["replicas"]
    max_num_seqs = int(arg_value(expand_k8s_args(vllm_container(docs)), "--max-num-seqs"))
    pool_slots = instance()["concurrency"]["pools"]["default_limit"]
    per_step = int(configmap_data()["MEDKG_VLLM_MAX_CONCURRENCY"])
    assert pool_slots * per_step <= replicas * max_num_seqs
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"dagster instance concurrency set vllm {pool_slots}" in readme


# --------------------------------------------------------------------------------------------
# Dagster instance (deploy/dagster/dagster.yaml)
# --------------------------------------------------------------------------------------------


def _load_instance_config(path: Path, tmp_path: Path) -> dict:
    from dagster._core.instance.config import dagster_instance_config

    home = tmp_path / f"home-{path.parent.name}"
    home.mkdir()
    shutil.copy(path, home / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None
    return dict(config)


def _check_configurable(section: dict) -> Any:
    """The class of a {module, class, config} section exists and accepts its config."""
    import importlib

    from dagster._config import process_config

    cls = getattr(importlib.import_module(section["module"]), section["class"])
    result = process_config(cls.config_type(), section.get("config") or {})
    assert result.success, f"{section['class']} config: {[e.message for e in result.errors]}"
    return cls, result.value


def test_instance_validates_against_dagster_schema(tmp_path):
    config = _load_instance_config(INSTANCE_YAML, tmp_path)

    assert set(config["storage"]) == {"postgres"}
    pg = config["storage"]["postgres"]["postgres_db"]
    assert pg["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    for key in ("username", "hostname", "db_name"):
        assert isinstance(pg[key], dict) and "env" in pg[key], f"postgres {key} should come from the environment"

    assert config["run_launcher"]["module"] == "dagster_k8s"
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "run_queue" not in config  # incompatible with run_coordinator in Dagster 1.13
    assert config["run_retries"]["enabled"] is True and config["run_retries"]["max_retries"] == 2
    assert config["run_monitoring"]["enabled"] is True and config["run_monitoring"]["start_timeout_seconds"] > 0
    assert config["telemetry"]["enabled"] is False

    # each configurable class exists in the installed packages and accepts its config
    for section in ("run_launcher", "run_coordinator", "compute_logs"):
        _check_configurable(config[section])

    # the effective run queue and pool settings Dagster derives from the file
    from dagster._core.instance.config import ConcurrencyConfig, PoolGranularity
    from dagster._core.run_coordinator import QueuedRunCoordinator

    _, rc_config = _check_configurable(config["run_coordinator"])
    coordinator = QueuedRunCoordinator.from_config_value(None, rc_config)
    effective = ConcurrencyConfig.from_concurrency_settings(
        config["concurrency"], coordinator.get_run_queue_config()
    )
    assert effective.run_queue_config.max_concurrent_runs == config["concurrency"]["runs"]["max_concurrent_runs"]
    assert {t["key"] for t in effective.run_queue_config.tag_concurrency_limits} >= {"dagster/backfill"}
    assert effective.pool_config.default_pool_limit == config["concurrency"]["pools"]["default_limit"]
    assert effective.pool_config.pool_granularity == PoolGranularity.OP


def test_run_launcher_builds_a_valid_run_pod_job(monkeypatch):
    """Turn the launcher config into the Job the K8sRunLauncher would submit, with dagster-k8s itself."""
    import kubernetes
    import dagster_k8s.launcher as k8s_launcher_module
    from dagster._config import process_config
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

    config = launcher_config()
    processed = process_config(K8sRunLauncher.config_type(), config)
    assert processed.success, [e.message for e in processed.errors]

    # no cluster here: skip loading a kubeconfig, everything else is the real launcher
    monkeypatch.setattr(k8s_launcher_module, "load_kubernetes_config", lambda **_: None)
    launcher = K8sRunLauncher.from_config_value(None, processed.value)

    image = f"{IMAGE_REPOSITORY}:{pyproject()['project']['version']}"
    run = DagsterRun(job_name="parse_documents", run_id="3f1c2b1a-0d4e-4c5b-9a7f-1e2d3c4b5a69", tags={})
    context = launcher.get_container_context_for_run(run)
    job_config = context.get_k8s_job_config(job_image=image, run_launcher=launcher)
    job_name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_run", "{}"],
        job_name=job_name,
        pod_name=job_name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}],
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace
    k8s_validate(manifest, "run pod Job built from deploy/dagster/dagster.yaml")

    assert context.namespace == config["job_namespace"] == "medkg-pdf"
    pod = manifest["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == image
    assert pod["spec"]["serviceAccountName"] == config["service_account_name"]

    secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    config_maps = {s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s}
    assert secrets == set(config["env_secrets"])
    assert config_maps == set(config["env_config_maps"])
    env = {e["name"]: e for e in container["env"]}
    assert env["MEDKG_ENV"]["value"] == "prod"
    pg_ref = env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert pg_ref == {"name": config["postgres_password_secret"], "key": "postgresql-password"}

    wanted = config["run_k8s_config"]["container_config"]["resources"]
    assert container["resources"] == wanted
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # the label the vLLM NetworkPolicy selects on is on the pod (not only on the Job)
    netpol = one(load_yaml_all(VLLM / "base" / "networkpolicy.yaml"), "NetworkPolicy")
    assert _admitting_rules(netpol, pod["metadata"]["labels"], medkg_namespace_labels(), 8000)


def test_instance_settings_live_where_the_pods_read_them():
    config, data = launcher_config(), configmap_data()
    # storage env vars used by dagster.yaml come from the ConfigMap or the postgres Secret
    pg = instance()["storage"]["postgres"]["postgres_db"]
    for key in ("username", "hostname", "db_name"):
        assert pg[key]["env"] in data
    assert data["DAGSTER_PG_HOST"].startswith("postgresql.medkg-pdf.")
    assert "medkg-pdf-config" in config["env_config_maps"]
    # secrets are only referenced by name; the non-secret ConfigMap holds no secret-looking key
    assert not [k for k in data if re.search(r"PASSWORD|SECRET|API_KEY|TOKEN", k)]
    templates = load_yaml_all(MEDKG_NS_DIR / "secrets.template.yaml")
    documented = {d["metadata"]["name"]: set(d["stringData"]) for d in templates}
    assert set(config["env_secrets"]) <= set(documented)
    assert "MEDKG_VLLM_API_KEY" in documented["medkg-vllm-api-key"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= documented["medkg-aws-credentials"]
    assert documented[config["postgres_password_secret"]] == {"postgresql-password"}


# --------------------------------------------------------------------------------------------
# Helm values for dagster/dagster 1.13.27
# --------------------------------------------------------------------------------------------


def _names(refs) -> list[str]:
    return [r["name"] if isinstance(r, dict) else r for r in refs or []]


def _camel_tag_limits(limits) -> list[dict]:
    return [dict(limit) for limit in limits or []]


def test_helm_values_agree_with_the_instance():
    values, inst = helm_values(), instance()
    cfg = inst["run_launcher"]["config"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert _names(k8s["envSecrets"]) == cfg["env_secrets"]
    assert _names(k8s["envConfigMaps"]) == cfg["env_config_maps"]
    assert k8s["envVars"] == cfg["env_vars"]
    assert k8s["labels"] == cfg["labels"]
    assert k8s["jobNamespace"] == cfg["job_namespace"]
    assert k8s["imagePullPolicy"] == cfg["image_pull_policy"]
    assert k8s["failPodOnRunFailure"] == cfg["fail_pod_on_run_failure"]
    run_k8s = k8s["runK8sConfig"]
    assert run_k8s["containerConfig"]["resources"] == cfg["run_k8s_config"]["container_config"]["resources"]
    assert run_k8s["podSpecConfig"]["securityContext"] == cfg["run_k8s_config"]["pod_spec_config"]["security_context"]

    glob = values["global"]
    assert glob["postgresqlSecretName"] == cfg["postgres_password_secret"]
    assert glob["serviceAccountName"] == cfg["service_account_name"]
    assert glob["dagsterHome"] == cfg["dagster_home"]

    # concurrency: run limits in `concurrency.runs` only (chart and Dagster reject both places)
    conc, inst_conc = values["concurrency"], inst["concurrency"]
    assert conc["enabled"] is True
    assert conc["pools"]["defaultLimit"] == inst_conc["pools"]["default_limit"]
    assert conc["pools"]["granularity"] == inst_conc["pools"]["granularity"]
    assert conc["runs"]["maxConcurrentRuns"] == inst_conc["runs"]["max_concurrent_runs"]
    assert _camel_tag_limits(conc["runs"]["tagConcurrencyLimits"]) == inst_conc["runs"]["tag_concurrency_limits"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert queued.get("maxConcurrentRuns") is None and not queued.get("tagConcurrencyLimits")
    assert queued["dequeueNumWorkers"] == inst["run_coordinator"]["config"]["dequeue_num_workers"]

    daemon = values["dagsterDaemon"]
    assert daemon["runRetries"] == {
        "enabled": inst["run_retries"]["enabled"],
        "maxRetries": inst["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": inst["run_retries"]["retry_on_asset_or_op_failure"],
    }
    monitoring = inst["run_monitoring"]
    for helm_key, key in [
        ("enabled", "enabled"),
        ("startTimeoutSeconds", "start_timeout_seconds"),
        ("cancelTimeoutSeconds", "cancel_timeout_seconds"),
        ("pollIntervalSeconds", "poll_interval_seconds"),
        ("maxResumeRunAttempts", "max_resume_run_attempts"),
        ("freeSlotsAfterRunEndSeconds", "free_slots_after_run_end_seconds"),
    ]:
        assert daemon["runMonitoring"][helm_key] == monitoring[key], helm_key
    assert values["telemetry"]["enabled"] is inst["telemetry"]["enabled"] is False

    # external Postgres = the ConfigMap's settings, password only from the existing Secret
    pg, data = values["postgresql"], configmap_data()
    assert pg["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert pg["postgresqlHost"] == data["DAGSTER_PG_HOST"]
    assert pg["postgresqlUsername"] == data["DAGSTER_PG_USERNAME"]
    assert pg["postgresqlDatabase"] == data["DAGSTER_PG_DB"]
    assert "postgresqlPassword" not in pg


def test_helm_user_deployment_runs_our_code_location():
    values = helm_values()
    user = values["dagster-user-deployments"]
    assert user["enabled"] is True and user["enableSubchart"] is True
    (deployment,) = user["deployments"]
    assert deployment["image"]["repository"] == IMAGE_REPOSITORY
    assert str(deployment["image"]["tag"]) == pyproject()["project"]["version"]
    args = deployment.get("codeServerArgs") or deployment.get("dagsterApiGrpcArgs")
    assert args == ["-m", CODE_LOCATION_MODULE]
    assert pyproject()["tool"]["dagster"]["module_name"] == CODE_LOCATION_MODULE
    assert deployment["port"] == 4000
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert _names(deployment["envSecrets"]) == _names(launcher["envSecrets"])
    assert _names(deployment["envConfigMaps"]) == _names(launcher["envConfigMaps"])
    assert {"name": "MEDKG_ENV", "value": "prod"} in deployment["env"]
    assert deployment["labels"][VLLM_CLIENT_LABEL] == "true"
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True


def _drop_remote_refs(node: Any) -> Any:
    """The chart schema points at kubernetesjsonschema.dev for Kubernetes types; offline they are open."""
    if isinstance(node, dict):
        return {
            k: _drop_remote_refs(v)
            for k, v in node.items()
            if not (k == "$ref" and isinstance(v, str) and not v.startswith("#"))
        }
    if isinstance(node, list):
        return [_drop_remote_refs(v) for v in node]
    return node


def _drop_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_drop_required(v) for v in node]
    return node


def _helm_merge(defaults: Any, overrides: Any) -> Any:
    """Helm's coalescing of values: maps merge recursively, anything else is replaced; null deletes."""
    if isinstance(defaults, dict) and isinstance(overrides, dict):
        merged = copy.deepcopy(defaults)
        for key, value in overrides.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _helm_merge(merged.get(key), value)
        return merged
    return copy.deepcopy(overrides)


def test_helm_values_validate_against_chart_schema():
    if not HELM_SCHEMA.exists():
        pytest.skip(
            f"{HELM_SCHEMA.relative_to(ROOT)} is absent: copy helm/dagster/values.schema.json from "
            "dagster-io/dagster at tag 1.13.27 there (see deploy/helm/SCHEMA_SOURCE.md)"
        )
    import jsonschema

    schema = _drop_remote_refs(json.loads(HELM_SCHEMA.read_text(encoding="utf-8")))
    values = helm_values()
    if HELM_CHART_DEFAULTS.exists():
        instance_to_check = _helm_merge(load_yaml(HELM_CHART_DEFAULTS), values)
    else:
        schema = _drop_required(schema)
        instance_to_check = values
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(instance_to_check), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN", re.IGNORECASE)
ONLY_SUBSTITUTIONS = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\})+$")


def _compose_env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _service_command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def test_compose_file_is_consistent():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"postgres", "user-code", "engine", "webserver", "daemon", "vllm"} <= set(services)
    declared_volumes = set(compose.get("volumes") or {})

    for name, svc in services.items():
        depends = svc.get("depends_on") or []
        for dep in depends if isinstance(depends, list) else depends.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source")
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name} mounts missing file {source}"
                assert (ROOT / source).resolve().is_relative_to(ROOT), f"{name} mounts outside the repo"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        for key, value in _compose_env(svc).items():
            if SECRET_NAME.search(key):
                assert value is None or ONLY_SUBSTITUTIONS.match(str(value)), (
                    f"{name}: {key} must come from ${{...}} substitution or pass-through, not a literal"
                )

    assert "pg_isready" in " ".join(map(str, services["postgres"]["healthcheck"]["test"]))
    for name in ("user-code", "engine", "webserver", "daemon"):
        assert services[name].get("build") == ".", f"{name} must use the project image"

    assert _service_command(services["user-code"]) == [
        "dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", CODE_LOCATION_MODULE,
    ]
    assert _service_command(services["engine"]) == [
        "medkg-pdf", "serve-local", "--host", "0.0.0.0", "--port", "8001",
    ]
    webserver = _service_command(services["webserver"])
    assert webserver[0] == "dagster-webserver" and webserver[webserver.index("-w") + 1] == "/opt/dagster/workspace.yaml"
    assert _service_command(services["daemon"])[:2] == ["dagster-daemon", "run"]
    assert pyproject()["project"]["scripts"]["medkg-pdf"]

    env = _compose_env(services["user-code"])
    assert env["MEDKG_VLLM_BASE_URL"] == "${MEDKG_VLLM_BASE_URL:-http://engine:8001}"

    # the workspace points at the user-code service and port
    workspace = load_yaml(DEPLOY / "compose" / "workspace.yaml")
    (grpc,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert grpc["host"] in services and grpc["port"] == 4000
    assert grpc["location_name"] == pyproject()["tool"]["dagster"]["code_location_name"]
    for name in ("webserver", "daemon"):
        mounts = [v.split(":")[1] for v in services[name]["volumes"]]
        assert "/opt/dagster/workspace.yaml" in mounts and "/opt/dagster/dagster_home/dagster.yaml" in mounts


def test_compose_vllm_matches_kubernetes():
    vllm = load_yaml(COMPOSE)["services"]["vllm"]
    assert vllm["profiles"] == ["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    base = load_yaml_all(VLLM / "base" / "deployment.yaml")
    container = vllm_container(base)
    assert vllm["image"] == container["image"]
    assert vllm["entrypoint"] == container["command"]
    prod_env = load_yaml(VLLM / "overlays" / "prod" / "deployment-patch.yaml")
    prod_container = prod_env["spec"]["template"]["spec"]["containers"][0]
    merged = dict(container, env=container["env"] + prod_container["env"])
    # later env entries win, as in the kustomize strategic merge
    merged["env"] = list({e["name"]: e for e in merged["env"]}.values())
    assert [str(a) for a in vllm["command"]] == expand_k8s_args(merged)


def test_compose_instance_validates(tmp_path):
    config = _load_instance_config(DEPLOY / "compose" / "dagster.yaml", tmp_path)
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    for section in ("run_launcher", "run_coordinator"):
        _check_configurable(config[section])
    env = _compose_env(load_yaml(COMPOSE)["services"]["daemon"])
    for key in ("username", "password", "hostname", "db_name"):
        assert config["storage"]["postgres"]["postgres_db"][key]["env"] in env


# --------------------------------------------------------------------------------------------
# Pinned image (deploy/constraints.txt)


def test_the_image_constraints_pin_every_declared_dependency_to_one_version():
    pins = {}
    for line in (ROOT / "deploy/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and not re.search(r"[<>~!*]", version), line  # exact versions only
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = pyproject()["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["prod"]]
    names = {re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~ ;]", requirement)[0]).lower() for requirement in declared}
    assert sorted(names - set(pins)) == []


# Dockerfile
# --------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile():
    instructions = _dockerfile_instructions()
    get = lambda kind: [rest for word, rest in instructions if word == kind]  # noqa: E731

    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", get("FROM")[0])
    assert get("WORKDIR") == ["/opt/medkg-pdf"]
    assert any("DAGSTER_HOME=/opt/dagster/dagster_home" in env for env in get("ENV"))

    installs = [
        part.strip()
        for run in get("RUN")
        for part in re.split(r"&&|;", run)
        if re.search(r"\bpip\b.*\binstall\b", part)
    ]
    # the run launcher and PostgreSQL storage, every package pinned
    assert installs == ["pip install --no-cache-dir --constraint deploy/constraints.txt '.[prod]'"], installs

    # the project's own files are copied before that install; the readme pyproject declares too
    install_at = next(i for i, (w, r) in enumerate(instructions) if w == "RUN" and "pip install" in r)
    copied = {
        src
        for word, rest in instructions[:install_at]
        if word == "COPY"
        for src in rest.split()[:-1]
        if not src.startswith("--")
    }
    assert {"pyproject.toml", "medkg_pdf", pyproject()["project"]["readme"]} <= copied

    user = get("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert re.fullmatch(r"\d+", user), "numeric USER so Kubernetes runAsNonRoot can verify it"
    assert "4000" in " ".join(get("EXPOSE")).split()
    assert json.loads(get("CMD")[-1]) == [
        "dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", CODE_LOCATION_MODULE,
    ]
    # the Helm podSecurityContext uses the image's user
    pod_sc = helm_values()["dagster-user-deployments"]["deployments"][0]["podSecurityContext"]
    assert str(pod_sc["runAsUser"]) == user


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` any depth, `*` and `?` within one path element."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers its content."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _dockerignore_regex(raw[1:] if negate else raw)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_build_inputs_and_drops_secrets():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for kept in ["pyproject.toml", pyproject()["project"]["readme"], "medkg_pdf/schemas.py", "medkg_pdf/defs/documents/pages.py"]:
        assert not _dockerignore_excludes(kept, patterns), kept
    for dropped in [".env", "deploy/compose/.env", ".venv/bin/python", ".git/config", "medkg_pdf/__pycache__/x.pyc"]:
        assert _dockerignore_excludes(dropped, patterns), dropped


# --------------------------------------------------------------------------------------------
# no literal secrets
# --------------------------------------------------------------------------------------------

VENDORED = {HELM_SCHEMA, HELM_CHART_DEFAULTS}
SECRET_ASSIGNMENT = re.compile(
    r"""(?P<key>[A-Za-z0-9_.-]*(?:api[_-]?key|password|passwd|secret[_-]?access[_-]?key|auth[_-]?token)[A-Za-z0-9_.-]*)"""
    r"""["']?[ \t]*[:=][ \t]*(?P<value>[^\s#,]+)""",
    re.IGNORECASE,
)
AWS_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _deploy_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p not in VENDORED]
    return sorted(files + [DOCKERFILE, COMPOSE, DOCKERIGNORE])


def _is_reference(value: str) -> bool:
    value = value.strip("\"'`")
    return (
        value.startswith("$")  # ${VAR}, $(VAR), $VAR, "$(openssl ...)"
        or value.startswith("{")  # {env: VAR} / JSON object
        or value.startswith("<")
        or value in ("", "null", "~")
    )


def test_no_literal_secrets():
    problems = []
    for path in _deploy_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            if AWS_ACCESS_KEY.search(line) or PRIVATE_KEY.search(line):
                problems.append(f"{rel}:{lineno}: credential-looking string")
            for match in SECRET_ASSIGNMENT.finditer(line):
                key, value = match.group("key"), match.group("value").rstrip(";")
                if re.search(r"secret(name|_name)?$", key, re.IGNORECASE):
                    continue  # names a Kubernetes Secret object, e.g. postgres_password_secret
                if _is_reference(value) or len(value.strip("\"'")) < 8:
                    continue
                if path.name.endswith(".template.yaml") and value.strip("\"'") == "REPLACE_ME":
                    continue
                problems.append(f"{rel}:{lineno}: {key} has a literal value")
    assert not problems, "\n".join(problems)
    # placeholders only in documentation templates
    for path in _deploy_files():
        if "REPLACE_ME" in path.read_text(encoding="utf-8", errors="replace"):
            assert path.name.endswith(".template.yaml"), path


def test_the_local_workspace_names_the_location_as_pyproject_does():
    """`dagster dev -w workspace.yaml` and `dagster sensor start` from the repo root address one location name."""
    (entry,) = [entry["python_module"] for entry in load_yaml(ROOT / "workspace.yaml")["load_from"]]
    dagster = pyproject()["tool"]["dagster"]
    assert entry["module_name"] == dagster["module_name"] == CODE_LOCATION_MODULE
    assert entry["location_name"] == dagster["code_location_name"]
