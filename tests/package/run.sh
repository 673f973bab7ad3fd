#!/usr/bin/env bash
# Packaging tests: installs spindle into a temporary prefix, then builds and runs one consumer
# through pkg-config, one through CMake find_package(spindle), and one that embeds spindle as a
# meson subproject. Usage: bash tests/package/run.sh (from anywhere).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
here="$src/tests/package"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

echo "== install into $prefix"
meson setup "$work/build" "$src" --prefix "$prefix" -Dtests=disabled -Dexamples=disabled \
  -Dbench=disabled >/dev/null
meson install -C "$work/build" >/dev/null

echo "== pkg-config consumer"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig:$prefix/share/pkgconfig"
# shellcheck disable=SC2046
c++ -std=c++20 -Wall -Wextra -Wpedantic -Werror "$here/consumer.cpp" -o "$work/pc_consumer" \
  $(pkg-config --cflags --libs spindle)
"$work/pc_consumer"

echo "== CMake find_package consumer"
cmake -S "$here/cmake_find_package" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake" >/dev/null
"$work/cmake/consumer"

echo "== meson subproject consumer"
mkdir -p "$work/sub/subprojects"
cp "$here/meson_subproject/meson.build" "$work/sub/"
cp "$here/consumer.cpp" "$work/"
# A copy of the source tree as it is (tracked and untracked files, no build directories).
(cd "$src" && git ls-files -co --exclude-standard -z | tar --null -cf - -T - ) |
  (mkdir -p "$work/sub/subprojects/spindle" && tar -xf - -C "$work/sub/subprojects/spindle")
meson setup "$work/sub/build" "$work/sub" >/dev/null
ninja -C "$work/sub/build" >/dev/null
"$work/sub/build/consumer"
echo "package tests: 3 passed, 0 failed"
