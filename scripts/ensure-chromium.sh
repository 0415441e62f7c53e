#!/usr/bin/env bash
# Job: make sure Debian's headless Chromium is installed for the browser tests (Playwright drives
# it as a system browser: `playwright install` downloads, which this network cannot) and print
# its path last on stdout.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

CHROMIUM=${TASKDEPLOY_TEST_CHROMIUM:-/usr/bin/chromium}

if [[ ! -x $CHROMIUM ]]; then
    [[ $CHROMIUM == /usr/bin/chromium ]] || die "TASKDEPLOY_TEST_CHROMIUM=$CHROMIUM is not executable"
    td_apt_install chromium
fi
version=$("$CHROMIUM" --version 2>/dev/null) || die "$CHROMIUM --version failed"
log "$version"
printf '%s\n' "$CHROMIUM"
