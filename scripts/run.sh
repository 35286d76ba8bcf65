#!/usr/bin/env bash
# Install everything, then serve the Docker network plugin: `pycnm plugin serve` on
# /run/docker/plugins/pycnm.sock with the embedded store, so that
# `docker network create -d pycnm NAME` works at once. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
# The pycnm script of the interpreter setup.sh installed into (sudo's PATH may hold another).
bindir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ -x "$bindir/pycnm" ]; then
    exec "$bindir/pycnm" plugin serve "$@"
fi
exec pycnm plugin serve "$@"
