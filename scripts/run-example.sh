#!/usr/bin/env bash
# Builds troupe, then runs the research swarm (an orchestrator-worker team: a
# planner, three researchers and an analyst working a DAG, a synthesizer) on the
# embedded scripted model (no network, no key). It prints progress, the brief,
# and a timeline of which agent ran when. Extra arguments go to `troupe run`;
# pass your own --goal to replace the default one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh

goal=(--goal "Should we replace the office gas boiler with a heat pump?")
for arg in "$@"; do
  [[ "$arg" == --goal || "$arg" == --goal=* ]] && goal=()
done
exec "${BUILD_DIR:-build}/troupe" run examples/research/research.swarm.json \
  "${goal[@]}" "$@"
