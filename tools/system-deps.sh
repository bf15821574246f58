#!/usr/bin/env bash
# Installs the Debian packages the browser and compose-file tests need, when missing and when we
# can (root with apt-get). Otherwise says what is missing; those tests then skip with the reason.
set -u
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# emoji in the tokenization lab's screenshots (users' browsers bring their own fonts)
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  for pkg in "${missing[@]}"; do
    flags=()
    # docker-compose with its recommends would pull a whole Docker engine; chromium wants its fonts.
    [ "$pkg" = docker-compose ] && flags=(--no-install-recommends)
    apt-get install -y -qq "${flags[@]}" "$pkg" >/dev/null || echo "warning: could not install $pkg"
  done
else
  echo "warning: ${missing[*]} not installed (need root + apt-get); the tests that need them will be skipped"
fi
exit 0
