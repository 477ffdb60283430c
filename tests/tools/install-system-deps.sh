#!/usr/bin/env bash
# Install the Debian packages the tests use: stock nginx with the Lua module (the stock-nginx flavor),
# wrk (load), supervisor (molecule's service manager), python3-venv, what the role's Tengine source
# build needs (build-essential libpcre2-dev libssl-dev zlib1g-dev: tests/tools/get-tengine.sh), what
# Tengine's own dyups.t needs (perl's prove, openssl: tests/conformance/test_tengine_dyups_suite.py), and
# debootstrap, systemd-container, apt-cacher-ng, openssh-client for the test hosts (tests/hosts: booted
# containers reached over ssh), prometheus for promtool (the alert rules' checks: tests/unit/test_monitoring_rules.py). Package installs must not start services (no systemd here, and a stray
# nginx on port 80 or apt-cacher-ng on 3142 is not wanted): a policy-rc.d denies that for the duration
# of the install. Uses the machine's own apt sources; idempotent.
set -euo pipefail
packages=(nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache wrk supervisor python3-venv curl ca-certificates procps iproute2 util-linux shellcheck
  build-essential libpcre2-dev libssl-dev zlib1g-dev perl openssl
  debootstrap systemd-container apt-cacher-ng openssh-client prometheus)
missing=()
for p in "${packages[@]}"; do
  # Compared whole (no pipe into grep -q, whose early exit can fail the pipeline under pipefail).
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "system packages: all present"; exit 0; }
echo "system packages: installing ${missing[*]}"
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system packages: done"
