#!/usr/bin/env bash
# Make a fresh machine ready: uv, the Debian packages the pipeline needs, the locked environment.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Offscreen MuJoCo rendering (EGL + Mesa) and the Nix parser used by the container checks.
APT_PKGS=(libegl1 libegl-mesa0 libgl1-mesa-dri nix-bin)

missing=()
for pkg in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

if ! python3 -m uv --version >/dev/null 2>&1; then
  echo "bootstrap: installing uv"
  python3 -m pip install --quiet uv
fi
# --compile-bytecode: write every package's .pyc once. Where PYTHONDONTWRITEBYTECODE is set (as on
# the 2-core machines this project is measured on), Python would otherwise compile torch, jax and
# LeRobot from source in every stage's process: ~13 s of each start-up, ~75 processes in a
# `make repro`. Later runs find the .pyc files fresh and skip them.
python3 -m uv sync --locked --quiet --compile-bytecode
