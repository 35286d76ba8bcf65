#!/usr/bin/env bash
# Install everything, then run the whole test suite: real namespaces and packets, and a
# real dockerd and etcd that the test session starts and stops itself. Extra arguments go
# to pytest. The exit code is pytest's, except that "no tests collected" (5) fails too.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || exit
"${PYTHON:-python3}" -m pytest -q tests "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest ran no tests (exit 5): that counts as a failure" >&2
    status=1
fi
exit "$status"
