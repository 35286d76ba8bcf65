#!/usr/bin/env bash
# Build pycnm as a managed (v2) Docker plugin, without any registry or image pull:
#
#   bash scripts/managed-plugin.sh [--name pycnm:latest] [--dir build/managed-plugin]
#                                  [--netns-dir /var/run/docker/netns] [--no-create]
#   bash scripts/managed-plugin.sh --rootfs-only   # only step 1 (scripts/setup.sh runs it)
#
# 1. A Debian root file system with Python, nftables and pycnm's Python dependencies,
#    debootstrapped from the Debian mirror this machine's apt sources name and cached in
#    ${PYCNM_CACHE:-/var/cache/pycnm}/plugin-rootfs-<key> (key: suite and dependencies),
#    so a machine pays for it once.
# 2. The plugin folder DIR: config.json (docs/docker.md explains every field) and rootfs/
#    (the cached one, hard-linked, plus this checkout's cnm, drivers and plugin_server in
#    /opt/pycnm).
# 3. `docker plugin create NAME DIR` with ${DOCKER:-docker} (DOCKER_HOST picks the engine);
#    then `docker plugin enable NAME` and `docker network create -d NAME` work, and
#    `docker plugin push NAME` would publish it for `docker plugin install`.
#
# --netns-dir is where the engine keeps its containers' network namespaces (the folder
# Join's SandboxKey points into: <exec-root>/netns, /var/run/docker/netns by default); the
# plugin gets it mounted at the same path. Run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAME=pycnm:latest
DIR=build/managed-plugin
NETNS_DIR=/var/run/docker/netns
CREATE=1
ROOTFS_ONLY=0
while (($#)); do
    case $1 in
        --name) NAME=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --netns-dir) NETNS_DIR=$2; shift 2 ;;
        --no-create) CREATE=0; shift ;;
        --rootfs-only) ROOTFS_ONLY=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        *) echo "managed-plugin.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "managed-plugin.sh: run as root (debootstrap and docker plugin create need it)" >&2
    exit 1
