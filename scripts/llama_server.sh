#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the same pinned source as the llama-cpp-python wheel
# (the cached sdist, vendor/llama.cpp), once per machine, only when a test or a user needs it.
# Prints the binary's path on stdout; everything else goes to stderr.
#   scripts/llama_server.sh            build if missing, print the path
#   VALIGN_CACHE=...                   cache folder (default ~/.cache/valign-edge)
# The binary is static (no shared libraries to find), portable AVX2 (GGML_NATIVE=OFF, as the
# wheel), without curl, OpenSSL or the web UI (nothing is downloaded at build or run time).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=0.3.36
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE="${VALIGN_CACHE:-$HOME/.cache/valign-edge}"
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz"
BIN="$CACHE/bin/llama-server-$LLAMA_VERSION"

if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi

mkdir -p "$CACHE/bin" "$CACHE/sdist"
if [ ! -f "$SDIST" ] || ! echo "$LLAMA_SDIST_SHA256  $SDIST" | sha256sum -c --status 2>/dev/null; then
  PIP="${PIP:-.venv/bin/pip}"
  echo "llama-server: downloading the llama-cpp-python $LLAMA_VERSION source (77 MB, once)" >&2
  "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/sdist" >&2
  echo "$LLAMA_SDIST_SHA256  $SDIST" | sha256sum -c --status || { echo "llama-server: sdist hash mismatch" >&2; exit 1; }
fi

# One builder at a time (a test and a user may ask together); the loser waits, then reuses.
exec 9>"$CACHE/bin/.llama-server.lock"
flock 9
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi

case "$(uname -s)" in
  Linux) PLATFORM="-DGGML_NATIVE=OFF" ;;
  Darwin) PLATFORM="-DGGML_METAL=ON" ;;
  *) PLATFORM="" ;;
esac
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
WORK=$(mktemp -d "$CACHE/bin/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "llama-server: building from $SDIST (once; about 15 minutes on 2 cores)" >&2
start=$(date +%s)
tar -xzf "$SDIST" -C "$WORK" "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
SRC="$WORK/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
GEN=""; command -v ninja >/dev/null 2>&1 && GEN="-G Ninja"
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$WORK/build" $GEN $PLATFORM -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$WORK/configure.log" 2>&1 \
  || { tail -n 30 "$WORK/configure.log" >&2; echo "llama-server: cmake configure failed" >&2; exit 1; }
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >"$WORK/build.log" 2>&1 \
  || { tail -n 30 "$WORK/build.log" >&2; echo "llama-server: build failed" >&2; exit 1; }
cp "$WORK/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "llama-server: built in $(( $(date +%s) - start ))s -> $BIN" >&2
echo "$BIN"
