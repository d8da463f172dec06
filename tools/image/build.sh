#!/bin/bash
# Build the tiepdan box image with pi-gen (Raspberry Pi OS Lite, bookworm, arm64).
#
#   FIRST_USER_PASS=... tools/image/build.sh 1.2.0 /path/to/pi-gen
#
# Needs: a pi-gen checkout (arm64 branch), its dependencies and access to the Debian and
# Raspberry Pi archives, and PyPI for the aarch64 artifact. It builds the artifact and the
# package, puts the package into the stage, links the stage into pi-gen and runs it.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: FIRST_USER_PASS=... tools/image/build.sh VERSION PI_GEN_DIR" >&2; exit 2; }
version=$1
pigen=$(readlink -f "$2")
[ -n "${FIRST_USER_PASS:-}" ] || { echo "build.sh: set FIRST_USER_PASS (the console password)" >&2; exit 2; }
here=$(dirname "$(readlink -f "$0")")
repo=$(dirname "$(dirname "$here")")
python=${PYTHON:-$repo/.venv/bin/python}
dist=$repo/dist

bundle=$(cd "$repo" && "$python" -m tiepdan.tools.packaging.artifact --target linux_aarch64 \
    --version "$version" --out "$dist")
deb=$(cd "$repo" && "$python" -m tiepdan.tools.packaging.deb "$bundle" --out "$dist")
rm -f "$here"/stage-tiepdan/00-tiepdan/files/tiepdan-box_*.deb
cp "$deb" "$here/stage-tiepdan/00-tiepdan/files/"
ln -sfn "$here/stage-tiepdan" "$pigen/stage-tiepdan"
touch "$pigen/stage2/SKIP_IMAGES"  # only the tiepdan image is exported
cp "$here/config" "$pigen/config"
printf 'FIRST_USER_PASS=%q\n' "$FIRST_USER_PASS" >> "$pigen/config"
cd "$pigen"
./build.sh
ls -l "$pigen"/deploy/*tiepdan-box*
