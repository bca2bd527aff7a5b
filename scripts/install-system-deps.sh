#!/usr/bin/env bash
# Install the real servers the MQTT/central tests need: Mosquitto (+ clients) and PostgreSQL;
# and Debian's Chromium, which the web tests drive headless (Playwright never downloads one),
# and WebKitGTK's WebDriver with Xvfb, which drive the page in an iPad's engine.
# Idempotent: does nothing when the binaries are already there. Needs root (CI runs as root).
# The Debian mosquitto package may start a system broker on 1883; the tests never use it,
# they start their own broker on a free loopback port.
set -euo pipefail

have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
have_pg || missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the TLS test makes its own CA
[ -x /usr/bin/chromium ] || missing+=(chromium)  # tests/test_web_*.py, make screenshots
# tests/test_web_webkit.py: the page in WebKit (an iPad's engine) on a virtual screen
command -v WebKitWebDriver >/dev/null 2>&1 || missing+=(webkit2gtk-driver)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)  # text in screenshots
# tests/test_score_on_emulated_arm64.py: score under an emulated arm64 Debian (scripts/arm64_emulated.sh)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# bench/isa_mask.c (make bench, tests/test_avx2_path.py): the models on AVX2 alone
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: mosquitto, mosquitto-clients, postgresql, openssl, chromium, webkit2gtk-driver, xvfb, qemu-user-static, debootstrap, cc already present"
  exit 0
fi

pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing ${pkgs}; run as root (or: sudo apt-get install ${pkgs})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends ${pkgs}
echo "install-system-deps: installed ${pkgs}"
