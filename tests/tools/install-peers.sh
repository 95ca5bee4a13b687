#!/usr/bin/env bash
# Installs the real SIP peers the telephony tests drive, from Debian:
#   baresip (baresip-core)  a phone: TLS, digest, SRTP, DTMF (tests/src/baresip.rs)
#   sipp (sip-tester)       a trunk's provider over UDP (tests/tests/trunks.rs;
#                           Debian's build has no TLS, so it never plays a device)
#   rtpengine (rtpengine-daemon, no recommends)  the media relay the media
#                           bench compares the engine with (tests/benches/media.rs)
# Idempotent: when every command (and the baresip modules the harness loads)
# is present it changes nothing and needs no network. Otherwise it runs
# `apt-get update` once and installs only the missing packages, as root or
# through sudo. The tests fail (never skip) without these peers, naming this
# script.
#
# INSTALL_PEERS_DRY_RUN=1 prints what it would run instead of running it.
set -euo pipefail

# command -> Debian package
declare -A package_of=(
    [baresip]=baresip-core
    [sipp]=sip-tester
    [rtpengine]=rtpengine-daemon
)
# Modules tests/src/baresip.rs loads (all in baresip-core).
baresip_modules=(g711 aufile sndfile srtp account menu ctrl_tcp)
module_dir=/usr/lib/baresip/modules

say() { printf 'install-peers: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

missing_packages() {
    local cmd pkg mod
    local -A want=()
    for cmd in "${!package_of[@]}"; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            want[${package_of[$cmd]}]=1
        fi
    done
    for mod in "${baresip_modules[@]}"; do
        if [[ ! -f "$module_dir/$mod.so" ]]; then
            want[baresip-core]=1
        fi
    done
    for pkg in "${!want[@]}"; do
        printf '%s\n' "$pkg"
    done | sort
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
    say "baresip, sipp and rtpengine are installed; nothing to do"
    exit 0
fi
say "missing: ${missing[*]}"

command -v apt-get >/dev/null 2>&1 ||
    die "apt-get not found: install ${missing[*]} (Debian/Ubuntu package names) by hand"

as_root=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 ||
        die "not root and sudo is not available: run as root, or install ${missing[*]} by hand"
    if [[ -t 0 ]]; then
        as_root=(sudo)
    else
        # No terminal to type a password into: fail instead of hanging.
        as_root=(sudo -n)
    fi
fi

run() {
    if [[ -n "${INSTALL_PEERS_DRY_RUN:-}" ]]; then
        say "would run: $*"
    else
        say "running: $*"
        "$@"
    fi
}

run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
    die "apt-get update failed"
run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}" ||
    die "apt-get install ${missing[*]} failed"

[[ -n "${INSTALL_PEERS_DRY_RUN:-}" ]] && exit 0

mapfile -t still < <(missing_packages)
((${#still[@]} == 0)) || die "still missing after apt-get: ${still[*]}"
say "installed: ${missing[*]}"
