#!/usr/bin/env bash
# Installs the Debian packages callrec's tests use (ffmpeg/ffprobe as the audio oracle, sipp as a real SIP
# peer, tshark/tcpdump to capture and cross-check, sox, chromium for the UI), with apt-get, only when something is missing.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v sipp >/dev/null || need+=(sip-tester)
command -v tshark >/dev/null || need+=(tshark)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v sox >/dev/null || need+=(sox)
# the UI's browser tests drive Debian's Chromium through Playwright (no downloaded browsers)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -e /usr/lib/x86_64-linux-gnu/libsndfile.so.1 ] || ldconfig -p | grep -q libsndfile.so.1 || need+=(libsndfile1)
ldconfig -p | grep -q libbcg729 || need+=(libbcg729-0)
ldconfig -p | grep -q libmp3lame.so.0 || need+=(libmp3lame0)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "please install as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
