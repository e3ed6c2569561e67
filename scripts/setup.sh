#!/usr/bin/env bash
# Set up a virtual environment in .venv for running (default) or developing (--dev) SmolVLM Desktop.
# On Debian/Ubuntu as root it also installs the system libraries Qt needs (offscreen and X11).
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

qt_libs="libglib2.0-0 libegl1 libgl1 libx11-6 libdbus-1-3 libfontconfig1 libfreetype6 libxkbcommon0 fonts-dejavu-core
libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-render0 libxcb-shape0
libxcb-util1 libxcb-xkb1 libxkbcommon-x11-0"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=$(for p in $qt_libs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  # torch first, pinned, and the CPU build. On Linux the torch on PyPI is the CUDA build, which
  # pulls 16 nvidia-* packages (several GB) that the exporter and tests never use; PyTorch's own
  # CPU index has the same release as "2.13.0+cpu". Pinning the +cpu build means pip either
  # finds it (on that index, or already on this machine: pip's find-links, a wheel cache) or
  # stops and says so; it can never fall back to the CUDA build. macOS and Windows wheels on
  # PyPI are CPU builds already.
  torch_pin="torch==2.13.0"
  cpu_index="https://download.pytorch.org/whl/cpu"
  index_args=()
  if [ "$(uname -s)" = Linux ]; then
    torch_pin="torch==2.13.0+cpu"
    if python3 -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=10)" 2>/dev/null; then
      index_args=(--extra-index-url "$cpu_index")
    else
      echo "note: $cpu_index is not reachable; looking for $torch_pin among the wheels pip already has" >&2
    fi
  fi
  .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} "$torch_pin" || {
    echo "error: could not install $torch_pin (the CPU build of PyTorch). Online, it comes from" >&2
    echo "  $cpu_index:  .venv/bin/python -m pip install $torch_pin --extra-index-url $cpu_index" >&2
    exit 1
  }
  .venv/bin/python -m pip install -q -e ".[test,export,cluster]"  # torch==2.13.0 is met by 2.13.0+cpu
else
  .venv/bin/python -m pip install -q .
fi
echo "ready: .venv/bin/smolvlm-desktop"
