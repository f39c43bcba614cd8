#!/usr/bin/env bash
# Makes sure `promtool` (Debian package `prometheus`) is installed: cli/tests/monitoring.rs runs
# `promtool check rules` and `promtool test rules` on the chart's alerting rules.
set -euo pipefail
if command -v promtool >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  echo "promtool is not installed: apt-get install prometheus (as root)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing promtool (Debian package prometheus)" >&2
$SUDO apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus >&2
command -v promtool >/dev/null
