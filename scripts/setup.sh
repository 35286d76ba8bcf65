#!/usr/bin/env bash
# Install everything pycnm and its tests need on a fresh Debian 12 machine (run as root):
# the system packages, then this checkout as an editable Python package with its test
# extras. Idempotent: installed packages are left alone and `apt-get update` runs once,
# only when something is missing. Quiet; a failing step prints what it said.
#
#   PYTHON=python3.11 bash scripts/setup.sh     # another interpreter (default: python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
# chromium: the labs' live page is tested in it, headless (Playwright drives it, never
# downloading a browser of its own); etcd-client: etcdctl, as lab 10 watches etcd.
APT_PACKAGES=(iproute2 nftables iputils-ping tcpdump docker.io busybox-static etcd-server
              iperf3 graphviz ethtool procps kmod util-linux tar chromium etcd-client
              dnsutils dnsmasq-base dnsperf  # dig, a test upstream, DNS load (cnm.dns)
              qemu-system-x86 debootstrap)  # debootstrap: the managed plugin's rootfs
# Tests that need kernel features this machine's kernel lacks (802.1q, ipvlan) run under
# Debian's stock kernel in a VM: the kernel package unpacked here (never into /boot) and
# virtme-ng in a venv. Not under /var/cache: virtme-ng hides that folder inside the VM.
VM_DIR=${PYCNM_VM_DIR:-/var/lib/pycnm/vm}
VIRTME_NG_VERSION=1.42

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo bash scripts/setup.sh)" >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
quietly() {  # quietly WHAT CMD...: run CMD; show its output only if it fails
    local what=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "setup.sh: $what failed:" >&2
        cat "$log" >&2
        exit 1
    fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$pkg")
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-pip)
elif ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi
if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
    missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
    quietly "apt-get update" apt-get update -q
    quietly "apt-get install" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The second Docker engine the tests run against (Debian 13's Docker 26.1 and compose v2),
# unpacked into /var/cache/pycnm once per machine; never installed, apt sources untouched.
bash scripts/docker-engine.sh
# The managed plugin's root file system (debootstrap + pycnm's dependencies), cached there
# too: the tests build the plugin from it in seconds.
bash scripts/managed-plugin.sh --rootfs-only

# pip takes seconds even with nothing to do, so skip it when this interpreter already
# imports pycnm from this checkout and pyproject.toml is unchanged since the last install.
stamp_dir=/var/lib/pycnm
stamp="$stamp_dir/setup-$(cat pyproject.toml <(command -v "$PYTHON") | sha256sum | cut -c1-16)"
installed_here() {
    local repo=$PWD
    [ -e "$stamp" ] && (cd / && "$PYTHON" - "$repo" <<'PY') >/dev/null 2>&1
import os, sys
import cnm, netns_fixtures, pyroute2, pytest, etcd3, flask, waitress, scapy, yaml  # noqa
assert os.path.dirname(os.path.dirname(os.path.abspath(cnm.__file__))) == sys.argv[1]
PY
}
if ! installed_here; then
    # Debian's own python3 refuses pip installs outside a venv (PEP 668) unless told; a
    # pyenv or venv interpreter ignores the variable. This machine is pycnm's to set up.
    export PIP_BREAK_SYSTEM_PACKAGES=1
    quietly "pip install -e .[test]" "$PYTHON" -m pip install -q --disable-pip-version-check \
        --root-user-action=ignore -e '.[test]'
    mkdir -p "$stamp_dir"
    rm -f "$stamp_dir"/setup-*
    touch "$stamp"
fi

# Docker's own bridge networks expect bridged traffic to pass through netfilter; pycnm
# does not need it. The module may be built in, missing, or modprobe unavailable.
if [ ! -d /proc/sys/net/bridge ]; then
    modprobe br_netfilter >/dev/null 2>&1 \
        || echo "setup.sh: note: br_netfilter not loaded (pycnm does not need it)" >&2
fi

# The VM's kernel: the image Debian's linux-image-amd64 depends on, fetched and unpacked
# once (a kernel already here is kept: the tests need one, not the newest).
if ! compgen -G "$VM_DIR/kernel-*/boot/vmlinuz-*" >/dev/null; then
    kernel_package() {
        apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
    }
    package=$(kernel_package)
    if [ -z "$package" ]; then
        quietly "apt-get update" apt-get update -q
        package=$(kernel_package)
    fi
    [ -n "$package" ] || { echo "setup.sh: apt names no linux-image for linux-image-amd64" >&2; exit 1; }
    echo "setup.sh: fetching $package for the VM tests into $VM_DIR" >&2
    download=$(mktemp -d)
    quietly "apt-get download $package" bash -c 'cd "$1" && apt-get download -q "$2"' _ \
        "$download" "$package"
    mkdir -p "$VM_DIR"
    rm -rf "$VM_DIR/.unpacking"
    quietly "dpkg-deb -x $package" dpkg-deb -x "$download"/*.deb "$VM_DIR/.unpacking"
    mv "$VM_DIR/.unpacking" "$VM_DIR/kernel-${package#linux-image-}"
    rm -rf "$download"
fi
if [ "$("$VM_DIR/venv/bin/vng" --version 2>/dev/null)" != "virtme-ng $VIRTME_NG_VERSION" ]; then
    echo "setup.sh: installing virtme-ng $VIRTME_NG_VERSION into $VM_DIR/venv" >&2
    mkdir -p "$VM_DIR"
    rm -rf "$VM_DIR/venv"
    quietly "python -m venv" "$PYTHON" -m venv "$VM_DIR/venv"
    quietly "pip install virtme-ng" "$VM_DIR/venv/bin/pip" install -q \
        --disable-pip-version-check "virtme-ng==$VIRTME_NG_VERSION"
fi
