#!/usr/bin/env bash
# Makes sure Alertmanager (Debian package `prometheus-alertmanager`) is installed:
# detector/tests/kafka_alertmanager.rs starts one and sends it the NAB alerts. Prints
# `export VIGIL_ALERTMANAGER=<path>` for eval.
set -euo pipefail
find_it() { command -v prometheus-alertmanager || command -v alertmanager || true; }
bin="$(find_it)"
if [ -z "$bin" ]; then
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "Alertmanager is not installed: apt-get install prometheus-alertmanager (as root)" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Alertmanager (Debian package prometheus-alertmanager)" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus-alertmanager >&2
  bin="$(find_it)"
fi
[ -n "$bin" ] || { echo "Alertmanager not found after installing prometheus-alertmanager" >&2; exit 1; }
echo "export VIGIL_ALERTMANAGER=$bin"
