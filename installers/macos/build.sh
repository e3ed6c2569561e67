#!/usr/bin/env bash
# Build "SmolVLM Desktop.app" and a .dmg on a Mac.
#
#     bash installers/macos/build.sh
#
# On Apple Silicon with macOS 14 or later (onnxruntime's current macOS wheel is arm64, macOS 14+),
# or on an Intel Mac with macOS 13+ (then onnxruntime 1.23.2), with Python 3.11 from python.org
# or Homebrew. Output: dist/SmolVLM Desktop.app and dist/SmolVLM-Desktop-<version>-macos-<arch>.dmg.
#
# ONNX Runtime's standard macOS wheel carries the CoreML execution provider, so no special
# package is needed: the app tries CoreML (provider "auto") and falls back to the CPU per graph,
# visibly, when CoreML cannot take one.
#
# Signing and notarisation are optional. Unsigned, the app runs after the user right-clicks it
# and picks Open (or allows it in System Settings > Privacy & Security). To sign and notarise,
# set before running:
#   CODESIGN_IDENTITY="Developer ID Application: Your Name (TEAMID)"   # PyInstaller signs every file
#   NOTARY_PROFILE=name   # from: xcrun notarytool store-credentials name --apple-id ... --team-id ...
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3.11}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)  # the one place it is written
app="dist/SmolVLM Desktop.app"
dmg="dist/SmolVLM-Desktop-$version-macos-$(uname -m).dmg"

# A clean build environment: the app, its runtime dependencies and PyInstaller only.
"$python" -m venv --clear build/installer-venv
build/installer-venv/bin/python -m pip install --upgrade pip
build/installer-venv/bin/python -m pip install . "pyinstaller==6.22.3"
if [ "$(uname -m)" = x86_64 ]; then
  # Intel Mac: onnxruntime's newest macOS wheels are arm64 only; 1.23.2 is the last x86_64 one.
  build/installer-venv/bin/python -m pip install "onnxruntime==1.23.2"
fi
build/installer-venv/bin/python installers/build_bundle.py   # reads CODESIGN_IDENTITY itself

# Smoke test: a chat and a batch on the demo model, offscreen; a caption on the CLI.
"$app/Contents/MacOS/smolvlm-desktop" --self-test
"$app/Contents/MacOS/smolvlm-desktop" caption resources/samples/house.png --model demo --json --max-new-tokens 4

# The disk image: the app next to a link to /Applications, so users drag one onto the other.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cp -R "$app" "$staging/"
ln -s /Applications "$staging/Applications"
rm -f "$dmg"
hdiutil create -volname "SmolVLM Desktop" -srcfolder "$staging" -fs HFS+ -format UDZO -ov "$dmg"

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
  codesign --sign "$CODESIGN_IDENTITY" --timestamp "$dmg"
  codesign --verify --deep --strict --verbose=2 "$app"
fi
if [ -n "${NOTARY_PROFILE:-}" ]; then
  xcrun notarytool submit "$dmg" --keychain-profile "$NOTARY_PROFILE" --wait
  xcrun stapler staple "$dmg"
  spctl --assess --type open --context context:primary-signature --verbose "$dmg"
fi
echo "built $dmg"
