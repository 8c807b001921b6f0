#!/usr/bin/env bash
# Installs the Debian packages the integration tests run for real: Dovecot (IMAP server),
# PostgreSQL (multi-process tests) and Chromium with its driver (pages looked at in a real
# browser, tests/helpers/browser.py), Node.js and Ruby (the signature verifiers of docs/webhooks.md
# run in tests/test_webhook_verifiers.py) and nginx (`nginx -t` on docs/deploy.md's proxy
# configuration). Does nothing when they are there already.
set -euo pipefail
need=()
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd dovecot-lmtpd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ -x /usr/bin/node ] || need+=(nodejs)
[ -x /usr/bin/ruby ] || need+=(ruby)
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start system-wide services; the tests run their own private instances.
$SUDO systemctl disable --now dovecot postgresql nginx >/dev/null 2>&1 || true
