#!/usr/bin/env bash
# A .dmg of Quant Studio for macOS (NOT built or tested in this project's CI: no macOS machine).
# On a Mac with the project's .venv:
#   .venv/bin/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/quant-studio.spec
#   bash packaging/macos/make_dmg.sh
# The spec's one-folder bundle is wrapped in "Quant Studio.app" (Info.plist with the .gguf document type),
# then hdiutil makes a compressed disk image with a link to /Applications. Unsigned: Gatekeeper asks once.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(.venv/bin/python -c "from importlib.metadata import version; print(version('quant-studio'))")
APP="dist/Quant Studio.app"
rm -rf "$APP" && mkdir -p "$APP/Contents/MacOS" "$APP/Contents/Resources"
cp -R dist/quant-studio/ "$APP/Contents/MacOS/"
cat > "$APP/Contents/Info.plist" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
  <key>CFBundleName</key><string>Quant Studio</string>
  <key>CFBundleIdentifier</key><string>org.quantstudio.QuantStudio</string>
  <key>CFBundleVersion</key><string>$VERSION</string>
  <key>CFBundleShortVersionString</key><string>$VERSION</string>
  <key>CFBundleExecutable</key><string>quant-studio</string>
  <key>CFBundlePackageType</key><string>APPL</string>
  <key>LSMinimumSystemVersion</key><string>12.0</string>
  <key>CFBundleDocumentTypes</key><array><dict>
    <key>CFBundleTypeName</key><string>GGUF model</string>
    <key>CFBundleTypeExtensions</key><array><string>gguf</string></array>
    <key>CFBundleTypeRole</key><string>Editor</string>
  </dict></array>
</dict></plist>
PLIST
STAGE=$(mktemp -d)
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
hdiutil create -volname "Quant Studio" -srcfolder "$STAGE" -ov -format UDZO "dist/quant-studio-$VERSION-macos.dmg"
