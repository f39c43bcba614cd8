# shellcheck shell=bash
# Shared by e2e/tools.sh, e2e/cluster.sh and e2e/smoke.sh: cache locations, the
# pinned tool versions (read from the Go modules under e2e/tools), logging, and
# the functions that obtain each binary. Sourced, never run.
#
# Binaries live under ${VIGIL_CACHE:-$HOME/.cache/vigil}/bin/<tool>-<version>/ and
# are built or downloaded only when missing there.

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
BIN_CACHE="$VIGIL_CACHE/bin"

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Module version of $2 required by the Go module in e2e/tools/$1.
module_version() {
	local gomod="$E2E_DIR/tools/$1/go.mod" v
	v="$(sed -n "s#^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}$2 \(v[^[:space:]]*\).*#\2#p" "$gomod" | head -n1)"
	[[ -n "$v" ]] || die "no version of $2 in $gomod"
	printf '%s\n' "$v"
}

KUBERNETES_VERSION="$(module_version kubernetes k8s.io/kubernetes)"
KWOK_VERSION="$(module_version kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(module_version helm helm.sh/helm/v4)"
JAEGER_VERSION="$(module_version jaeger github.com/jaegertracing/jaeger)"

KUBE_BIN_DIR="$BIN_CACHE/kubernetes-$KUBERNETES_VERSION"
KWOK_BIN_DIR="$BIN_CACHE/kwok-$KWOK_VERSION"
HELM_BIN_DIR="$BIN_CACHE/helm-$HELM_VERSION"
JAEGER_BIN_DIR="$BIN_CACHE/jaeger-$JAEGER_VERSION"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

# kwok Stage files (from the kwok module at the pinned version, copied next to the
# binary): fake nodes become Ready and keep their leases fresh; pods go Ready (or
# Succeeded for Jobs) and are removed once deleted; PersistentVolumeClaims of the
# StorageClass kwok-volume get a bound fake PersistentVolume.
KWOK_STAGES=(
	kustomize/stage/node/fast/node-initialize.yaml
	kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
	kustomize/stage/pod/fast/pod-ready.yaml
	kustomize/stage/pod/fast/pod-complete.yaml
	kustomize/stage/pod/fast/pod-delete.yaml
	kustomize/stage/volume/fast/pvc-provision.yaml
	kustomize/stage/volume/fast/pv-bind.yaml
	kustomize/stage/volume/fast/pvc-delete.yaml
	kustomize/stage/volume/fast/pv-delete.yaml
)
# The default StorageClass those volume stages serve (applied with kubectl).
KWOK_STORAGE_CLASS=kustomize/stage/volume/fast/storage-class.yaml

# Runs "$@" as root: directly, or through passwordless sudo.
as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		return 1
	fi
}

# Prints the -X linker flags that stamp the release into the binaries of module
# e2e/tools/$1, as the upstream release builds do (Kubernetes: hack/lib/version.sh).
# Without them kube-apiserver reports /version v0.0.0-master, which breaks
# version checks in clients and helm charts' kubeVersion constraints.
version_ldflags() {
	local module="$1" path version time commit pkg
	case "$module" in
	kubernetes) path=k8s.io/kubernetes ;;
	helm) path=helm.sh/helm/v4 ;;
	*) return 0 ;;
	esac
	read -r version time < <(cd "$E2E_DIR/tools/$module" &&
		go list -m -f '{{.Version}} {{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$path")
	commit="$(cd "$E2E_DIR/tools/$module" && go mod download -json "$path@$version" |
		sed -n 's/.*"Hash": *"\([0-9a-f]*\)".*/\1/p' | head -n1)"
	if [[ "$module" == helm ]]; then
		pkg=helm.sh/helm/v4/internal/version
		printf -- '-X %s.version=%s -X %s.gitCommit=%s -X %s.gitTreeState=clean' \
			"$pkg" "$version" "$pkg" "$commit" "$pkg"
		return 0
	fi
	local major="${version#v}" minor
	minor="${major#*.}"
	minor="${minor%%.*}"
	major="${major%%.*}"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitCommit=%s -X %s.gitTreeState=clean -X %s.buildDate=%s ' \
			"$pkg" "$version" "$pkg" "$major" "$pkg" "$minor" "$pkg" "$commit" "$pkg" "$pkg" "$time"
	done
}

# Bump when the way binaries are built changes, so cached ones are rebuilt.
BUILD_RECIPE=2

# What the binaries of module e2e/tools/$1 were built from: the recipe and go.mod/go.sum.
build_stamp() {
	printf 'recipe %s %s\n' "$BUILD_RECIPE" "$(cat "$E2E_DIR/tools/$1/go.mod" "$E2E_DIR/tools/$1/go.sum" | sha256sum | cut -d' ' -f1)"
}

