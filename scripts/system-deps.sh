#!/usr/bin/env bash
# Installs the Debian packages callrec's tests use (ffmpeg/ffprobe as the audio oracle, sipp as a real SIP
# peer, tshark/tcpdump to capture and cross-check, sox, chromium for the UI, rtpengine as a real media proxy whose
# recordings callrec reads), with apt-get, only when something is missing.
set -euo pipefail
need=()
# a shared library known to the dynamic linker; `ldconfig -p` is read whole first, so that `grep -q` closing the pipe
# early cannot fail the check under `pipefail` (it did, in 4 of 200 runs under load)
have_lib() { local libs; libs="$(ldconfig -p)"; grep -q "$1" <<<"$libs"; }
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v sipp >/dev/null || need+=(sip-tester)
command -v tshark >/dev/null || need+=(tshark)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v sox >/dev/null || need+=(sox)
# the UI's browser tests drive Debian's Chromium through Playwright (no downloaded browsers)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
# real SIP phones and a real proxy for the passive capture test (tests/live/test_capture_real_peers.py)
command -v baresip >/dev/null || need+=(baresip)
command -v kamailio >/dev/null || need+=(kamailio)
# the README tour (tests/test_readme_tour.py) talks to the API with curl
command -v curl >/dev/null || need+=(curl)
[ -e /usr/lib/x86_64-linux-gnu/libsndfile.so.1 ] || have_lib libsndfile.so.1 || need+=(libsndfile1)
have_lib libbcg729 || need+=(libbcg729-0)
have_lib libmp3lame.so.0 || need+=(libmp3lame0)
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
# another apt (unattended upgrades, a second terminal) may hold the dpkg lock: wait for it rather than fail
lock=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${lock[@]}" update -qq
$sudo apt-get "${lock[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
