#!/usr/bin/env bash
# CI for the Linux installer: build the PyInstaller bundle and the .deb, unpack the .deb into a
# scratch root (no containers here), and run the *installed* copy as a user would:
#   1. `smolvlm-desktop --self-test` offscreen (a chat turn and a two-image batch in the window)
#   2. `smolvlm-desktop caption IMG --model demo --json`, inside a network namespace with no
#      interfaces when the machine allows it (the bundle must not need the network)
#   3. the time from launch to a visible window on a real X server (Xvfb), when available,
#   4. scripts/privacy_check.py on the installed app: no internet socket, no stray file.
# Prints the bundle and .deb sizes and how long each step took. Takes ~2-3 minutes on 2 cores.
#
# Windows and macOS installers cannot be built on Linux: see installers/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0)) s)"; }

# The tools this script uses, from Debian when missing (CI runs as root): readelf for the .deb's
# Depends, Xvfb + xdotool for the window timing, desktop-file-validate and appstreamcli to
# check the installed metadata.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  want=""
  command -v readelf >/dev/null || want="$want binutils"
  command -v Xvfb >/dev/null || want="$want xvfb"
  command -v xdotool >/dev/null || want="$want xdotool"
  command -v desktop-file-validate >/dev/null || want="$want desktop-file-utils"
  command -v appstreamcli >/dev/null || want="$want appstream"
  if [ -n "$want" ]; then
    step "apt-get install$want"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $want >/dev/null
  fi
fi

# A build venv with the app and PyInstaller only: never the dev venv, whose torch and
# transformers must not reach the bundle (the spec excludes them too; build_bundle.py checks).
step "build environment (build/installer-venv)"
venv=build/installer-venv
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/python -m pip install -q --upgrade pip
$venv/bin/python -m pip install -q . "pyinstaller==6.22.3"
$venv/bin/python -m pip install -q --no-deps --force-reinstall .  # this checkout, not a cached 0.1.0

step "PyInstaller bundle"
QT_QPA_PLATFORM=offscreen $venv/bin/python installers/build_bundle.py 2>&1 \
  | grep -v -e "WARNING: Library not found" -e "required via ctypes not found"

step ".deb"
$venv/bin/python installers/linux/build_deb.py
deb=$(ls -t dist/smolvlm-desktop_*.deb | head -1)
dpkg-deb --info "$deb" | sed -n '/Package:/,/Recommends:/p'
# Debian policy: nothing in /opt (a package shipping /opt/NAME owns /opt itself).
if dpkg-deb -c "$deb" | awk '{ print $6 }' | grep -q '^\./opt/'; then
  echo "the .deb ships files in /opt"; exit 1
fi

step "install into a scratch root (dpkg --root)"
# A real dpkg install, into an empty root with its own package database. That database has
# none of the Depends (this machine has them), hence --force-depends.
root=$(mktemp -d /tmp/smolvlm-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status"
out=$(dpkg --root="$root" --force-depends --force-script-chrootless -i "$deb" 2>&1) \
  || { echo "$out"; echo "dpkg -i failed"; exit 1; }
echo "$out" | grep -v -e "depends on" -e "is not installed" -e "dependency problems" || true
for f in usr/bin/smolvlm-desktop usr/lib/smolvlm-desktop/smolvlm-desktop \
         usr/share/applications/smolvlm-desktop.desktop \
         usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml \
         usr/share/icons/hicolor/48x48/apps/smolvlm-desktop.png \
         usr/share/icons/hicolor/scalable/apps/smolvlm-desktop.svg \
         usr/share/doc/smolvlm-desktop/copyright \
         usr/share/doc/smolvlm-desktop/licenses/python/LICENSE.txt \
         usr/share/doc/smolvlm-desktop/licenses/onnxruntime/onnxruntime/ThirdPartyNotices.txt \
         usr/share/doc/smolvlm-desktop/licenses/pyside6-essentials/ICU.txt \
         usr/share/doc/smolvlm-desktop/licenses/numpy/LICENSE.txt; do
  [ -e "$root/$f" ] || { echo "the .deb does not install /$f"; exit 1; }
done
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$root/usr/share/applications/smolvlm-desktop.desktop"
fi
if command -v appstreamcli >/dev/null; then
  appstreamcli validate --no-net "$root/usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml"
fi
app="$root/usr/bin/smolvlm-desktop"   # the launcher, as users run it
# The installed app must use its own private dirs here, never a developer's real settings.
export SMOLVLM_DATA_DIR="$root/home/data" SMOLVLM_CONFIG_DIR="$root/home/config"

step "installed --version"
want=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
got=$("$app" --version)
[ "$got" = "smolvlm-desktop $want" ] || { echo "--version says '$got', pyproject.toml $want"; exit 1; }
echo "$got"

step "installed --self-test (offscreen)"
start=$SECONDS
QT_QPA_PLATFORM=offscreen "$app" --self-test
echo "self-test took $((SECONDS - start)) s"

step "installed app under the privacy check (strace, >= 25 s)"
$venv/bin/python scripts/privacy_check.py window --app "$app"

step "installed caption --json on the demo model"
offline=""
if unshare -n true 2>/dev/null; then offline="unshare -n"; fi
line=$($offline "$app" caption resources/samples/house.png --model demo --json --max-new-tokens 4)
echo "$line"
echo "$line" | $venv/bin/python -c "import json, sys; r = json.loads(sys.stdin.readline()); sys.exit(0 if r['ok'] else 1)"
echo "caption passed${offline:+ with no network (unshare -n)}"

step "launch to visible window (Xvfb)"
if command -v Xvfb >/dev/null && command -v xdotool >/dev/null; then
  display=:$((90 + RANDOM % 100))
  Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb=$!
  for _ in $(seq 50); do DISPLAY=$display xdotool getdisplaygeometry >/dev/null 2>&1 && break; sleep 0.1; done
  begin=$(date +%s.%N)
  DISPLAY=$display QT_QPA_PLATFORM=xcb "$app" --demo >/dev/null 2>&1 &
  window_app=$!
  if DISPLAY=$display timeout 60 xdotool search --sync --onlyvisible --name "SmolVLM Desktop" >/dev/null; then
    end=$(date +%s.%N)
    echo "window visible $(awk "BEGIN { printf \"%.2f\", $end - $begin }") s after launch (X11, Xvfb)"
    status=0
  else
    echo "the window did not appear within 60 s on Xvfb"
    status=1
  fi
  kill "$window_app" 2>/dev/null || true
  wait "$window_app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  wait "$xvfb" 2>/dev/null || true
  [ "$status" = 0 ]
else
  echo "Xvfb or xdotool missing: window timing skipped"
fi

step "uninstall (dpkg --root -r) leaves nothing behind"
rm -rf "$root/home"
dpkg --root="$root" -r smolvlm-desktop >/dev/null
left=$(cd "$root" && find . -mindepth 1 -not -path "./var*" -not -type d)
[ -z "$left" ] || { echo "files left after removal:"; echo "$left"; exit 1; }
echo "removed cleanly"

step "done"
du -sh --apparent-size dist/smolvlm-desktop | sed 's/\t.*/ bundle (unpacked)/'
ls -l "$deb" | awk '{ printf "%.1f MB .deb\n", $5 / 1e6 }'
echo "installers: passed in $((SECONDS - t0)) s"
