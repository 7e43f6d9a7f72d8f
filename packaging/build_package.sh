#!/usr/bin/env bash
# `make package`: the installed application. Builds the PyInstaller one-folder bundle, smoke-tests it,
# and packs it as dist/quant-studio-VERSION-linux-x86_64.tar.gz and dist/quant-studio_VERSION_amd64.deb
# (checked by packaging/check_package.py: installed into an empty root with dpkg, then run from there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import PySide6, pyqtgraph, numba, gguf" 2>/dev/null; then
  bash packaging/bootstrap.sh
fi
PYI_VERSION=6.22.3
.venv/bin/python -c "import PyInstaller, sys; sys.exit(PyInstaller.__version__ != '$PYI_VERSION')" 2>/dev/null \
  || .venv/bin/python -m pip install -q "pyinstaller==$PYI_VERSION"
command -v dpkg-deb >/dev/null || { echo "package: dpkg-deb is needed for the .deb" >&2; exit 2; }
VERSION=$(.venv/bin/python -c "from importlib.metadata import version; print(version('quant-studio'))")
ARCH=x86_64
echo "== bundle (PyInstaller $PYI_VERSION), quant-studio $VERSION"
rm -rf dist/quant-studio build/pyinstaller
t0=$(date +%s)
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/quant-studio.spec
echo "bundle built in $(( $(date +%s) - t0 )) s: $(du -sh dist/quant-studio | cut -f1)"

echo "== smoke test of the bundle"
.venv/bin/python packaging/check_package.py bundle dist/quant-studio

echo "== .tar.gz"
TGZ=dist/quant-studio-$VERSION-linux-$ARCH.tar.gz
tar -C dist -czf "$TGZ" quant-studio
echo "$TGZ: $(du -h "$TGZ" | cut -f1)"

echo "== .deb"
STAGE=build/deb/quant-studio_${VERSION}_amd64
rm -rf "$STAGE" && mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
  "$STAGE/usr/share/icons/hicolor/scalable/apps" "$STAGE/usr/share/mime/packages"
cp -a dist/quant-studio "$STAGE/opt/quant-studio"
ln -s /opt/quant-studio/quant-studio "$STAGE/usr/bin/quant-studio"
install -m 644 packaging/linux/quant-studio.desktop "$STAGE/usr/share/applications/quant-studio.desktop"
install -m 644 resources/quant-studio.svg "$STAGE/usr/share/icons/hicolor/scalable/apps/quant-studio.svg"
install -m 644 packaging/linux/quant-studio-mime.xml "$STAGE/usr/share/mime/packages/quant-studio.xml"
install -m 755 packaging/linux/postinst packaging/linux/postrm "$STAGE/DEBIAN/"
SIZE_KB=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: quant-studio
Version: $VERSION
Section: science
Priority: optional
Architecture: amd64
Installed-Size: $SIZE_KB
Depends: libc6 (>= 2.31), libgl1, libegl1, libx11-6, libdbus-1-3, libfontconfig1, libglib2.0-0, libxkbcommon0, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-image0, libxcb-keysyms1, libxcb-render-util0, libxcb-shape0
Maintainer: Quant Studio developers <quant-studio@users.noreply.github.com>
Homepage: https://github.com/quant-studio/quant-studio
Description: language models to GGUF for llama.cpp, point and click
 Quant Studio opens a model (GGUF of any type, safetensors, Hugging Face
 folders), shows every tensor's statistics, plans a quantization per tensor
 with llama.cpp's presets and rules, predicts size and error, and writes a
 GGUF that llama.cpp loads. Also a command line: quant-studio --help.
CONTROL
DEB=dist/quant-studio_${VERSION}_amd64.deb
dpkg-deb --root-owner-group -Zxz -z6 --build "$STAGE" "$DEB" >/dev/null
echo "$DEB: $(du -h "$DEB" | cut -f1)"
.venv/bin/python packaging/check_package.py deb "$DEB"
echo "package: done"
