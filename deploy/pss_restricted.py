#!/usr/bin/env python3
"""Checks every pod template in rendered manifests against the Kubernetes Pod Security Standards
"restricted" profile (which includes "baseline"), as the PodSecurity admission controller of a
namespace labelled pod-security.kubernetes.io/enforce=restricted applies it (Kubernetes 1.33):
exit 1 naming each violation, 0 when every pod would be admitted.

Usage: pss_restricted.py MANIFEST.yaml...
"""
import sys

import yaml

# Baseline: capabilities a container may add (restricted allows only NET_BIND_SERVICE).
RESTRICTED_ADD = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def pod_templates(doc):
    """(name, pod metadata, pod spec) of each pod a manifest makes."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    name = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        yield name, doc.get("metadata") or {}, spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        t = spec.get("template") or {}
        yield name, t.get("metadata") or {}, t.get("spec") or {}
    elif kind == "CronJob":
        t = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield name, t.get("metadata") or {}, t.get("spec") or {}


def violations(meta, pod):
    """Every way `pod` breaks the restricted profile, as messages."""
    out = []
    psc = pod.get("securityContext") or {}
    containers = [
        (kind, c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(kind) or []
    ]
    if not containers:
        out.append("no containers")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field}: true")
    for v in pod.get("volumes") or []:
        types = set(v) - {"name"}
        if "hostPath" in types:
            out.append(f"volume {v.get('name')}: hostPath")
        elif not types <= VOLUME_TYPES:
            out.append(f"volume {v.get('name')}: type {sorted(types - VOLUME_TYPES)} not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')} is not a safe sysctl")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod windowsOptions.hostProcess: true")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser: 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:
        out.append(f"pod seccompProfile.type: {pod_seccomp}")
    pod_apparmor = (psc.get("appArmorProfile") or {}).get("type")
    if pod_apparmor not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod appArmorProfile.type: {pod_apparmor}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"annotation {key}: {value}")
    se = psc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        out.append(f"pod seLinuxOptions: {se}")
    for kind, c in containers:
        where = f"{kind} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop lacks ALL")
        extra = set(caps.get("add") or []) - RESTRICTED_ADD
        if extra:
            out.append(f"{where}: capabilities.add {sorted(extra)}")
        if sc.get("runAsNonRoot") is False or (
            psc.get("runAsNonRoot") is not True and sc.get("runAsNonRoot") is not True
        ):
            out.append(f"{where}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser: 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_OK:
            out.append(f"{where}: seccompProfile.type: {seccomp}")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{where}: no seccompProfile (pod or container: RuntimeDefault or Localhost)")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile.type: {apparmor}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}: seLinuxOptions: {se}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount: {sc.get('procMount')}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}: hostPort {p['hostPort']}")
    return out


def main(paths):
    pods, failed = 0, False
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                for name, meta, pod in pod_templates(doc or {}):
                    pods += 1
                    for v in violations(meta, pod):
                        print(f"{path}: {name}: {v}", file=sys.stderr)
                        failed = True
    if failed:
        return 1
    if pods == 0:
        print("no pod templates found", file=sys.stderr)
        return 1
    print(f"Pod Security restricted: {pods} pod template(s) admitted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
