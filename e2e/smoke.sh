#!/usr/bin/env bash
# Smoke test of the e2e cluster: up; a Deployment whose pod goes Ready (kwok); a
# StatefulSet with a volume claim; garbage collection of both; a CRD and one object
# of it; a helm chart generated here, installed with --wait; down. Prints the time
# of each step. Exit status 0 only if every step passed.
#
# Usage: e2e/smoke.sh            (VIGIL_E2E_KEEP=1 leaves the cluster up)
# Uses its own cluster name (VIGIL_E2E_CLUSTER, default "smoke") so it never
# touches a cluster the tests use.
set -euo pipefail
E2E="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export VIGIL_E2E_CLUSTER="${VIGIL_E2E_CLUSTER:-smoke}"
WORK="$(mktemp -d)"
TIMINGS=()
STEP=setup
STEP_START=$EPOCHREALTIME

finish() {
	local rc=$?
	if ((rc != 0)); then
		echo "smoke: step '$STEP' failed after $(elapsed "$STEP_START") s" >&2
	fi
	if [[ "${VIGIL_E2E_KEEP:-0}" != 1 ]]; then
		local start=$EPOCHREALTIME
		if "$E2E/cluster.sh" down; then
			TIMINGS+=("$(printf '%-34s %6s' down "$(elapsed "$start")")")
		else
			rc=1
		fi
	fi
	rm -rf "$WORK"
	printf '\nsmoke timings (s):\n' >&2
	printf '  %s\n' "${TIMINGS[@]}" >&2
	if ((rc == 0)); then echo "smoke: PASS" >&2; else echo "smoke: FAIL" >&2; fi
	exit "$rc"
}
trap finish EXIT

# Seconds since $1 (an $EPOCHREALTIME), two decimals.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

# Runs "$@" under the name $1 and records how long it took. Not for use after
# `if`, `||` or `&&`: errexit, which fails the step at its first failing command,
# is off in those contexts.
step() {
	STEP="$1"
	STEP_START=$EPOCHREALTIME
	shift
	echo "--- $STEP" >&2
	"$@"
	TIMINGS+=("$(printf '%-34s %6s' "$STEP" "$(elapsed "$STEP_START")")")
}

# Polls "$@" every 0.2 s until it succeeds; fails after $1 seconds.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || { echo "timed out: $*" >&2; return 1; }
		sleep 0.2
	done
}
no_objects() { [[ -z "$(kubectl get "$@" -o name)" ]]; }

step "up" "$E2E/cluster.sh" up
eval "$("$E2E/cluster.sh" env)"
kubectl version

deployment() {
	kubectl create deployment smoke --image=registry.k8s.io/pause:3.10 --replicas=1
	kubectl rollout status deployment/smoke --timeout=60s
	kubectl wait pod -l app=smoke --for=condition=Ready --timeout=60s
	kubectl get pods -l app=smoke -o wide
}
step "deployment pod Ready" deployment

statefulset() {
	kubectl apply -f - <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: smoke-sts}
spec:
  replicas: 2
  serviceName: smoke-sts
  selector: {matchLabels: {app: smoke-sts}}
  template:
    metadata: {labels: {app: smoke-sts}}
    spec:
      containers: [{name: c, image: registry.k8s.io/pause:3.10, volumeMounts: [{name: data, mountPath: /data}]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
EOF
	kubectl rollout status statefulset/smoke-sts --timeout=60s
	kubectl get pods,pvc -l app=smoke-sts
}
step "statefulset 2 pods + PVCs Ready" statefulset

garbage_collection() {
	kubectl delete deployment smoke --wait=true
	kubectl delete statefulset smoke-sts --wait=true
	wait_until 60 no_objects pods -l 'app in (smoke, smoke-sts)'
	wait_until 60 no_objects replicasets -l app=smoke
}
step "garbage collection of pods" garbage_collection

crd() {
	kubectl apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: smokes.e2e.vigil.dev}
spec:
  group: e2e.vigil.dev
  names: {kind: Smoke, plural: smokes, singular: smoke}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties: {size: {type: integer, minimum: 1}}
EOF
	kubectl wait crd/smokes.e2e.vigil.dev --for=condition=Established --timeout=30s
	printf 'apiVersion: e2e.vigil.dev/v1\nkind: Smoke\nmetadata: {name: one}\nspec: {size: 3}\n' | kubectl apply -f -
	[[ "$(kubectl get smoke one -o jsonpath='{.spec.size}')" == 3 ]]
	# The schema is enforced: size 0 is below the minimum.
	if printf 'apiVersion: e2e.vigil.dev/v1\nkind: Smoke\nmetadata: {name: bad}\nspec: {size: 0}\n' |
		kubectl apply -f - 2>/dev/null; then
		echo "an object violating the CRD schema was accepted" >&2
		return 1
	fi
}
step "CRD established + object" crd

helm_chart() {
	mkdir -p "$WORK/chart/templates"
	cat >"$WORK/chart/Chart.yaml" <<'EOF'
apiVersion: v2
name: smoke
version: 0.1.0
EOF
	printf 'replicas: 1\n' >"$WORK/chart/values.yaml"
	cat >"$WORK/chart/templates/deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      containers: [{name: c, image: registry.k8s.io/pause:3.10}]
EOF
	helm lint "$WORK/chart"
	helm install smoke-chart "$WORK/chart" --namespace smoke-helm --create-namespace --wait --timeout 60s
	[[ "$(kubectl -n smoke-helm get deployment smoke-chart -o jsonpath='{.status.readyReplicas}')" == 1 ]]
	helm list -n smoke-helm
	helm uninstall smoke-chart -n smoke-helm --wait
}
step "helm install --wait + uninstall" helm_chart
