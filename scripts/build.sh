#!/usr/bin/env bash
# Installs what is missing, then configures and builds troupe (every target).
# BUILD_DIR picks the build directory (default: build, under the repo root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

build_dir=${BUILD_DIR:-build}
# ccache (wired in by CMakeLists.txt) keeps rebuilds fast; one cache per user.
# BASEDIR (relative paths) and NOHASHDIR (build dir left out of the hash of -g
# builds) let clones and build dirs at other paths share the cache.
export CCACHE_DIR=${CCACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ccache}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
mkdir -p "$CCACHE_DIR"

# A clean build takes about 3 GB (the build dir, with line-table debug info)
# plus up to 1.5 GB of ccache; a full disk shows up only as a failed link, so
# say so first.
mkdir -p "$build_dir"
free_kb=$(df -Pk "$build_dir" | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "scripts/build.sh: warning: only $((free_kb / 1024)) MB free on the" \
       "disk of $build_dir; a clean build needs about 4 GB" >&2
fi

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$(nproc)"
