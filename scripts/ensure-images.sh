#!/usr/bin/env bash
# Job: make sure busybox:latest and the default base image exist on the Docker engine, building them locally (no registry needed).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

BUSYBOX_IMAGE=busybox:latest
DEFAULT_IMAGE=${TASKDEPLOY_DEFAULT_IMAGE:-debian:bookworm-slim}
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
CACHE_DIR=/var/cache/taskdeploy

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_busybox() {
    if image_exists "$BUSYBOX_IMAGE"; then
        log "$BUSYBOX_IMAGE present"
        return 0
    fi
    local out
    out=$(ldd /bin/busybox 2>&1) || true
    if [[ $out != *"not a dynamic executable"* && $out != *"statically linked"* ]]; then
        td_apt_install busybox-static # replaces Debian's dynamically linked busybox
    fi
    log "building $BUSYBOX_IMAGE from Debian's static /bin/busybox"
    local start ctx
    start=$(td_now_us)
    td_mktemp_dir ctx
    cp /bin/busybox "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=$IMAGE_PATH
CMD ["/bin/sh"]
EOF
    docker build --force-rm -t "$BUSYBOX_IMAGE" "$ctx" >&2
    docker run --rm "$BUSYBOX_IMAGE" sh -c 'test "$(echo ok)" = ok' ||
        die "the new $BUSYBOX_IMAGE cannot run a shell"
    log "built $BUSYBOX_IMAGE in $(td_elapsed "$start")s"
}

# build_rootfs_tarball FILE: debootstrap a minbase $SUITE and store it as an uncompressed tar.
build_rootfs_tarball() {
    local tarball=$1 tmp rootfs start
    td_need_root "debootstrap"
    command -v debootstrap >/dev/null || td_apt_install debootstrap
    mkdir -p "$CACHE_DIR"
    td_mktemp_dir tmp
    rootfs=$tmp/rootfs
    mkdir -m 0755 "$rootfs" # becomes the image's /: must not be mktemp's 0700
    log "debootstrap --variant=minbase $SUITE $MIRROR (log $CACHE_DIR/debootstrap.log)"
    start=$(td_now_us)
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE_DIR/debootstrap.log" >&2
        die "debootstrap failed; full log in $CACHE_DIR/debootstrap.log"
    fi
    log "debootstrap done in $(td_elapsed "$start")s"
    # debootstrap may bind-mount host devices into the target; never delete through a mount.
    [[ -z $(td_mounts_under "$rootfs") ]] ||
        die "debootstrap left mounts under $rootfs: $(td_mounts_under "$rootfs" | tr '\n' ' ')"

    # Like Debian's official images: all of bookworm's suites, no package caches or lists
    # (builds run `apt-get update` first), no device nodes (Docker provides /dev), and
    # policy-rc.d so package installs in builds never try to start services.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR}-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/cache/apt/*.bin \
        "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/dev/*
    : >"$rootfs/etc/hostname"
    rm -f "$rootfs/etc/resolv.conf"

    start=$(td_now_us)
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv -f "$tarball.part" "$tarball"
    log "cached the rootfs as $tarball ($(du -h "$tarball" | cut -f1)) in $(td_elapsed "$start")s"
}

ensure_default_image() {
    local image=$DEFAULT_IMAGE
    if image_exists "$image"; then
        log "$image present"
        return 0
    fi
    log "$image missing; trying docker pull (30 s at most)"
    if timeout 30 docker pull "$image" >&2; then
        log "pulled $image"
        return 0
    fi
    [[ $image == debian:bookworm* ]] ||
        log "warning: building $image as a Debian $SUITE minbase rootfs; set TASKDEPLOY_DEFAULT_IMAGE to a debian:bookworm tag or provide $image yourself if that is not what you want"

    local tarball start
    tarball=$CACHE_DIR/debian-$SUITE-minbase-$(dpkg --print-architecture).tar
    if [[ -s $tarball ]]; then
        log "reusing cached rootfs $tarball (delete it to debootstrap afresh)"
    else
        build_rootfs_tarball "$tarball"
    fi

    log "docker import $tarball as $image"
    start=$(td_now_us)
    docker import \
        --change "ENV PATH=$IMAGE_PATH" \
        --change 'CMD ["/bin/bash"]' \
        - "$image" <"$tarball" >&2 ||
        die "docker import of $tarball failed (delete the file if it is damaged)"
    log "imported $image in $(td_elapsed "$start")s"
    docker run --rm "$image" sh -c 'id && apt-get --version | head -1' >&2 ||
        die "the new $image does not run a shell and apt-get"
}

td_docker_ok || "$TD_SCRIPTS/ensure-docker.sh"
td_lock images
ensure_busybox
ensure_default_image
