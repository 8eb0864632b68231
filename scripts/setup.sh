#!/usr/bin/env bash
# Installs the Debian 12 packages troupe needs to build and test.
# Idempotent: installs only what is missing, and touches apt only then.
set -euo pipefail

packages=(
  build-essential cmake ccache pkgconf git
  libcaf-dev             # actors, remoting, TLS between nodes (CAF 0.17.6)
  nlohmann-json3-dev     # JSON
  libboost-dev libssl-dev # Beast/Asio HTTP, TLS
  openssl                # the command line: test certificates (TLS tests)
  iproute2               # ip netns / veth: cluster nodes as separate hosts (tests)
  libspdlog-dev          # logging
  catch2                 # tests (Catch2 v2)
  libsqlite3-dev sqlite3 # embedded store
  prometheus-cpp-dev     # metrics
  prometheus             # promtool: the tests lint the /metrics output with it
  libcli11-dev           # the troupe command line
  chromium               # headless browser of the dashboard's end-to-end test (tests/e2e/dashboard)
)

# node and npm run the interop test's mock LLM server (tests/interop/mock-llm,
# @dwmkerr/mock-llm from npm). Asked for only when the commands are missing:
# a node from elsewhere (e.g. NodeSource's nodejs, which bundles npm and
# conflicts with Debian's npm package) is kept as it is.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

# A package counts as present only when dpkg says it is fully installed.
missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

# Root runs apt directly; anyone else needs sudo.
if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: run this script as root, or install sudo" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
# The prometheus package is wanted for promtool alone, but it enables and
# starts a Prometheus server under systemd: one this script installed is
# stopped and disabled again (a server that was already there is left alone).
if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
  if "${as_root[@]}" systemctl disable --now prometheus >/dev/null 2>&1; then
    echo "setup: stopped and disabled the prometheus service (only promtool is used)"
  fi
fi
echo "setup: done"
