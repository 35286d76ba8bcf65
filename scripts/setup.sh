#!/usr/bin/env bash
# Install everything pycnm and its tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 nftables iputils-ping tcpdump docker.io busybox-static etcd-server
              iperf3 graphviz ethtool procps kmod util-linux)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# Bridged traffic filtering is optional for pycnm (ICC uses isolated bridge ports), but
# load the module when the kernel has it so Docker's own networks behave as usual.
modprobe br_netfilter 2>/dev/null || true
