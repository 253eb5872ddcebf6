#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine with Python 3.11:
# the pip requirements, and real Fashion-MNIST from Debian's dataset-fashion-mnist package.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt

# Debian packages: real Fashion-MNIST (offline) and the headless browser the report tests open.
MISSING=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || MISSING="$MISSING dataset-fashion-mnist"
command -v chromium >/dev/null 2>&1 || MISSING="$MISSING chromium"
if [ -n "$MISSING" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages:$MISSING"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
  else
    echo "setup: no apt-get; install$MISSING by hand (Fashion-MNIST: put the four idx .gz files in data/)" >&2
  fi
fi
echo "setup: done ($("$PYTHON" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