# True if $1 holds the binaries $2... built from the current stamp of module $module.
built() {
	local dest="$1" b
	shift
	[[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$(build_stamp "$module")" ]] || return 1
	for b in "$@"; do [[ -x "$dest/$b" ]] || return 1; done
}

# Builds the `tool` directives of the Go module e2e/tools/$1 into $2 unless the
# binaries $3... are already there, built from the same go.mod/go.sum. Builds into
# a temporary directory and renames it into place, under a lock, so parallel
# callers never see half a directory.
go_build_tools() {
	local module="$1" dest="$2"
	shift 2
	built "$dest" "$@" && return 0

	command -v go >/dev/null || die "go is not installed; it is needed to build $module (see e2e/README.md)"
	mkdir -p "$BIN_CACHE"
	exec {build_lock_fd}>"$BIN_CACHE/.$module.lock"
	flock "$build_lock_fd"
	if ! built "$dest" "$@"; then
		local tmp start ldflags b
		tmp="$(mktemp -d "$BIN_CACHE/.$module.XXXXXX")"
		start=$SECONDS
		log "building $module ($*) from e2e/tools/$module with $(go env GOVERSION); minutes on a cold Go build cache"
		ldflags="-s -w $(version_ldflags "$module")"
		# A line a minute while the build runs: a cold build of the control plane takes
		# many minutes and must not look like a hang.
		(
			while sleep 60; do log "still building $module ($((SECONDS - start)) s so far)"; done
		) &
		local ticker=$!
		if ! (cd "$E2E_DIR/tools/$module" && go build -trimpath -ldflags="$ldflags" -o "$tmp/" tool) \
			>"$tmp.log" 2>&1; then
			kill "$ticker" 2>/dev/null || true
			cat "$tmp.log" >&2
			rm -rf "$tmp" "$tmp.log"
			die "go build of e2e/tools/$module failed"
		fi
		kill "$ticker" 2>/dev/null || true
		rm -f "$tmp.log"
		if [[ "$module" == kwok ]]; then
			local src
			src="$(cd "$E2E_DIR/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
			mkdir -p "$tmp/stages"
			for b in "${KWOK_STAGES[@]}"; do cp "$src/$b" "$tmp/stages/"; done
			cp "$src/$KWOK_STORAGE_CLASS" "$tmp/storage-class.yaml"
			chmod -R u+w "$tmp"
		fi
		build_stamp "$module" >"$tmp/.stamp"
		chmod 755 "$tmp"
		rm -rf "$dest"
		mv "$tmp" "$dest"
		log "built $module in $((SECONDS - start)) s into $dest"
	fi
	flock -u "$build_lock_fd"
	exec {build_lock_fd}>&-
}

ensure_kubernetes() { go_build_tools kubernetes "$KUBE_BIN_DIR" "${KUBE_BINARIES[@]}"; }
ensure_kwok() { go_build_tools kwok "$KWOK_BIN_DIR" kwok; }
ensure_helm() { go_build_tools helm "$HELM_BIN_DIR" helm; }
ensure_jaeger() { go_build_tools jaeger "$JAEGER_BIN_DIR" jaeger; }

# Sets ETCD_BIN. Order: $VIGIL_ETCD; a copy cached earlier; the binary of the
# Debian package etcd-server, unpacked into the cache with dpkg-deb (it is not
# installed, so no system service starts); an etcd already on PATH.
ensure_etcd() {
	if [[ -n "${VIGIL_ETCD:-}" ]]; then
		ETCD_BIN="$VIGIL_ETCD"
		return 0
	fi
	local cached
	mkdir -p "$BIN_CACHE"
	cached="$(find "$BIN_CACHE" -maxdepth 2 -path "$BIN_CACHE/etcd-*/etcd" -type f | sort -V | tail -n1)"
	if [[ -n "$cached" ]]; then
		ETCD_BIN="$cached"
		return 0
	fi
	if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
		local tmp
		tmp="$(mktemp -d "$BIN_CACHE/.etcd.XXXXXX")"
		log "fetching Debian package etcd-server"
		as_root apt-get update -qq >&2 || log "apt-get update skipped (not root, no passwordless sudo)"
		if (cd "$tmp" && apt-get download -q etcd-server >&2); then
			local deb version
			deb="$(ls "$tmp"/etcd-server_*.deb)"
			version="$(dpkg-deb -f "$deb" Version)"
			dpkg-deb -x "$deb" "$tmp/root"
			mkdir -m 755 "$tmp/out"
			cp "$tmp/root/usr/bin/etcd" "$tmp/out/etcd"
			rm -rf "$BIN_CACHE/etcd-$version"
			mv "$tmp/out" "$BIN_CACHE/etcd-$version"
			rm -rf "$tmp"
			ETCD_BIN="$BIN_CACHE/etcd-$version/etcd"
			log "etcd $version cached at $ETCD_BIN"
			return 0
		fi
		rm -rf "$tmp"
	fi
	if command -v etcd >/dev/null; then
		ETCD_BIN="$(command -v etcd)"
		return 0
	fi
	die "no etcd: set VIGIL_ETCD, or allow apt-get to fetch the Debian package etcd-server"
}

ensure_all() {
	ensure_etcd
	ensure_kubernetes
	ensure_kwok
	ensure_helm
}
