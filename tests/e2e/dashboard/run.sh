#!/usr/bin/env bash
# The dashboard end to end: the real `troupe serve` and Debian's headless
# Chromium driven by playwright-core (dashboard.e2e.js).
#
#   run.sh <troupe-cli> <source-dir> <work-dir>
#
# 1. Installs the playwright-core pinned in package-lock.json here with
#    `npm ci` into <work-dir>/node (in the build tree; nothing is written to
#    the source tree). playwright-core brings no browser: the test drives
#    /usr/bin/chromium, which scripts/setup.sh installs.
# 2. Starts `troupe serve --listen 127.0.0.1:0` in a fresh <work-dir>/run with
#    its own store, an auth file with one operator+approver token made up
#    here, and examples/refund/refund.swarm.json (whose refunds of 100 USD or
#    more wait for a human), and reads the port from its
#    "serve: listening on http://HOST:PORT" line.
# 3. Runs dashboard.e2e.js against it; the screenshot lands in
#    <work-dir>/dashboard.png. The server is stopped in a trap on exit.
#
# Exit status 77 means skipped (CTest: SKIP_RETURN_CODE 77), with a line
# starting "SKIPPED:", only when node or npm is not installed. A missing
# Chromium is a failure: scripts/setup.sh installs it.
set -uo pipefail

readonly skip=77
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here

say() { echo "e2e.dashboard: $*"; }
fail() { echo "e2e.dashboard: FAILED: $*" >&2; exit 1; }

if [[ $# -ne 3 ]]; then
  echo "usage: $0 <troupe-cli> <source-dir> <work-dir>" >&2
  exit 2
fi
cli=$1
source_dir=$2
work_dir=$3
swarm_file=$source_dir/examples/refund/refund.swarm.json

# --- 1. Tools -------------------------------------------------------------------
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIPPED: $tool is not installed; the dashboard's end-to-end test needs node and npm"
    exit $skip
  fi
done
readonly chromium=/usr/bin/chromium
[[ -x $chromium ]] || fail "$chromium is missing: run scripts/setup.sh (it installs Debian's chromium)"
[[ -x $cli ]] || fail "no troupe CLI at $cli"
[[ -f $swarm_file ]] || fail "no swarm file at $swarm_file"

# --- 2. Install playwright-core into the build tree ---------------------------------
mkdir -p "$work_dir" || fail "cannot create $work_dir"
work_dir=$(cd "$work_dir" && pwd)
install_dir=$work_dir/node
stamp=$install_dir/installed-package-lock.json
if [[ -f $install_dir/node_modules/playwright-core/package.json ]] &&
   cmp -s "$here/package-lock.json" "$stamp"; then
  say "playwright-core already installed in $install_dir"
else
  mkdir -p "$install_dir" || fail "cannot create $install_dir"
  rm -f "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$install_dir/" || fail "cannot copy to $install_dir"
  say "installing playwright-core into $install_dir (npm ci)"
  # --ignore-scripts: no install script may download a browser.
  # --prefer-offline: what npm's cache holds is used as is (the lockfile pins
  # the integrity), so a fresh build tree installs without the registry.
  if ! timeout 180 npm ci --prefix "$install_dir" --ignore-scripts --no-audit --no-fund \
         --prefer-offline --fetch-timeout=30000 --fetch-retries=1 \
         >"$install_dir/npm-ci.log" 2>&1; then
    cat "$install_dir/npm-ci.log" >&2
    fail "'npm ci' could not install playwright-core (registry: $(npm config get registry 2>/dev/null)); see above"
  fi
  cp "$here/package-lock.json" "$stamp"
fi

# --- 3. Start troupe serve ------------------------------------------------------------
run_dir=$work_dir/run
rm -rf "$run_dir" && mkdir -p "$run_dir/chromium-profile" || fail "cannot create $run_dir"
token=e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >"$run_dir/auth.json" <<EOF || fail "cannot write $run_dir/auth.json"
{"tokens": [{"name": "e2e", "token": "$token", "roles": ["operator", "approver"]}]}
EOF
server_log=$run_dir/serve.log
server_pid=

# shellcheck disable=SC2317  # invoked by the EXIT trap
stop_server() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null
  fi
  wait 2>/dev/null
  server_pid=
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The example's journal tools write refunds.jsonl and outbox.jsonl into the
# working directory: the run folder, not the source tree.
(cd "$run_dir" && exec "$cli" serve --listen 127.0.0.1:0 --store "$run_dir/runs.db" \
    --auth "$run_dir/auth.json" "$swarm_file") </dev/null >"$server_log" 2>&1 &
server_pid=$!
say "started troupe serve (pid $server_pid, log $server_log)"

# No event to wait on here: poll the log for the line, bounded by a deadline
# and by the server's exit.
url=
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
  url=$(grep -Eo 'serve: listening on http://[0-9.]+:[0-9]+' "$server_log" | head -n1 |
        sed 's/^serve: listening on //')
  [[ -n $url ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $url ]]; then
  echo "----- $server_log -----" >&2; cat "$server_log" >&2
  kill -0 "$server_pid" 2>/dev/null && fail "troupe serve printed no 'serve: listening on' line within 60s"
  wait "$server_pid"; status=$?; server_pid=
  fail "troupe serve exited with status $status before it listened"
fi
[[ $url == http://127.* ]] || fail "troupe serve listens on $url, not on loopback"
say "troupe serve is up at $url"

# --- 4. Drive the dashboard ---------------------------------------------------------------
export NO_PROXY=127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}
export no_proxy=127.0.0.1,localhost${no_proxy:+,$no_proxy}
DASHBOARD_URL=$url/ \
DASHBOARD_TOKEN=$token \
DASHBOARD_SWARM=refund-desk \
DASHBOARD_APPROVE_GOAL="Order A-1001 arrived broken. Please refund it." \
DASHBOARD_APPROVE_ANSWER="The refund for order A-1001" \
DASHBOARD_DENY_GOAL="Order A-1002 arrived broken. Please refund it." \
DASHBOARD_DENY_ANSWER="I could not issue the refund for order A-1002" \
DASHBOARD_PROFILE=$run_dir/chromium-profile \
DASHBOARD_SCREENSHOT=$work_dir/dashboard.png \
NODE_PATH=$install_dir/node_modules \
  node "$here/dashboard.e2e.js"
status=$?
if [[ $status -ne 0 ]]; then
  echo "----- $server_log (last 80 lines) -----"
  tail -n 80 "$server_log"
  say "dashboard.e2e.js exited with status $status"
  [[ $status -eq $skip ]] && status=1
fi
exit $status
