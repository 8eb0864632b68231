#!/usr/bin/env bash
# A cluster over a real network: each node in a network namespace of its own,
# with its own address, so nothing can take the loopback shortcut.
#
#   run.sh <troupe-binary> <source-dir> [work-dir]
#
# 1. Makes four namespaces (coordinator, worker-1, worker-2, client) joined by
#    a bridge in a fifth (hub) namespace: 10.231.0.1 ... 10.231.0.4 on
#    10.231.0.0/24. Nothing is added to the host's own namespace.
# 2. Runs `troupe node` for the coordinator and the two workers of
#    examples/cluster (listening on their namespace's address, port 4242) and
#    `troupe run --cluster 10.231.0.1:4242` from the client namespace.
# 3. Checks the run's answer, that the researchers ran on both workers
#    (researcher@worker-1 and researcher@worker-2 on the run's stderr), and
#    that the coordinator's tool recorded the findings.
# A trap on EXIT stops every process and deletes the namespaces.
#
# Exit status 77 means skipped (CTest: SKIP_RETURN_CODE 77), always with a
# line starting "SKIPPED:" that says why: not root, no `ip`, or network
# namespaces, veth pairs or bridges cannot be made here.
set -uo pipefail

readonly skip=77
say() { echo "netns: $*"; }
fail() {
  echo "netns: FAILED: $*" >&2
  exit 1
}

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <troupe-binary> <source-dir> [work-dir]" >&2
  exit 2
fi
troupe=$1
src=$2
[[ -x $troupe ]] || fail "no troupe binary at $troupe"
[[ -d $src/examples/cluster ]] || fail "no examples/cluster under $src"

if [[ $EUID -ne 0 ]]; then
  echo "SKIPPED: not root; network namespaces need root (uid $EUID)"
  exit $skip
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "SKIPPED: the ip command (iproute2) is not installed"
  exit $skip
fi

readonly hub=troupe-hub-$$
readonly ns_c=troupe-c-$$ ns_w1=troupe-w1-$$ ns_w2=troupe-w2-$$ ns_cl=troupe-cl-$$
made_ns=()
pids=()
work=${3:-}
made_work=""

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  # A node leaves the cluster on SIGTERM; give them 5 s, then SIGKILL.
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for ns in "${made_ns[@]}"; do
    # Anything else still running in it, then the namespace (its veths go
    # with it).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null || echo "netns: could not delete $ns" >&2
  done
  [[ -n $made_work ]] && rm -rf "$made_work"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. The network ------------------------------------------------------------
if ! ip netns add "$hub" 2>/tmp/troupe-netns-$$.err; then
  echo "SKIPPED: cannot create a network namespace: $(cat /tmp/troupe-netns-$$.err)"
  rm -f /tmp/troupe-netns-$$.err
  exit $skip
fi
rm -f /tmp/troupe-netns-$$.err
made_ns+=("$hub")
if ! err=$(ip -n "$hub" link add br0 type bridge 2>&1); then
  echo "SKIPPED: cannot create a bridge in a network namespace: $err"
  exit $skip
fi
ip -n "$hub" link set br0 up || fail "cannot bring the bridge up"

# $1 namespace, $2 last octet, $3 short name for the veth.
attach() {
  local ns=$1 octet=$2 short=$3 err
  ip netns add "$ns" || fail "cannot create namespace $ns"
  made_ns+=("$ns")
  ip -n "$ns" link set lo up || fail "cannot bring lo up in $ns"
  if ! err=$(ip -n "$ns" link add eth0 type veth peer name "$short" netns "$hub" 2>&1); then
    echo "SKIPPED: cannot create a veth pair: $err"
    exit $skip
  fi
  ip -n "$hub" link set "$short" master br0 || fail "cannot attach $short to the bridge"
  ip -n "$hub" link set "$short" up || fail "cannot bring $short up"
  ip -n "$ns" addr add "10.231.0.$octet/24" dev eth0 || fail "cannot address $ns"
  ip -n "$ns" link set eth0 up || fail "cannot bring eth0 up in $ns"
}
attach "$ns_c" 1 vc
attach "$ns_w1" 2 vw1
attach "$ns_w2" 3 vw2
attach "$ns_cl" 4 vcl

# Every namespace reaches every other through the bridge (a veth/bridge port
# takes a moment to forward: ping waits for it, up to 10 s).
for pair in "$ns_cl 10.231.0.1" "$ns_w1 10.231.0.1" "$ns_w2 10.231.0.1" "$ns_w1 10.231.0.3"; do
  set -- $pair
  if command -v ping >/dev/null 2>&1; then
    ip netns exec "$1" ping -c 1 -W 1 -w 10 "$2" >/dev/null ||
      fail "$1 cannot reach $2 over the bridge"
  fi
