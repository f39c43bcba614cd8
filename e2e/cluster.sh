#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the e2e tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes that
# turn scheduled pods Ready). No containers run: pods only exist as API objects.
#
# Usage: e2e/cluster.sh up|down|env|kubeconfig|status|logs
#   up      obtain the binaries (see e2e/tools.sh), start everything, wait until
#           /readyz is ok, the default ServiceAccount exists and the nodes are Ready.
#           Does nothing if the cluster is already up; restarts a half-dead one.
#   down    stop every process (by pid file) and delete the cluster state; keep logs.
#   env     print shell exports (KUBECONFIG, PATH with kubectl and helm):
#           eval "$(e2e/cluster.sh env)"
#   kubeconfig  print the path of the admin kubeconfig (system:masters).
#   status  say whether each process runs and whether /readyz is ok.
#   logs    print the tail of each component's log.
#
# Environment:
#   VIGIL_CACHE            cache root (default ~/.cache/vigil)
#   VIGIL_E2E_CLUSTER      cluster name, so several can run at once (default "default")
#   VIGIL_E2E_NODES        number of kwok nodes (default 1)
#   VIGIL_E2E_TIMEOUT      seconds each startup wait may take (default 90)
#   VIGIL_E2E_STOP_GRACE   seconds between SIGTERM and SIGKILL on down (default 3)
# State: $VIGIL_CACHE/e2e/clusters/<name>/ (kubeconfig, pki, etcd data, pid files).
# Logs:  $VIGIL_CACHE/e2e/logs/<name>/<component>.log (kept after down).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="${VIGIL_E2E_CLUSTER:-default}"
NODES="${VIGIL_E2E_NODES:-1}"
TIMEOUT="${VIGIL_E2E_TIMEOUT:-90}"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "VIGIL_E2E_NODES must be a number >= 1, not '$NODES'"
[[ "$CLUSTER" =~ ^[A-Za-z0-9_.-]+$ ]] || die "VIGIL_E2E_CLUSTER must be a plain name, not '$CLUSTER'"
STATE="$VIGIL_CACHE/e2e/clusters/$CLUSTER"
LOGS="$VIGIL_CACHE/e2e/logs/$CLUSTER"
PKI="$STATE/pki"
PIDS="$STATE/pids"
KUBECONFIG_FILE="$STATE/kubeconfig"
# Start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
STARTED=()
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16

