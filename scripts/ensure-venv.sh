#!/usr/bin/env bash
# Job: create the repo's .venv if missing and `pip install -e '.[dev]'` whenever pyproject.toml changed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

venv=$TD_ROOT/.venv
pyproject=$TD_ROOT/pyproject.toml
[[ -f $pyproject ]] || die "$pyproject not found"

td_lock "venv-$(td_short_hash "$TD_ROOT")"

if ! "$venv/bin/python" -c '' 2>/dev/null; then
    command -v python3 >/dev/null || die "python3 not found on PATH"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian splits venv/ensurepip out of its python3 package.
        [[ $(command -v python3) == /usr/bin/python3 ]] ||
            die "$(command -v python3) cannot create virtual environments (no ensurepip)"
        td_apt_install python3-venv
    fi
    log "creating $venv"
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
fi

sha=$(sha256sum "$pyproject")
stamp=$venv/.installed-${sha%% *}
if [[ -e $stamp ]]; then
    log "venv up to date (${stamp##*/})"
    exit 0
fi

log "pyproject.toml changed since the last install: pip install -e '.[dev]'"
start=$(td_now_us)
(cd "$TD_ROOT" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]') >&2
rm -f "$venv"/.installed-*
touch "$stamp"
log "installed in $(td_elapsed "$start")s"
