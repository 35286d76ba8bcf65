#!/usr/bin/env bash
# Install everything, then check the code (ruff, mypy: a few seconds) and run the whole
# test suite: real namespaces and packets, and a real dockerd and etcd that the test
# session starts and stops itself. Extra arguments go to pytest. The exit code is pytest's
# unless ruff or mypy failed, and "no tests collected" (5) fails too.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || exit
python=${PYTHON:-python3}
lint=0
"$python" -m ruff check --quiet . || lint=1
"$python" -m mypy || lint=1  # the packages listed in pyproject.toml's [tool.mypy]
"$python" -m pytest -q tests "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest ran no tests (exit 5): that counts as a failure" >&2
    status=1
fi
if [ "$status" -eq 0 ] && [ "$lint" -ne 0 ]; then
    echo "test.sh: the tests passed but ruff or mypy did not (see above)" >&2
    status=1
fi
exit "$status"
