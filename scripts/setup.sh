#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine with Python 3.11:
# the pip requirements, and real Fashion-MNIST from Debian's dataset-fashion-mnist package.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt

FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian's dataset-fashion-mnist (real Fashion-MNIST, offline)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get; put the four Fashion-MNIST idx .gz files in data/ or allow the download" >&2
  fi
fi
echo "setup: done ($("$PYTHON" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
