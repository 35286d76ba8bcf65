#!/usr/bin/env bash
# Install everything, then serve the Docker network plugin on
# /run/docker/plugins/pycnm.sock with the embedded store. Extra arguments go to
# `pycnm plugin serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec pycnm plugin serve "$@"
