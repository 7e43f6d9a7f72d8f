#!/usr/bin/env bash
# Builds llama.cpp's reference tools (llama-imatrix, llama-perplexity) from the source tree of the release the
# tests pin (the one packaging/bootstrap.sh unpacks; see tests/refs/tree.py), portably: no -march=native, so
# the binaries never use an instruction the machine that runs the tests lacks (AVX-512, Intel AMX).
#
# Cached in ${QUANT_STUDIO_CACHE:-~/.cache/quant-studio}/tools/<key>/ where <key> is the sha1 of the version and
# the CMake flags, so a build made with other flags is never reused. Built in a temporary directory and
# renamed at the end: two processes racing both build, the first rename wins, the other discards its copy.
#
# Usage: bash packaging/build_llama_tools.sh          builds if needed; prints the tools directory last
#        bash packaging/build_llama_tools.sh --dir    only prints the directory (no build)
# Env:   LLAMA_CPP_VERSION (default 0.3.36), LLAMA_CPP_TREE (default: the tree bootstrap unpacked),
#        JOBS (default: nproc). ~10 min on 2 cores. tests/refs/tools.py calls this script: one key, one build.
set -euo pipefail

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
CACHE=${QUANT_STUDIO_CACHE:-$HOME/.cache/quant-studio}
TREE=${LLAMA_CPP_TREE:-$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp}
# The brief's portable set, plus the switches that keep configure offline and small (no server/UI download,
# no OpenSSL, no examples). LLAMA_CURL is deprecated in this release (a warning) but kept for older trees.
FLAGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF"
TARGETS="llama-imatrix llama-perplexity"
KEY=$(printf '%s\n%s\n' "$VERSION" "$FLAGS" | sha1sum | cut -c1-16)
DEST="$CACHE/tools/$KEY"

if [ "${1:-}" = "--dir" ]; then echo "$DEST"; exit 0; fi

have_all() { for t in $TARGETS; do [ -x "$1/$t" ] || return 1; done; }

if have_all "$DEST"; then echo "$DEST"; exit 0; fi
if [ ! -f "$TREE/CMakeLists.txt" ]; then
  echo "build_llama_tools: llama.cpp's source tree is missing at $TREE: run bash packaging/bootstrap.sh --test" >&2
  exit 2
fi
command -v cmake >/dev/null || { echo "build_llama_tools: cmake is not installed" >&2; exit 2; }

mkdir -p "$CACHE/tools"
TMP=$(mktemp -d "$CACHE/tools/$KEY.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
echo "build_llama_tools: building $TARGETS $VERSION into $DEST (~10 min on 2 cores): $FLAGS" >&2
start=$(date +%s)
# shellcheck disable=SC2086
cmake -S "$TREE" -B "$TMP/build" $GEN $FLAGS >"$TMP/configure.log" 2>&1 \
  || { tail -40 "$TMP/configure.log" >&2; exit 1; }
# shellcheck disable=SC2086
cmake --build "$TMP/build" --config Release -j "${JOBS:-$(nproc)}" --target $TARGETS >"$TMP/build.log" 2>&1 \
  || { tail -60 "$TMP/build.log" >&2; exit 1; }
mkdir -p "$TMP/out"
for t in $TARGETS; do cp "$TMP/build/bin/$t" "$TMP/out/"; done
printf 'version=%s\nflags=%s\nbuild_seconds=%s\n' "$VERSION" "$FLAGS" "$(( $(date +%s) - start ))" > "$TMP/out/BUILD_INFO"
# rename -T fails when another process renamed its build first: theirs is as good as ours
mv -T "$TMP/out" "$DEST" 2>/dev/null || have_all "$DEST" || { echo "build_llama_tools: could not install into $DEST" >&2; exit 1; }
echo "build_llama_tools: done in $(( $(date +%s) - start )) s" >&2
echo "$DEST"
