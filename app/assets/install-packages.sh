#!/bin/sh
# Installs the packages listed one per line in $1 with whichever package manager the image has,
# then removes the package caches and itself. Names were validated by the service.
set -eu
list="$1"
# COPY into /tmp creates it root-owned 0755 on images that had none; Docker copies that mode
# onto the job's /tmp tmpfs, where the unprivileged job must be able to write.
cleanup() {
    rm -rf /tmp/taskdeploy-build
    chmod 1777 /tmp
}
trap cleanup EXIT
if [ ! -s "$list" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    xargs apt-get install -y -q --no-install-recommends < "$list"
    apt-get clean
    rm -rf /var/lib/apt/lists/*
elif command -v apk >/dev/null 2>&1; then
    xargs apk add --no-cache < "$list"
elif command -v dnf >/dev/null 2>&1; then
    xargs dnf install -y < "$list"
    dnf clean all
elif command -v yum >/dev/null 2>&1; then
    xargs yum install -y < "$list"
    yum clean all
else
    echo "taskdeploy: the base image has no supported package manager (apt, apk, dnf, yum)" >&2
    exit 3
fi
