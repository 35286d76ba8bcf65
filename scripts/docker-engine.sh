#!/usr/bin/env bash
# Fetch and cache the second Docker engine the tests run against: Debian 13 ("trixie")'s
# docker.io 26.1, containerd, docker-cli and docker-compose, unpacked (never installed)
# into ${PYCNM_CACHE:-/var/cache/pycnm}/docker-trixie. scripts/setup.sh runs it.
#
# The machine's apt sources are never changed: a private sources file names the same
# Debian mirror the machine's own sources use (read from them) with the suite trixie, and
# apt-get reads it with private lists and cache directories. Idempotent: once the folder
# is complete (its engine.env exists) nothing is fetched again.
#
# The unpacked dockerd runs with the machine's own runc first on PATH (Debian 13's runc
# needs a newer glibc than Debian 12 has): netns_fixtures/docker.py does that.
set -euo pipefail

CACHE=${PYCNM_CACHE:-/var/cache/pycnm}
TARGET="$CACHE/docker-trixie"
SUITE=trixie
PACKAGES=(docker.io containerd docker-cli docker-compose)

if [ -f "$TARGET/engine.env" ] && [ -x "$TARGET/usr/sbin/dockerd" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine.sh: run as root" >&2
    exit 1
fi

# The Debian mirror of the machine's own apt sources, and the keyring its entry names.
read -r MIRROR KEYRING < <(python3 "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.py") || true
if [ -z "${MIRROR:-}" ]; then
    echo "docker-engine.sh: no Debian mirror found in this machine's apt sources" >&2
    exit 1
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.fetch.XXXXXX")  # beside the target: the final mv is a rename
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
signed=""
if [ "$KEYRING" != "-" ]; then
    signed="[signed-by=$KEYRING] "
fi
echo "deb ${signed}$MIRROR $SUITE main" >"$work/sources.list"
APT=(apt-get -q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
log="$work/apt.log"
if ! "${APT[@]}" update >"$log" 2>&1; then
    echo "docker-engine.sh: apt-get update of $MIRROR $SUITE failed:" >&2
    cat "$log" >&2
    exit 1
fi
if ! (cd "$work/debs" && "${APT[@]}" download "${PACKAGES[@]}") >"$log" 2>&1; then
    echo "docker-engine.sh: apt-get download ${PACKAGES[*]} failed:" >&2
    cat "$log" >&2
    exit 1
fi
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done
{
    echo "# Unpacked by scripts/docker-engine.sh from $MIRROR $SUITE main"
    for deb in "$work"/debs/*.deb; do
        printf '%s=%s\n' "$(dpkg-deb -f "$deb" Package | tr -c 'a-z0-9\n' _)" \
            "$(dpkg-deb -f "$deb" Version)"
    done
} >"$work/root/engine.env"
rm -rf "$TARGET"
mv "$work/root" "$TARGET"
echo "docker-engine.sh: Docker from $SUITE unpacked into $TARGET" >&2
