#!/usr/bin/env bash
# Builds troupe, then runs the customer-support example swarm on the embedded
# scripted model (no network, no key). Extra arguments go to `troupe run`;
# pass your own --goal to replace the default one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh

goal=(--goal "A customer asks: what is your refund policy, and how much is 15% of 240 EUR?")
for arg in "$@"; do
  [[ "$arg" == --goal || "$arg" == --goal=* ]] && goal=()
done
exec "${BUILD_DIR:-build}/troupe" run examples/support/support.swarm.json \
  "${goal[@]}" "$@"
