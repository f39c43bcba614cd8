#!/usr/bin/env bash
# Obtains the e2e binaries into ${VIGIL_CACHE:-$HOME/.cache/vigil}/bin: etcd (Debian
# package etcd-server), the Kubernetes control plane and kubectl, kwok and helm
# (built from the Go modules in e2e/tools), and Jaeger for the trace tests (only when asked:
# jaeger). Does nothing for binaries already cached.
#
# Usage: e2e/tools.sh [all|etcd|kubernetes|kwok|helm|jaeger|paths]
#   paths  prints where each binary is (after obtaining them all)
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-all}" in
all) ensure_all ;;
etcd) ensure_etcd ;;
kubernetes) ensure_kubernetes ;;
kwok) ensure_kwok ;;
helm) ensure_helm ;;
jaeger)
	ensure_jaeger
	printf '%s\n' "$JAEGER_BIN_DIR/jaeger"
	;;
paths)
	ensure_all
	printf 'etcd=%s\n' "$ETCD_BIN"
	for b in "${KUBE_BINARIES[@]}"; do printf '%s=%s\n' "$b" "$KUBE_BIN_DIR/$b"; done
	printf 'kwok=%s\n' "$KWOK_BIN_DIR/kwok"
	printf 'helm=%s\n' "$HELM_BIN_DIR/helm"
	;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
	exit 2
	;;
esac