done
# The coordinator's address is not reachable from the host's namespace.
say "namespaces $ns_c (10.231.0.1), $ns_w1 (.2), $ns_w2 (.3), $ns_cl (.4) over a bridge in $hub"

# --- 2. The cluster -------------------------------------------------------------
if [[ -z $work ]]; then
  work=$(mktemp -d)
  made_work=$work
fi
mkdir -p "$work" || fail "cannot create $work"
work=$(cd "$work" && pwd)
# The logs stay here after the run (the next run starts afresh).
run_dir=$work/run
rm -rf "$run_dir"
mkdir -p "$run_dir" || fail "cannot create $run_dir"
cp "$src"/examples/cluster/* "$run_dir"/ || fail "cannot copy examples/cluster"
cd "$run_dir" || fail "cannot enter $run_dir"
unset TROUPE_MODEL TROUPE_TLS_CERT TROUPE_TLS_KEY TROUPE_TLS_CA

# $1 log file, $2 regex (grep -E), $3 pid that must stay alive, $4 seconds.
wait_for() {
  local log=$1 re=$2 pid=$3 deadline=$((SECONDS + $4))
  while ((SECONDS < deadline)); do
    grep -qE "$re" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || {
      grep -qE "$re" "$log" 2>/dev/null && return 0
      echo "--- $log" >&2
      cat "$log" >&2
      fail "the process writing $log exited before: $re"
    }
    sleep 0.05
  done
  echo "--- $log" >&2
  cat "$log" >&2
  fail "timed out waiting in $log for: $re"
}

ip netns exec "$ns_c" "$troupe" node --name coordinator --listen 10.231.0.1:4242 \
  --swarm coordinator.swarm.json 2>coordinator.log &
pids+=($!)
coord=$!
wait_for coordinator.log 'listening on 10\.231\.0\.1:4242' "$coord" 30

ip netns exec "$ns_w1" "$troupe" node --name worker-1 --listen 10.231.0.2:4242 \
  --join 10.231.0.1:4242 --join-timeout 20 --swarm worker.swarm.json 2>worker-1.log &
pids+=($!)
w1=$!
wait_for worker-1.log 'joined the cluster through' "$w1" 30

ip netns exec "$ns_w2" "$troupe" node --name worker-2 --listen 10.231.0.3:4242 \
  --join 10.231.0.1:4242 --join-timeout 20 --swarm worker.swarm.json 2>worker-2.log &
pids+=($!)
w2=$!
wait_for worker-2.log 'joined the cluster through .*members: .*worker-1' "$w2" 30
# worker-1 learns of worker-2 (it dials it directly at 10.231.0.3).
wait_for worker-1.log 'worker-2 joined' "$w1" 30
say "coordinator, worker-1 and worker-2 are up"

# --- 3. The run -----------------------------------------------------------------
ip netns exec "$ns_cl" timeout 120 "$troupe" run --cluster 10.231.0.1:4242 \
  cluster.swarm.json --goal "Should the office replace its gas boiler with a heat pump?" \
  --timeout 90 >run.out 2>run.err
status=$?
if [[ $status -ne 0 ]]; then
  for f in run.err coordinator.log worker-1.log worker-2.log; do
    echo "--- $f" >&2
    cat "$f" >&2
  done
  fail "troupe run --cluster exited $status"
fi
grep -q 'Brief from the cluster' run.out || {
  cat run.out >&2
  fail "the run's answer is not the synthesizer's brief"
}
for w in worker-1 worker-2; do
  grep -q "researcher@$w" run.err || {
    cat run.err >&2
    fail "the run's stderr does not name researcher@$w"
  }
done
grep -q 'joined the cluster through' run.err || fail "the run did not report joining the cluster"
# The coordinator's journal tool (in its namespace, this directory) recorded
# one finding per subtask.
[[ -f cluster-findings.jsonl ]] || fail "the coordinator recorded no findings"
n=$(wc -l <cluster-findings.jsonl)
[[ $n -eq 3 ]] || fail "the coordinator recorded $n findings, not 3"
for pid in "$coord" "$w1" "$w2"; do
  kill -0 "$pid" 2>/dev/null || fail "a node exited during the run (pid $pid)"
done
say "PASSED: the run finished across 4 namespaces; researchers on worker-1 and worker-2"
