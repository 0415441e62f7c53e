#!/usr/bin/env bash
# Job: make sure the local Python base image taskdeploy/python:3.11-slim exists (Debian bookworm's python3 on debian:bookworm-slim; no registry needed).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

# Stands in for the official python:3.11-slim where no registry can be reached: the service's
# Dockerfile takes it as `--build-arg PYTHON_IMAGE=taskdeploy/python:3.11-slim`.
PYTHON_IMAGE=taskdeploy/python:3.11-slim
BASE_IMAGE=debian:bookworm-slim
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

td_docker_ok || "$TD_SCRIPTS/ensure-docker.sh"
if image_exists "$PYTHON_IMAGE"; then
    log "$PYTHON_IMAGE present"
    exit 0
fi
# Never let the build reach FROM with a missing base: the daemon would try a registry.
if ! image_exists "$BASE_IMAGE"; then
    TASKDEPLOY_DEFAULT_IMAGE=$BASE_IMAGE "$TD_SCRIPTS/ensure-images.sh"
    image_exists "$BASE_IMAGE" || die "$BASE_IMAGE is still missing after ensure-images.sh"
fi

td_lock python-image
if image_exists "$PYTHON_IMAGE"; then # built by someone else while we waited for the lock
    log "$PYTHON_IMAGE present"
    exit 0
fi

log "building $PYTHON_IMAGE from $BASE_IMAGE with Debian's python3"
start=$(td_now_us)
# The Dockerfile comes from stdin: the build needs no context.
docker build --force-rm -t "$PYTHON_IMAGE" - >&2 <<EOF
FROM $BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv python3-pip ca-certificates \\
 && apt-get clean \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
ENV PATH=$IMAGE_PATH LANG=C.UTF-8
LABEL org.opencontainers.image.title=taskdeploy-python-base
CMD ["python3"]
EOF
docker run --rm "$PYTHON_IMAGE" python3 -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version' >&2 ||
    die "the new $PYTHON_IMAGE does not run Python 3.11 with venv and ssl"
log "built $PYTHON_IMAGE in $(td_elapsed "$start")s ($(docker image inspect -f '{{.Size}}' "$PYTHON_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