fi
case $NETNS_DIR in
    /*) ;;
    *) echo "managed-plugin.sh: --netns-dir must be an absolute path, not $NETNS_DIR" >&2
       exit 2 ;;
esac

CACHE=${PYCNM_CACHE:-/var/cache/pycnm}
SUITE=$(. /etc/os-release && echo "$VERSION_CODENAME")
INCLUDE=python3,nftables
# pycnm's own dependencies, from pyproject.toml, one a line.
DEPS=$(python3 - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
KEY=$(printf '%s\n%s\n%s\n' "$SUITE" "$INCLUDE" "$DEPS" | sha256sum | cut -c1-12)
BASE="$CACHE/plugin-rootfs-$KEY"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
quietly() {  # quietly WHAT CMD...: run CMD; show its output only if it fails
    local what=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "managed-plugin.sh: $what failed:" >&2
        tail -40 "$log" >&2
        exit 1
    fi
}

if [ ! -f "$BASE/.complete" ]; then
    command -v debootstrap >/dev/null || {
        echo "managed-plugin.sh: debootstrap is missing: run scripts/setup.sh" >&2; exit 1; }
    read -r MIRROR KEYRING < <(python3 scripts/debian-mirror.py) || true
    if [ -z "${MIRROR:-}" ]; then
        echo "managed-plugin.sh: no Debian mirror found in this machine's apt sources" >&2
        exit 1
    fi
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/.rootfs.XXXXXX")
    trap 'rm -f "$log"; rm -rf "$work"' EXIT
    keyring=()
    if [ "$KEYRING" != "-" ]; then
        keyring=(--keyring="$KEYRING")
    fi
    echo "managed-plugin.sh: debootstrap $SUITE from $MIRROR (once per machine)" >&2
    quietly "debootstrap" debootstrap --variant=minbase --include="$INCLUDE" \
        "${keyring[@]}" "$SUITE" "$work/rootfs" "$MIRROR"
    # What a plugin never uses: documentation, locales, apt's caches and lists.
    rm -rf "$work"/rootfs/usr/share/{doc,man,info,locale} "$work"/rootfs/var/cache/apt/* \
        "$work"/rootfs/var/lib/apt/lists/*
    # pycnm's dependencies, installed by this machine's pip for the rootfs's Python (the
    # same Debian release, so the same Python version and C library).
    inside=$(chroot "$work/rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    here=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$inside" != "$here" ]; then
        echo "managed-plugin.sh: the rootfs has Python $inside, this machine $here:" \
             "run on Debian $SUITE's own python3" >&2
        exit 1
    fi
    site="$work/rootfs/usr/local/lib/python$inside/dist-packages"
    mapfile -t deps <<<"$DEPS"
    quietly "pip install of pycnm's dependencies into the rootfs" \
        env PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
        --root-user-action=ignore --no-compile --target "$site" "${deps[@]}"
    touch "$work/rootfs/.complete"
    rm -rf "$BASE"
    mv "$work/rootfs" "$BASE"
fi

if [ "$ROOTFS_ONLY" = 1 ]; then
    exit 0
fi

# The plugin folder: config.json and a rootfs of hard links to the cached one plus pycnm.
rm -rf "$DIR"
mkdir -p "$DIR"
cp -al "$BASE" "$DIR/rootfs"
rm -f "$DIR/rootfs/.complete"
mkdir -p "$DIR/rootfs/opt/pycnm" "$DIR/rootfs/run/docker/plugins" "$DIR/rootfs/var/lib/pycnm" \
    "$DIR/rootfs$NETNS_DIR"
for package in cnm drivers plugin_server; do
    cp -r "$package" "$DIR/rootfs/opt/pycnm/"
done
find "$DIR/rootfs/opt/pycnm" -name __pycache__ -prune -exec rm -rf {} +
python3 - "$DIR/config.json" "$NETNS_DIR" <<'PY'
import json, sys

path, netns_dir = sys.argv[1], sys.argv[2]
config = {
    "description": "pycnm: Docker's Container Network Model in Python "
                   "(network driver: bridge, macvlan; IPAM driver)",
    "documentation": "docs/docker.md of pycnm",
    "entrypoint": ["/usr/bin/python3", "-m", "cnm.cli", "plugin", "serve",
                   "--socket", "/run/docker/plugins/pycnm.sock"],
    "workdir": "/opt/pycnm",
    "interface": {"types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
                  "socket": "pycnm.sock"},
    # The host's network namespace: bridges, veths and nftables rules are the host's.
    "network": {"type": "host"},
    # Netlink and nftables in the host's namespace; nothing else.
    "linux": {"capabilities": ["CAP_NET_ADMIN"]},
    "mounts": [
        {"name": "netns",
         "description": "the engine's network namespaces, where Join's SandboxKey points",
         "source": netns_dir, "destination": netns_dir, "type": "bind",
         # rslave: namespaces dockerd mounts later appear here too.
         "options": ["rbind", "rslave"]},
        {"name": "state",
         "description": "pycnm's store on the host: it outlives the plugin "
                        "(disable, upgrade, remove and install again)",
         "source": "/var/lib/pycnm", "destination": "/var/lib/pycnm", "type": "bind",
         "options": ["rbind", "rw"], "settable": ["source"]},
    ],
    "env": [
        {"name": "PYCNM_STORE", "description": "state store URL (sqlite:///... or etcd://...)",
         "value": "sqlite:///var/lib/pycnm/state.db", "settable": ["value"]},
        {"name": "PYCNM_HOST_ID", "description": "this host's name in a shared store "
                                                 "(empty: the machine's hostname)",
         "value": "", "settable": ["value"]},
        {"name": "PYCNM_LOG_LEVEL", "description": "debug, info, warning or error",
         "value": "info", "settable": ["value"]},
        {"name": "PYTHONPATH", "description": "where pycnm is inside the plugin",
         "value": "/opt/pycnm"},
    ],
}
with open(path, "w") as handle:
    json.dump(config, handle, indent=2)
    handle.write("\n")
PY
echo "managed-plugin.sh: plugin folder $DIR ready" >&2

if [ "$CREATE" = 1 ]; then
    quietly "docker plugin create $NAME $DIR" "${DOCKER:-docker}" plugin create "$NAME" "$DIR"
    echo "managed-plugin.sh: created $NAME: docker plugin enable $NAME" >&2
fi
