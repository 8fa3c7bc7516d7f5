#!/bin/sh
# In the image's chroot: pjproject from its release tarball, built with limits for CALLS
# concurrent calls (image/config-site.sh), and its SWIG Python binding (pjsua2) into the
# appliance's virtual environment. PyPI has no aarch64 pjsua2 wheel, and the x86_64 one holds
# 4 calls. The tarball's SHA-256 must be pinned in image/pjproject.sha256 (checked against the
# release page once by a person): an unpinned build stops and prints what it downloaded.
#
#   stages/40-pjproject.sh VERSION CALLS
set -eu

version="${1:-2.15.1}"
calls="${2:-32}"
here=$(cd "$(dirname "$0")/.." && pwd)
venv=/opt/centralka/.venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

url="https://github.com/pjsip/pjproject/archive/refs/tags/$version.tar.gz"
curl -fsSL --retry 3 -o "$work/pjproject.tar.gz" "$url"
got=$(sha256sum "$work/pjproject.tar.gz" | cut -d' ' -f1)
want=$(grep -E "^[0-9a-f]{64} +pjproject-$version.tar.gz$" "$here/pjproject.sha256" 2>/dev/null | cut -d' ' -f1 || true)
if [ -z "$want" ]; then
  echo "40-pjproject.sh: no pinned checksum for pjproject $version; downloaded $got" >&2
  echo "  check it against https://github.com/pjsip/pjproject/releases/tag/$version, then add" >&2
  echo "  '$got  pjproject-$version.tar.gz' to image/pjproject.sha256" >&2
  exit 1
fi
if [ "$got" != "$want" ]; then
  echo "40-pjproject.sh: pjproject $version checksum $got is not the pinned $want" >&2
  exit 1
fi

tar -xzf "$work/pjproject.tar.gz" -C "$work"
src="$work/pjproject-$version"
"$here/config-site.sh" "$calls" >"$src/pjlib/include/pj/config_site.h"
cd "$src"
CFLAGS="-fPIC -O2" ./configure --prefix=/usr/local --enable-shared --disable-video --disable-sound \
  --disable-opencore-amr --disable-silk --disable-opus --disable-bcg729 LDFLAGS="-Wl,-rpath,/usr/local/lib"
make dep
make -j"$(nproc)"
make install
ldconfig
cd pjsip-apps/src/swig/python
make
"$venv/bin/pip" install --no-deps .
"$venv/bin/python" -c "import pjsua2; print('pjsua2', pjsua2.Endpoint().libVersion().full)"
echo "40-pjproject.sh: pjproject $version for $calls calls"