kubectl() { "$KUBE_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# A TCP port on 127.0.0.1 that nothing listens on now: one the kernel hands out
# (python3), else a random one in 20000-32767 that refuses connections.
free_port() {
	if command -v python3 >/dev/null; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
		return
	fi
	local port
	while :; do
		port=$((20000 + RANDOM % 12768))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return
		fi
	done
}

# True if the pid in $PIDS/$1.pid is alive and still runs the binary recorded there.
running() {
	local file="$PIDS/$1.pid" pid exe
	[[ -f "$file" ]] || return 1
	read -r pid exe <"$file"
	[[ -n "$pid" && -d "/proc/$pid" ]] || return 1
	# " (deleted)": the binary was rebuilt while the process ran.
	[[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" =~ ^"$exe"( \(deleted\))?$ ]]
}

start() {
	local name="$1" exe="$2" pid i
	shift 2
	exe="$(readlink -f "$exe")"
	# setsid: the processes outlive the shell that ran `up` and miss its signals.
	# The cluster lock's fd is closed for them, or they would hold the lock forever.
	setsid "$exe" "$@" >"$LOGS/$name.log" 2>&1 </dev/null {cluster_lock_fd}>&- &
	pid=$!
	printf '%s %s\n' "$pid" "$exe" >"$PIDS/$name.pid"
	STARTED+=("$name")
	# Until the child has exec'd, /proc/$pid/exe is still bash or setsid.
	for ((i = 0; i < 50; i++)); do
		running "$name" || [[ ! -d "/proc/$pid" ]] && break
		sleep 0.05
	done
}

# Sends signal $1 to each of the components $2... that still runs.
signal() {
	local sig="$1" c pid exe
	shift
	for c in "$@"; do
		running "$c" || continue
		read -r pid exe <"$PIDS/$c.pid"
		kill "-$sig" "$pid" 2>/dev/null || true
	done
}

# True when none of the components $@ runs any more.
none_running() {
	local c
	for c in "$@"; do running "$c" && return 1; done
	return 0
}

# Stops the components $2...: SIGTERM, then SIGKILL to what still runs after $1 s.
stop() {
	local grace="$1" i
	shift
	signal TERM "$@"
	for ((i = 0; i < grace * 10; i++)); do
		none_running "$@" && return 0
		sleep 0.1
	done
	local c left=()
	for c in "$@"; do running "$c" && left+=("$c"); done
	log "killing ${left[*]}: still running $grace s after SIGTERM"
	signal KILL "$@"
	for ((i = 0; i < 50; i++)); do
		none_running "$@" && return 0
		sleep 0.1
	done
	die "could not stop $* of cluster $CLUSTER; see $PIDS"
}

# Stops every component, etcd last so the API server never waits for it.
# Grace: $VIGIL_E2E_STOP_GRACE s (default 3); the state is thrown away anyway.
stop_all() {
	local grace="${VIGIL_E2E_STOP_GRACE:-3}"
	stop "$grace" "${COMPONENTS[@]:1}"
	stop "$grace" etcd
}

# Waits until "$@" succeeds, at most $TIMEOUT s; $1 names what we wait for.
# Gives up at once, with the log, if a component started so far has exited.
wait_for() {
	local what="$1" deadline=$((SECONDS + TIMEOUT)) start=$EPOCHREALTIME c
	shift
	until "$@" >/dev/null 2>&1; do
		for c in "${STARTED[@]}"; do
			if ! running "$c"; then
				log "$c exited while waiting for $what; last lines of $LOGS/$c.log:"
				tail -n 40 "$LOGS/$c.log" >&2 || true
				return 1
			fi
		done
		if ((SECONDS >= deadline)); then
			log "timed out after $TIMEOUT s waiting for $what"
			logs_tail >&2
			return 1
		fi
		sleep 0.2
	done
	log "$(awk -v a="$start" -v b="$EPOCHREALTIME" -v w="$what" 'BEGIN { printf "%s: ok after %.1f s", w, b - a }')"
}

all_running() {
	local c
	for c in "$@"; do running "$c" || return 1; done
}

etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
api_ready() {
	[[ "$(curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" == ok ]]
}
default_sa_exists() { kubectl -n default get serviceaccount default; }
nodes_ready() {
	[[ "$(kubectl get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" == "$NODES" ]]
}

# openssl config: one section of extensions per kind of certificate.
write_openssl_cnf() {
	cat >"$PKI/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:$SERVICE_IP, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# Issues $PKI/$1.{key,crt} signed by the cluster CA; $2 subject, $3 extension section.
issue() {
	local name="$1" subject="$2" ext="$3"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subject" -config "$PKI/openssl.cnf" -out "$PKI/$name.csr"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 365 \
		-extfile "$PKI/openssl.cnf" -extensions "$ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr"
}

make_pki() {
	mkdir -p "$PKI"
	write_openssl_cnf
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=vigil-e2e-ca" -days 365 \
		-config "$PKI/openssl.cnf" -extensions ca -out "$PKI/ca.crt"
	issue apiserver "/CN=kube-apiserver" server
	issue admin "/O=system:masters/CN=vigil-e2e-admin" client
	issue controller-manager "/CN=system:kube-controller-manager" client
	issue scheduler "/CN=system:kube-scheduler" client
	# Signs ServiceAccount tokens (RS256, what every client expects).
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
	openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
	chmod 600 "$PKI"/*.key
}

# Writes kubeconfig $1 for the client certificate $PKI/$2.{crt,key}.
write_kubeconfig() {
	local file="$1" user="$2"
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vigil-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$user.crt")
    client-key-data: $(base64 -w0 <"$PKI/$user.key")
contexts:
- name: vigil-e2e
  context:
    cluster: vigil-e2e
    user: $user
    namespace: default
current-context: vigil-e2e
EOF
	chmod 600 "$file"
}

fake_nodes() {
	local i
	for ((i = 0; i < NODES; i++)); do
		cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: zone-$((i % 3))
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
EOF
	done
}

cluster_up() {
	if [[ -f "$STATE/ports.env" ]] && all_running "${COMPONENTS[@]}"; then
		# shellcheck source=/dev/null
		source "$STATE/ports.env"
		if api_ready; then
			log "cluster $CLUSTER is already up; KUBECONFIG=$KUBECONFIG_FILE"
			return 0
		fi
	fi
	[[ -d "$STATE" ]] && { log "cleaning up a stale cluster $CLUSTER"; cluster_down; }

	ensure_all
	local start=$SECONDS
	mkdir -p "$PIDS" "$LOGS" "$STATE/apiserver-certs"
	mkdir -m 700 "$STATE/etcd"
	rm -f "$LOGS"/*.log
	ETCD_PORT="$(free_port)"
	ETCD_PEER_PORT="$(free_port)"
	API_PORT="$(free_port)"
	printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\n' "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" >"$STATE/ports.env"
	make_pki
	write_kubeconfig "$KUBECONFIG_FILE" admin
	write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
	write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler

	local etcd_extra=()
	# Durability is worthless for a throwaway cluster; fsync dominates on slow disks.
	"$ETCD_BIN" --help 2>&1 | grep -q -- '--unsafe-no-fsync' && etcd_extra+=(--unsafe-no-fsync)
	start etcd "$ETCD_BIN" \
		--name vigil-e2e \
		--data-dir "$STATE/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "vigil-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--logger zap --log-level warn \
		"${etcd_extra[@]}"
	wait_for "etcd /health" etcd_healthy

	# Debian's etcd 3.4.23 predates the watch progress requests (etcd >= 3.4.31)
	# that let the watch cache prove it is current. Two gates assume them anyway:
	# WatchList: kube-apiserver turns every watch from resourceVersion 0 into a
	#   streaming list and then fails it, so such clients (kwok) only catch up after
	#   backoffs of ~30 s;
	# SizeBasedListCostEstimate: its size estimator asks the cache for the keys at
	#   the newest revision and logs a 3 s timeout every second or two.
	start kube-apiserver "$KUBE_BIN_DIR/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 \
		--advertise-address 127.0.0.1 \
		--secure-port "$API_PORT" \
		--cert-dir "$STATE/apiserver-certs" \
		--tls-cert-file "$PKI/apiserver.crt" \
		--tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" \
		--service-account-signing-key-file "$PKI/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--authorization-mode Node,RBAC \
		--allow-privileged=true \
		--endpoint-reconciler-type none \
		--feature-gates WatchList=false,SizeBasedListCostEstimate=false \
		--profiling=false
	wait_for "kube-apiserver /readyz" api_ready

	start kube-controller-manager "$KUBE_BIN_DIR/kube-controller-manager" \
		--kubeconfig "$STATE/controller-manager.kubeconfig" \
		--secure-port 0 \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file "$PKI/sa.key" \
		--root-ca-file "$PKI/ca.crt" \
		--cluster-signing-cert-file "$PKI/ca.crt" \
		--cluster-signing-key-file "$PKI/ca.key" \
		--profiling=false
	start kube-scheduler "$KUBE_BIN_DIR/kube-scheduler" \
		--kubeconfig "$STATE/scheduler.kubeconfig" \
		--secure-port 0 \
		--leader-elect=false \
		--profiling=false
	local stages
	stages="$(printf '%s,' "$KWOK_BIN_DIR"/stages/*.yaml)"
	start kwok "$KWOK_BIN_DIR/kwok" \
		--kubeconfig "$KUBECONFIG_FILE" \
		--config "${stages%,}" \
		--manage-all-nodes=false \
		--manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
		--node-lease-duration-seconds 40 \
		--cidr "$POD_CIDR" \
		--node-ip 10.250.0.1

	kubectl apply -f "$KWOK_BIN_DIR/storage-class.yaml" >/dev/null
	fake_nodes | kubectl apply -f - >/dev/null
	wait_for "the default ServiceAccount" default_sa_exists
	wait_for "$NODES Ready kwok node(s)" nodes_ready
	log "cluster $CLUSTER is up in $((SECONDS - start)) s: Kubernetes $KUBERNETES_VERSION at https://127.0.0.1:$API_PORT"
	log "KUBECONFIG=$KUBECONFIG_FILE   (or: eval \"\$(e2e/cluster.sh env)\")"
}

cluster_down() {
	[[ -d "$PIDS" ]] && stop_all
	rm -rf "$STATE"
	log "cluster $CLUSTER is down (logs kept in $LOGS)"
}

logs_tail() {
	local c
	for c in "${COMPONENTS[@]}"; do
		[[ -f "$LOGS/$c.log" ]] || continue
		printf '==> %s <==\n' "$LOGS/$c.log"
		tail -n 20 "$LOGS/$c.log"
	done
}

cluster_status() {
	local c rc=0
	for c in "${COMPONENTS[@]}"; do
		if running "$c"; then printf '%-24s running (pid %s)\n' "$c" "$(cut -d' ' -f1 "$PIDS/$c.pid")"; else
			printf '%-24s stopped\n' "$c"
			rc=1
		fi
	done
	if [[ -f "$STATE/ports.env" ]]; then
		# shellcheck source=/dev/null
		source "$STATE/ports.env"
		if api_ready 2>/dev/null; then printf '%-24s ok (https://127.0.0.1:%s)\n' /readyz "$API_PORT"; else
			printf '%-24s not ready\n' /readyz
			rc=1
		fi
	fi
	return "$rc"
}

# One up/down at a time per cluster, so parallel test runs cannot race.
lock() {
	mkdir -p "$VIGIL_CACHE/e2e/clusters"
	exec {cluster_lock_fd}>"$VIGIL_CACHE/e2e/clusters/.$CLUSTER.lock"
	flock "$cluster_lock_fd"
}

case "${1:-}" in
up) lock && cluster_up ;;
down) lock && cluster_down ;;
env)
	[[ -f "$KUBECONFIG_FILE" ]] || die "cluster $CLUSTER is not up (run e2e/cluster.sh up)"
	printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
	# shellcheck disable=SC2016 # $PATH is for the shell that evals this
	printf 'export PATH=%q:%q:"$PATH"\n' "$KUBE_BIN_DIR" "$HELM_BIN_DIR"
	;;
kubeconfig)
	[[ -f "$KUBECONFIG_FILE" ]] || die "cluster $CLUSTER is not up (run e2e/cluster.sh up)"
	printf '%s\n' "$KUBECONFIG_FILE"
	;;
status) cluster_status ;;
logs) logs_tail ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
	exit 2
	;;
esac
