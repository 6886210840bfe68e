"""The Helm chart: rendered and linted with Helm's Go SDK (helm-python-sdk), every manifest validated
against the Kubernetes schemas offline (kubernetes-validate), RBAC equal to what the code declares."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chartrender import CHART, NAMESPACE, ROOT, manifests, of_kind, one, render

from dmvpn.controller.access import AGENT_ACCESS, OPERATOR_ACCESS, triples
from dmvpn.ipsec.plugins import CHARON_PLUGINS, charon_load_setting

KUBERNETES_VERSION = kubernetes_validate.latest_version()

NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.local/kube-dmvpn", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "pull"}],
    "fullnameOverride": "dmvpn",
    "operator": {
        "interval": 0.5,
        "verbose": True,
        "serviceAccount": {"name": "op", "annotations": {"a": "b"}},
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "agent": {"metricsPort": 9200, "logLevel": "DEBUG", "nodeSelector": {"dmvpn.io/enabled": "true"}},
    "charon": {
        "ipcLock": True,
        "image": {"repository": "strongswan", "tag": "5.9"},
        "logLevel": 2,
        "plugins": [*CHARON_PLUGINS, "eap-tls"],
    },
    "cni": {"bridge": "br-dmvpn", "hairpinMode": False, "portmap": False, "confDir": "/etc/cni/conf.d"},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
VARIANTS = {
    "default": {},
    "non-default": NON_DEFAULT,
    "operator-only": {"agent": {"enabled": False}},
    "agents-only": {
        "operator": {"enabled": False},
        "cni": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
    },
    "no-rbac": {"rbac": {"create": False}, "operator": {"serviceAccount": {"create": False}}},
}


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def variant(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield request.param, manifests(VARIANTS[request.param])


def test_lint_is_clean_in_strict_mode() -> None:
    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


def test_every_rendered_manifest_is_valid_kubernetes(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = variant
    assert docs, name
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD of the Prometheus Operator: not in the Kubernetes schemas
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_values_are_checked_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    for values in VARIANTS.values():
        jsonschema.validate(_merged(defaults, values), schema)
    with pytest.raises(helm_python.HelmError, match="bridge"):
        render({"cni": {"bridge": "a-bridge-name-too-long"}})
    with pytest.raises(helm_python.HelmError, match=r"additional properties|additionalProperties|not allowed"):
        render({"operator": {"replicas": 2}})
    with pytest.raises(helm_python.HelmError, match="plugins"):
        render({"charon": {"plugins": []}})
    with pytest.raises(helm_python.HelmError, match="plugins"):
        render({"charon": {"plugins": ["vici; load_modular = yes"]}})


def test_the_chart_loads_the_plugins_the_package_names() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert tuple(defaults["charon"]["plugins"]) == CHARON_PLUGINS
    conf = one(manifests(NON_DEFAULT), "ConfigMap", "-charon")["data"]["zz-kube-dmvpn.conf"]
    assert f"load = {charon_load_setting()} eap-tls\n" in conf


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def test_every_object_carries_the_recommended_labels(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def test_chart_crds_are_the_generated_crds() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == top
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), f"crds/{name} differs"


def test_the_operator_is_one_replica_replaced_not_rolled_and_unprivileged() -> None:
    docs = manifests({})
    deployment = one(docs, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][0] == "dmvpn-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_agent_runs_on_the_host_network_with_only_the_capabilities_it_needs() -> None:
    docs = manifests({})
    daemonset = one(docs, "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    containers = {c["name"]: c for c in pod["containers"]}
    agent, charon = containers["agent"], containers["charon"]
    assert agent["command"][:3] == ["dmvpn-agent", "--node", "$(NODE_NAME)"]
    node_name = next(e for e in agent["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert charon["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    for container in pod["containers"] + pod["initContainers"]:
        assert not container["securityContext"].get("privileged", False)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the VICI socket is shared through an emptyDir mounted in both containers
    vici = {v["name"]: v for v in pod["volumes"]}["vici"]
    assert "emptyDir" in vici
    assert {"name": "vici", "mountPath": "/run/vici"} in agent["volumeMounts"]
    assert {"name": "vici", "mountPath": "/run/vici"} in charon["volumeMounts"]
    assert "--vici-socket=/run/vici/charon.vici" in agent["command"]
    charon_conf = one(docs, "ConfigMap", "-charon")["data"]["zz-kube-dmvpn.conf"]
    assert "socket = unix:///run/vici/charon.vici" in charon_conf
    # only the plugins the profiles need (Debian's default loads every installed one)
    assert "load_modular = no" in charon_conf
    assert f"load = {charon_load_setting()}\n" in charon_conf
    with_lock = one(manifests({"charon": {"ipcLock": True}}), "DaemonSet", "-agent")
    charon_caps = with_lock["spec"]["template"]["spec"]["containers"][1]["securityContext"]["capabilities"]["add"]
    assert "IPC_LOCK" in charon_caps


def test_the_init_container_installs_the_cni_plugin_and_its_conflist() -> None:
    docs = manifests({})
    pod = one(docs, "DaemonSet", "-agent")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    script = init["command"][2]
    assert "cp -r /cni/dmvpn_cni" in script and 'cp /cni/dmvpn "$bin/.dmvpn.tmp"' in script
    assert script.index("dmvpn_cni") < script.index("10-dmvpn.conflist")  # network config last
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cni-bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert volumes["cni-conf"]["hostPath"]["path"] == "/etc/cni/net.d"
    conflist = json.loads(one(docs, "ConfigMap", "-cni")["data"]["10-dmvpn.conflist"])
    assert conflist == json.loads((ROOT / "cni" / "10-dmvpn.conflist").read_text())
    custom = one(manifests(NON_DEFAULT), "ConfigMap", "-cni")["data"]["10-dmvpn.conflist"]
    plugins = json.loads(custom)["plugins"]
    assert plugins[0]["bridge"] == "br-dmvpn" and plugins[0]["hairpinMode"] is False
    assert [p["type"] for p in plugins] == ["dmvpn", "bandwidth"]


def rbac_triples(docs: list[dict[str, Any]], component: str) -> dict[str, set[tuple[str, str, str]]]:
    """(group, resource, verb) granted to a component, by scope (ClusterRole: cluster, Role: namespace)."""
    granted: dict[str, set[tuple[str, str, str]]] = {"cluster": set(), "namespace": set()}
    for kind, scope in (("ClusterRole", "cluster"), ("Role", "namespace")):
        for role in of_kind(docs, kind):
            if role["metadata"]["labels"]["app.kubernetes.io/component"] != component:
                continue
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], "no wildcards"
                granted[scope] |= {
                    (g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
                }
    return granted


def test_rbac_grants_exactly_the_declared_api_access() -> None:
    docs = manifests({})
    operator = rbac_triples(docs, "operator")
    assert operator["cluster"] == triples(OPERATOR_ACCESS, "cluster")
    assert operator["namespace"] == triples(OPERATOR_ACCESS, "namespace")
    agent = rbac_triples(docs, "agent")
    assert agent["cluster"] == triples(AGENT_ACCESS, "cluster")
    assert agent["namespace"] == triples(AGENT_ACCESS, "namespace")
    assert not any(resource == "secrets" for _, resource, _ in operator["cluster"] | operator["namespace"])
    bindings = {b["metadata"]["name"]: b for b in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")}
    accounts = {sa["metadata"]["name"] for sa in of_kind(docs, "ServiceAccount")}
    for binding in bindings.values():
        assert binding["subjects"][0]["name"] in accounts and binding["subjects"][0]["namespace"] == NAMESPACE


def test_metrics_services_and_the_optional_service_monitor() -> None:
    assert not of_kind(manifests({}), "ServiceMonitor")
    docs = manifests(NON_DEFAULT)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    assert services["dmvpn-agent-metrics"]["spec"]["ports"][0]["port"] == 9200
    assert services["dmvpn-agent-metrics"]["spec"]["clusterIP"] == "None"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in services.values():
        assert selector.items() <= service["metadata"]["labels"].items()
        assert service["spec"]["ports"][0]["name"] == "metrics"


def test_notes_tell_what_was_installed() -> None:
    notes = render({})["kube-dmvpn/templates/NOTES.txt"]
    assert "kubectl get dmvpnhubs,dmvpnspokes" in notes and "kube-dmvpn" in notes
