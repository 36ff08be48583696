#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
# Usage: bash scripts/test.sh [pytest arguments]   (e.g. -m "not slow" to skip the slow tests)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the full Fashion-MNIST and a headless browser for the report test.
need=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "warning: not root; tests that need ${need[*]} will be skipped" >&2
    fi
fi

python -m pip install -q torch==2.14.1 torchvision==0.29.1 -e '.[test]'
export GIT_PYTHON_REFRESH=quiet
exec python -m pytest -q -p no:cacheprovider "$@"
