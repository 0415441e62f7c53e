#!/usr/bin/env bash
# Job: make the Docker network that runs with network access join (`taskdeploy-jobs`), with
# firewall rules so that its containers reach neither this host's own services nor the cloud
# metadata address, private ranges or each other. Idempotent; needs root for iptables.
#
# What a job on this network can reach: public addresses through the host's NAT, and Docker's
# embedded DNS inside its own network namespace. What it cannot: any address of this host
# (INPUT from the bridge is dropped), 169.254.0.0/16 (link-local, metadata), 10/8, 172.16/12,
# 192.168/16, 100.64/10 (private and carrier-grade NAT), other containers (ICC off).
#
# Env: TASKDEPLOY_JOB_NETWORK (default taskdeploy-jobs), TASKDEPLOY_JOB_BRIDGE (default td-jobs0).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

NETWORK=${TASKDEPLOY_JOB_NETWORK:-taskdeploy-jobs}
BRIDGE=${TASKDEPLOY_JOB_BRIDGE:-td-jobs0}
BLOCKED=(169.254.0.0/16 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10)

td_lock job-network
if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
    log "creating Docker network $NETWORK (bridge $BRIDGE, no inter-container traffic)"
    docker network create --driver bridge \
        --label taskdeploy.managed=true \
        --opt com.docker.network.bridge.name="$BRIDGE" \
        --opt com.docker.network.bridge.enable_icc=false \
        "$NETWORK" >/dev/null
fi
actual=$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$NETWORK")
[[ $actual == "$BRIDGE" ]] || die "network $NETWORK uses bridge ${actual:-?}, not $BRIDGE"

[[ $EUID -eq 0 ]] || die "the firewall rules of $NETWORK need root (iptables)"
command -v iptables >/dev/null || td_apt_install --no-install-recommends iptables

# rule CHAIN ARGS...: insert the rule at the top of CHAIN unless it is there already.
rule() {
    local chain=$1
    shift
    iptables -C "$chain" "$@" 2>/dev/null || iptables -I "$chain" "$@"
}
rule INPUT -i "$BRIDGE" -j DROP
iptables -N DOCKER-USER 2>/dev/null || true
for net in "${BLOCKED[@]}"; do
    rule DOCKER-USER -i "$BRIDGE" -d "$net" -j DROP
done
log "job network $NETWORK ready: host, metadata and private ranges unreachable from $BRIDGE"
