#!/usr/bin/env bash
# Build KenLM's estimation programs (lmplz, build_binary) once, from the PyPI kenlm sdist,
# into a cache outside the clone: ${RNNENC_CACHE:-~/.cache/rnnenc}/kenlm-<version>/bin.
# Idempotent: an existing build is reused. Prints the bin directory on its last line.
set -euo pipefail

KENLM_VERSION="${KENLM_VERSION:-0.3.0}"
PYTHON="${PYTHON:-python3}"
CACHE="${RNNENC_CACHE:-$HOME/.cache/rnnenc}"
PREFIX="$CACHE/kenlm-$KENLM_VERSION"
BIN="$PREFIX/bin"

if [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ]; then
  echo "$BIN"
  exit 0
fi

# Everything the build needs, as Debian packages and as the file each one provides, so a machine
# with only some of them still gets the rest. KenLM's CMakeLists asks for Boost's
# unit_test_framework even with -DCOMPILE_TESTS=OFF, hence libboost-test-dev.
APT_PACKAGES=(cmake make g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev
  libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
PROBES=(cmake make g++
  /usr/include/boost/program_options.hpp /usr/include/boost/system/error_code.hpp
  /usr/include/boost/thread.hpp /usr/include/boost/test/unit_test.hpp
  /usr/include/zlib.h /usr/include/bzlib.h /usr/include/lzma.h)
missing=()
for i in "${!PROBES[@]}"; do
  probe="${PROBES[$i]}"
  case "$probe" in
    /*) [ -e "$probe" ] || missing+=("${APT_PACKAGES[$i]}") ;;
    *) command -v "$probe" >/dev/null || missing+=("${APT_PACKAGES[$i]}") ;;
  esac
done
if command -v dpkg-query >/dev/null; then
  # A header can outlive its package's libraries (a purge of the runtime library alone): ask dpkg too.
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build_kenlm: installing with apt-get: ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "build_kenlm: missing ${missing[*]}. Install them, then rerun:" >&2
    echo "  sudo apt-get install ${APT_PACKAGES[*]}" >&2
    echo "or point KENLM_BIN at a directory holding lmplz and build_binary." >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "build_kenlm: fetching the kenlm $KENLM_VERSION sdist" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary kenlm "kenlm==$KENLM_VERSION" -d "$work" >&2 2>/dev/null || true
sdist="$(ls "$work"/kenlm-*.tar.gz 2>/dev/null | head -1 || true)"
if [ -z "$sdist" ]; then
  # pip builds metadata after downloading; if that step fails the archive is still in its cache dir.
  "$PYTHON" -m pip download --no-deps --no-binary kenlm "kenlm==$KENLM_VERSION" -d "$work" --no-clean >&2 || true
  sdist="$(ls "$work"/kenlm-*.tar.gz /tmp/pip-unpack-*/kenlm-"$KENLM_VERSION".tar.gz 2>/dev/null | head -1 || true)"
fi
[ -n "$sdist" ] || { echo "build_kenlm: could not download the kenlm sdist from PyPI" >&2; exit 1; }
tar -xzf "$sdist" -C "$work"
src="$(ls -d "$work"/kenlm-*/ | head -1)"
echo "build_kenlm: compiling lmplz and build_binary (a few minutes, once)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF -DENABLE_PYTHON=OFF >&2
cmake --build "$work/build" --target lmplz build_binary -j "$(nproc)" >&2
mkdir -p "$PREFIX.tmp/bin"
cp "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$PREFIX.tmp/bin/"
rm -rf "$PREFIX"
mv "$PREFIX.tmp" "$PREFIX"
echo "$BIN"
