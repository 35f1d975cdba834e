#!/usr/bin/env python3
"""Checks that rendered objects point at each other (deploy/check.sh): what schemas cannot see.

  wiring.py chart RENDERED.yaml
      The worker-controller chart: the pods' ServiceAccount is rendered (or named) and mounts no
      token; a PodDisruptionBudget, NetworkPolicy, InferencePool select the pods; an autoscaler
      targets the Deployment, which then leaves its replica count to it. The ports agree: WC_PORT,
      the config's [server] port, the probes', the Service's targetPort, the NetworkPolicy's and
      the scrape annotation all name the container's serving port; the ServiceMonitor scrapes a
      port its Service names; every probe and scrape asks a route the server answers without a
      key (GET, access Public in src/server/routes.rs).
  wiring.py config RENDERED.yaml BIN SCRATCH
      Every rendered config.toml parsed by the real binary (`serve --check-config`), as the pod
      would start it: the container's args and literal WC_* environment (a Secret's key as a
      stand-in), with the config's /models paths moved under SCRATCH/models.
  wiring.py router OURS.yaml ROUTER.yaml EPP-CONFIG.yaml
      The llm-d router recipe: the router's InferencePool selects our pods on their serving port,
      names the router's endpoint picker Service; the picker watches that pool (not a label
      selector) and reads our EndpointPickerConfig; we render no pool of our own.
"""
import os
import re
import sys

import yaml

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-opt-prenorm")
ROUTES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "server", "routes.rs")


def probe_routes():
    """Paths of the server's route table that answer GET without a key (`.probe` or `.get`)."""
    with open(ROUTES) as f:
        text = f.read()
    found = re.findall(r'Endpoint::new\("([^"]+)",\s*Public\)\s*\.(probe|get)\(', text)
    assert found, f"no Public GET routes found in {ROUTES}: has the route table moved?"
    return {path for path, _ in found}


def container_ports(container):
    """name -> number, and the numbers, of a container's ports."""
    ports = container.get("ports", [])
    return {p["name"]: p["containerPort"] for p in ports if "name" in p}, [p["containerPort"] for p in ports]


def resolve(port, named, numbers, what):
    """A probe's or Service's port (a name or a number) as the container's port number."""
    if isinstance(port, str) and not port.isdigit():
        assert port in named, f"{what} names port {port!r}, which the container does not declare ({sorted(named)})"
        return named[port]
    assert int(port) in numbers, f"{what} is port {port}, which the container does not expose ({numbers})"
    return int(port)


def ports_agree(docs, deploy):
    """The serving port, as the container declares it; asserts everyone else agrees."""
    pod = deploy["spec"]["template"]
    containers = pod["spec"]["containers"]
    container = [c for c in containers if c["name"] == "worker-controller"]
    assert len(container) == 1, "one worker-controller container"
    container = container[0]
    named, numbers = container_ports(container)
    assert "http" in named, "the container names its serving port `http`"
    port = named["http"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("WC_PORT") == str(port), f"WC_PORT={env.get('WC_PORT')} but containerPort {port}"
    routes = probe_routes()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert probe, f"the container has no {kind}"
        get = probe.get("httpGet")
        assert get, f"{kind} is not an httpGet probe"
        assert get["path"] in routes, f"{kind} asks {get['path']}, not a keyless GET route of the server {sorted(routes)}"
        got = resolve(get["port"], named, numbers, kind)
        assert got == port, f"{kind} probes port {got}, the server listens on {port}"
    for cm in (d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})):
        m = re.search(r"^\s*port\s*=\s*(\d+)", cm["data"]["config.toml"], re.M)
        assert m and int(m.group(1)) == port, f"config.toml's [server] port {m and m.group(1)} but containerPort {port}"
    labels = pod["metadata"]["labels"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert selects(svc["spec"]["selector"], labels), f"Service {svc['metadata']['name']} selects the pods"
        for p in svc["spec"]["ports"]:
            got = resolve(p.get("targetPort", p["port"]), named, numbers, f"Service targetPort of {p.get('name')}")
            assert got == port, f"the Service sends port {p['port']} to {got}, the server listens on {port}"
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        picked = [svc for svc in services if selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {}))]
        assert picked, "the ServiceMonitor selects no Service"
        names = {p.get("name") for svc in picked for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep.get("port") in names, f"the ServiceMonitor scrapes port {ep.get('port')!r}, which its Service does not name ({sorted(names)})"
            assert ep.get("path", "/metrics") in routes, f"the ServiceMonitor scrapes {ep.get('path')}, not a keyless GET route"
    ann = pod["metadata"].get("annotations", {})
    if "prometheus.io/path" in ann:
        assert ann["prometheus.io/path"] in routes, f"scraped at {ann['prometheus.io/path']}, not a keyless GET route"
    if "prometheus.io/port" in ann:
        assert ann["prometheus.io/port"] == str(port), f"scraped on {ann['prometheus.io/port']}, served on {port}"
    return port


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
    port = ports_agree(docs, deploy)
    for d in docs:
        kind = d["kind"]
        if kind in ("PodDisruptionBudget", "InferencePool"):
            assert selects(d["spec"]["selector"]["matchLabels"], labels), f"{kind} selects the pods"
        if kind == "NetworkPolicy":
            assert selects(d["spec"]["podSelector"]["matchLabels"], labels), "policy selects pods"
            ports = [p["port"] for rule in d["spec"]["ingress"] for p in rule["ports"]]
            assert ports in ([port], ["http"]), f"the policy admits the serving port {port} only: {ports}"
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = d["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"]), ref
            assert "replicas" not in deploy["spec"], "the Deployment leaves replicas to the autoscaler"
    if not kinds & {"HorizontalPodAutoscaler", "ScaledObject"}:
        assert "replicas" in deploy["spec"], "replicas without an autoscaler"
    print(f"wired: {sorted(kinds - {'ConfigMap', 'Secret'})}; port {port}")


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


def config(path, binary, scratch):
    import subprocess

    docs = load(path)
    container = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["name"] == "WC_API_KEY":
            env[e["name"]] = "stand-in-for-the-secret"
    env["WC_HOST"] = "127.0.0.1"
    os.makedirs(os.path.join(scratch, "models"), exist_ok=True)
    configs = [d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})]
    assert configs, "no config.toml rendered"
    for i, cm in enumerate(configs):
        toml = cm["data"]["config.toml"].replace('"/models', '"' + os.path.join(scratch, "models"))
        file = os.path.join(scratch, f"config-{i}.toml")
        with open(file, "w") as f:
            f.write(toml)
        env["WC_CONFIG"] = file
        # The checkpoints themselves are the volume's: the bundled tiny one stands in for each
        # (the parse reads its config.json).
        for model in re.findall(r'^path = "/models/([^"]+)"', cm["data"]["config.toml"], re.M):
            link = os.path.join(scratch, "models", model)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(TINY, link)
        # The image's entrypoint is `worker-controller serve`; the chart adds args.
        assert "command" not in container, "the chart keeps the image's entrypoint"
        cmd = [binary, "serve", *[str(a) for a in container.get("args", [])], "--check-config"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"config.toml of ConfigMap {cm['metadata']['name']} refused by the binary:\n"
                     f"{done.stderr.strip()}\n--- config.toml\n{cm['data']['config.toml']}")
        print(f"config.toml of {cm['metadata']['name']}: {done.stdout.strip()}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"chart": chart, "router": router, "config": config}[cmd](*args)
