#!/usr/bin/env bash
# Builds troupe, then runs the whole test suite through ctest.
# Exits with ctest's status. BUILD_DIR as for build.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh
exec ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j2 --timeout 600
