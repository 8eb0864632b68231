#!/usr/bin/env bash
# Runs a test command against the OpenAI-compatible mock server published on
# npm as @dwmkerr/mock-llm (the version pinned in package-lock.json here).
#
#   run.sh <work-dir> <command> [args...]
#
# 1. Installs the pinned server with `npm ci` into <work-dir>/mock-llm (in the
#    build tree; nothing is written to the source tree).
# 2. Starts it on 127.0.0.1 and a free port, with the rules in config.yaml,
#    or in the file MOCK_LLM_CONFIG names when set (e.g. research.yaml).
#    The server binds every interface unless HOST is set; this script sets
#    HOST=127.0.0.1 and checks that nothing listens beyond loopback.
# 3. Runs <command> with MOCK_LLM_BASE_URL=http://127.0.0.1:<port>/v1 (and
#    MOCK_LLM_PORT) exported, stops the server and exits with its status.
#
# Exit status 77 means skipped (CTest: SKIP_RETURN_CODE 77), always with a
# line starting "SKIPPED:" that says why: npm or node is not installed, or the
# npm registry cannot be reached to install the server.
set -uo pipefail

readonly skip=77
readonly package=@dwmkerr/mock-llm
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
# The rules: MOCK_LLM_CONFIG (a path; relative to the current directory) or
# config.yaml next to this script.
config=${MOCK_LLM_CONFIG:-$here/config.yaml}
[[ $config == /* ]] || config=$PWD/$config
readonly config

say() { echo "mock-llm: $*"; }
fail() { echo "mock-llm: FAILED: $*" >&2; exit 1; }

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <work-dir> <command> [args...]" >&2
  exit 2
fi
work_dir=$1
shift

# --- 1. Tools -----------------------------------------------------------------
if ! command -v npm >/dev/null 2>&1; then
  echo "SKIPPED: npm is not installed; the $package interop test needs it"
  exit $skip
fi
if ! command -v node >/dev/null 2>&1; then
  echo "SKIPPED: node is not installed; the $package interop test needs it"
  exit $skip
fi
[[ -f $config ]] || fail "missing $config"  # the server would fall back to echo

# --- 2. Install the pinned server into the build tree ---------------------------
mkdir -p "$work_dir" || fail "cannot create $work_dir"
install_dir=$(cd "$work_dir" && pwd)/mock-llm
main_js=$install_dir/node_modules/@dwmkerr/mock-llm/dist/main.js
stamp=$install_dir/installed-package-lock.json
version=$(node -p "require('$here/package-lock.json').packages['node_modules/$package'].version") ||
  fail "cannot read the pinned version from $here/package-lock.json"

if [[ -f $main_js ]] && cmp -s "$here/package-lock.json" "$stamp"; then
  say "$package@$version already installed in $install_dir"
else
  mkdir -p "$install_dir" || fail "cannot create $install_dir"
  rm -f "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$install_dir/" || fail "cannot copy to $install_dir"
  say "installing $package@$version into $install_dir (npm ci)"
  npm_log=$install_dir/npm-ci.log
  # Short network timeouts, so an unreachable registry is reported well within
  # the CTest timeout instead of npm's default five minutes per request.
  # --prefer-offline: what npm's cache holds is used as is (the lockfile pins
  # each package's integrity), so a fresh build tree can install offline.
  timeout 180 npm ci --prefix "$install_dir" --ignore-scripts --no-audit --no-fund \
      --prefer-offline \
      --fetch-timeout=30000 --fetch-retries=1 \
      --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 \
      >"$npm_log" 2>&1
  npm_status=$?
  if [[ $npm_status -ne 0 ]]; then
    registry=$(npm config get registry 2>/dev/null)
    if [[ $npm_status -eq 124 ]]; then
      cat "$npm_log"
      echo "SKIPPED: the npm registry ($registry) is unreachable or too slow:" \
           "'npm ci' did not finish within 180s, so $package@$version could not be installed"
      exit $skip
    fi
    if grep -Eq 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|ESOCKETTIMEDOUT|ERR_SOCKET_TIMEOUT|network request|request to .* failed' "$npm_log"; then
      cat "$npm_log"
      echo "SKIPPED: the npm registry ($registry) is unreachable" \
           "(network error above), so $package@$version could not be installed"
      exit $skip
    fi
    # Anything else (e.g. E404 from a proxy that stands in for the registry)
    # counts as unreachable only if the registry does not answer a ping.
    if ! timeout 60 npm ping --fetch-timeout=20000 --fetch-retries=0 >>"$npm_log" 2>&1; then
      cat "$npm_log"
      echo "SKIPPED: the npm registry ($registry) is unreachable: 'npm ci' failed" \
           "and 'npm ping' gets no answer (see above), so $package@$version could not be installed"
      exit $skip
    fi
    cat "$npm_log" >&2
    fail "'npm ci' failed (status $npm_status) although the registry ($registry) answers 'npm ping'; see above"
  fi
  [[ -f $main_js ]] || fail "'npm ci' succeeded but $main_js is missing"
  cp "$here/package-lock.json" "$stamp"
fi

# --- 3. Start the server on loopback ---------------------------------------------
server_pid=
server_log=$install_dir/server.log
watchdog_pid=

# shellcheck disable=SC2317  # invoked by the EXIT trap
stop_server() {
  [[ -n $watchdog_pid ]] && kill "$watchdog_pid" 2>/dev/null
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null
  fi
  wait 2>/dev/null
  server_pid=
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a port that is free on 127.0.0.1 right now.
free_port() {
  node -e "const s=require('net').createServer();
           s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close();});"
}

# Succeeds when GET /health on the port answers {"status":"healthy"}.
healthy() {
  node -e "
    const req = require('http').get({host: '127.0.0.1', port: $1, path: '/health', timeout: 1000}, res => {
      let b = ''; res.on('data', d => b += d);
      res.on('end', () => process.exit(res.statusCode === 200 && JSON.parse(b).status === 'healthy' ? 0 : 1));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => process.exit(1));" 2>/dev/null
}

# Prints every local address that listens on TCP port $1, one per line
# (e.g. 127.0.0.1, 0.0.0.0, ::), from /proc/net/tcp and /proc/net/tcp6.
listen_addresses() {
  node -e "
    const fs = require('fs'), port = $1;
    for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
      let text; try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
      for (const line of text.split('\n').slice(1)) {
        const c = line.trim().split(/\s+/);
        if (c.length < 4 || c[3] !== '0A') continue;            // 0A = LISTEN
        const [addr, p] = c[1].split(':');
        if (parseInt(p, 16) !== port) continue;
        if (addr.length === 8) {                                   // IPv4, little-endian
          console.log(addr.match(/../g).reverse().map(h => parseInt(h, 16)).join('.'));
        } else {                                                   // IPv6, 4 little-endian words
          const words = addr.match(/.{8}/g).map(w => w.match(/../g).reverse().join(''));
          const v6 = words.join('').match(/.{4}/g).map(g => parseInt(g, 16).toString(16)).join(':');
          console.log(v6 === '0:0:0:0:0:0:0:0' ? '::' : v6);
        }
      }
    }"
}

# A port picked here can be taken before the server binds it; then the server
# exits with EADDRINUSE and we try another.
port=
for attempt in 1 2 3; do
  candidate=$(free_port) || fail "node could not find a free port"
  say "starting $package@$version on 127.0.0.1:$candidate (attempt $attempt)"
  (cd "$install_dir" && exec env HOST=127.0.0.1 PORT="$candidate" \
      node "$main_js" --config "$config") </dev/null >"$server_log" 2>&1 &
  server_pid=$!
  # Should this script be killed outright (no EXIT trap), don't leave the
  # server running.
  (while kill -0 $$ 2>/dev/null; do sleep 1; done; kill "$server_pid" 2>/dev/null) \
      </dev/null >/dev/null 2>&1 &
  watchdog_pid=$!

  deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    if grep -Eq "server running on .*:$candidate\$" "$server_log" && healthy "$candidate"; then
      port=$candidate
      break
    fi
    sleep 0.2
  done
  [[ -n $port ]] && break

  if kill -0 "$server_pid" 2>/dev/null; then
    echo "----- server log ($server_log) -----" >&2; cat "$server_log" >&2
    fail "the server did not answer GET http://127.0.0.1:$candidate/health within 30s"
  fi
  wait "$server_pid"; status=$?
  server_pid=
  kill "$watchdog_pid" 2>/dev/null; watchdog_pid=
  if grep -q EADDRINUSE "$server_log" && [[ $attempt -lt 3 ]]; then
    say "port $candidate was taken meanwhile; trying another"
    continue
  fi
  echo "----- server log ($server_log) -----" >&2; cat "$server_log" >&2
  fail "the server exited with status $status before it answered"
done
[[ -n $port ]] || fail "could not start the server"
say "server is up: http://127.0.0.1:$port (config: $config; log: $server_log)"

# The server must listen on loopback only.
addresses=$(listen_addresses "$port") || fail "cannot read /proc/net/tcp to check the bound address"
[[ -n $addresses ]] || fail "nothing listens on port $port according to /proc/net/tcp"
while read -r address; do
  if [[ $address != 127.* ]]; then
    fail "the server listens on $address:$port, not on loopback only (is HOST honoured?)"
  fi
done <<<"$addresses"
say "listening on loopback only: ${addresses//$'\n'/ }"

# --- 4. Run the test -------------------------------------------------------------
export MOCK_LLM_BASE_URL=http://127.0.0.1:$port/v1
export MOCK_LLM_PORT=$port
# Keep any configured HTTP proxy away from the loopback server.
export NO_PROXY=127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}
export no_proxy=127.0.0.1,localhost${no_proxy:+,$no_proxy}

say "running: $* (MOCK_LLM_BASE_URL=$MOCK_LLM_BASE_URL)"
"$@"
test_status=$?

if [[ $test_status -ne 0 ]]; then
  echo "----- server log ($server_log) -----"
  tail -n 50 "$server_log"
  echo "-----"
  say "the test command exited with status $test_status"
  # 77 is CTest's "skipped"; a failing test (e.g. Catch2 with 77 failed
  # assertions) must not read as one.
  [[ $test_status -eq $skip ]] && test_status=1
fi
exit $test_status
