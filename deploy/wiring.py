#!/usr/bin/env python3
"""Checks that rendered objects point at each other (deploy/check.sh): what schemas cannot see.

  wiring.py chart RENDERED.yaml
      The worker-controller chart: the pods' ServiceAccount is rendered (or named) and mounts no
      token; a PodDisruptionBudget, NetworkPolicy, InferencePool select the pods; an autoscaler
      targets the Deployment, which then leaves its replica count to it.
  wiring.py router OURS.yaml ROUTER.yaml EPP-CONFIG.yaml
      The llm-d router recipe: the router's InferencePool selects our pods on their serving port,
      names the router's endpoint picker Service; the picker watches that pool (not a label
      selector) and reads our EndpointPickerConfig; we render no pool of our own.
"""
import sys

import yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def only(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selects(selector, labels):
    """Whether matchLabels `selector` selects pods labelled `labels`."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def chart(path):
    docs = load(path)
    deploy = only(docs, "Deployment")
    pod = deploy["spec"]["template"]
    labels, spec = pod["metadata"]["labels"], pod["spec"]
    assert spec.get("automountServiceAccountToken") is False, "the pod mounts a token"
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    if accounts:
        sa = only(docs, "ServiceAccount")
        assert spec["serviceAccountName"] == sa["metadata"]["name"], "the pod's account"
        assert sa.get("automountServiceAccountToken") is False, "the account mounts a token"
    kinds = {d["kind"] for d in docs}
    for d in docs:
        kind = d["kind"]
        if kind in ("PodDisruptionBudget", "InferencePool"):
            assert selects(d["spec"]["selector"]["matchLabels"], labels), f"{kind} selects the pods"
        if kind == "NetworkPolicy":
            assert selects(d["spec"]["podSelector"]["matchLabels"], labels), "policy selects pods"
            ports = [p["port"] for rule in d["spec"]["ingress"] for p in rule["ports"]]
            assert ports == [8000], f"the policy admits the serving port only: {ports}"
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = d["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"]), ref
            assert "replicas" not in deploy["spec"], "the Deployment leaves replicas to the autoscaler"
    if not kinds & {"HorizontalPodAutoscaler", "ScaledObject"}:
        assert "replicas" in deploy["spec"], "replicas without an autoscaler"
    print(f"wired: {sorted(kinds - {'ConfigMap', 'Secret', 'Service'})}")


def router(ours_path, router_path, config_path):
    ours, theirs = load(ours_path), load(router_path)
    assert not [d for d in ours if d["kind"] == "InferencePool"], "ours makes no pool"
    deploy = only(ours, "Deployment")
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    pool = only(theirs, "InferencePool")
    name = pool["metadata"]["name"]
    assert selects(pool["spec"]["selector"]["matchLabels"], labels), "the pool selects our pods"
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == ports, "on their serving port"
    ref = pool["spec"]["endpointPickerRef"]
    service = only(theirs, "Service")
    assert ref["name"] == service["metadata"]["name"], "the pool names the picker's Service"
    assert ref["port"]["number"] in [p["port"] for p in service["spec"]["ports"]], ref
    epp = only(theirs, "Deployment")
    assert selects(service["spec"]["selector"], epp["spec"]["template"]["metadata"]["labels"])
    container = [c for c in epp["spec"]["template"]["spec"]["containers"] if c["name"] == "epp"][0]
    args = [str(a) for a in container["args"]]
    flag = lambda f: args[args.index(f) + 1]
    assert "--endpoint-selector" not in args, "the picker reads the pool, not a label selector"
    assert flag("--pool-name") == name, "the picker watches this pool"
    assert flag("--pool-namespace") == pool["metadata"]["namespace"]
    config_file = flag("--config-file")
    mount = [m for m in container["volumeMounts"] if config_file.startswith(m["mountPath"] + "/")][0]
    volume = [v for v in epp["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]][0]
    cm = [d for d in theirs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]][0]
    key = config_file[len(mount["mountPath"]) + 1:]
    with open(config_path) as f:
        assert yaml.safe_load(cm["data"][key]) == yaml.safe_load(f), "the picker reads our config"
    print(f"router wired: pool {name} selects {sorted(pool['spec']['selector']['matchLabels'].items())} "
          f"port {ports}; picker {service['metadata']['name']} --pool-name {name}, {config_file}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"chart": chart, "router": router}[cmd](*args)
