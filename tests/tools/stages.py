#!/usr/bin/env python3
"""Splits a `perf record -g` profile of the server into a request's stages.

    SB_PERF=/tmp/plugin.perf cargo bench -p switchboard-tests --bench external
    python3 tests/tools/stages.py /tmp/plugin.perf [cpu-us-per-request]

Each sample goes to the first stage of `STAGES` that has a frame anywhere
in its stack, so kernel and libc frames count for the stage that called
them: the `madvise` of a slot reset is "store drop", a `writev` under
rustls is "TLS". Samples with no stage frame fall in "other". Given the CPU per request the bench printed for the
profiled run, shares become microseconds per request.

The bench records DWARF call graphs (`--call-graph dwarf`), unwound from
the release binary's unwind tables; stacks deeper than the 16 KiB copied
per sample are cut short and may land in "other".
"""

import re
import subprocess
import sys
from collections import Counter

# (stage, pattern on a frame's symbol). A sample goes to the first stage in
# this list with a frame anywhere in its stack: the specific stages (the
# call's parts, the session check) win over the layers around them (TLS,
# HTTP, the gateway, the runtime's scheduler).
STAGES = [
    ("store drop (slot reset, madvise)", r"drop_in_place<wasmtime::runtime::store|StoreOpaque as core::ops::drop|deallocate_memor|deallocate_module|decommit|reset_with_pagemap|clear_and_remain_ready"),
    ("instantiate", r"InstancePre.*instantiate|instantiate_async|allocate_memor|allocate_module|MemoryImageSlot::instantiate"),
    ("new store", r"Store<.*>::new|HostState::new|StoreInner.*::new"),
    ("guest work and host calls", r"call_handle|call_async|wasm\[|wasm-function|fiber|v0_1::invoke|v0_2::invoke"),
    ("session check", r"identity::sessions|Identity>::authenticate|gateway::reply::caller"),
    ("commit", r"txn::|Commits::commit|commit_host|Store::durable"),
    ("call scheduling (fair turns, executor hand-over)", r"call::fair|CpuTurn|kernel::executor|AbortOnDrop"),
    ("rate limits", r"gateway::limits"),
    ("routing, gateway, call set-up", r"switchboard::gateway|switchboard::runtime|switchboard::kernel"),
    ("TLS (rustls, ring)", r"rustls::|ring::|ring_core|aes_gcm|aes_hw|chacha|gcm_"),
    ("HTTP (hyper, parsing, response)", r"hyper::proto|httparse|hyper::body|Buffered<"),
    ("thread wake-ups and parking (tokio, futex, epoll)", r"park|unpark|wake|Driver::turn|epoll|futex|schedule"),
]
COMPILED = [(name, re.compile(p)) for name, p in STAGES]
NETWORK = re.compile(r"sys_sendto|sys_recvfrom|sys_write|sys_read|tcp_|__x64_sys_epoll|ep_poll")


def samples(path):
    """Yields (comm, frames leaf-first) from `perf script`."""
    if path.endswith(".txt"):
        # Already the text of `perf script -F comm,ip,sym` (slow on
        # DWARF call graphs: minutes).
        out = open(path, encoding="utf-8", errors="replace").read()
    else:
        out = subprocess.run(
            ["perf", "script", "-i", path, "-F", "comm,ip,sym"],
            capture_output=True, text=True, check=True,
        ).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith("\t"):
            comm = line.strip()
        else:
            # "\t<address> <symbol>"
            frames.append(line.strip().partition(" ")[2])
    if comm is not None:
        yield comm, frames


def stage_of(frames):
    for name, pat in COMPILED:
        if any(pat.search(f) for f in frames):
            return name
    if any(NETWORK.search(f) for f in frames):
        return "network I/O (kernel)"
    return "other"


def main():
    path = sys.argv[1]
    per_request = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    counts, threads = Counter(), Counter()
    total = 0
    for comm, frames in samples(path):
        if comm == "h2load":
            continue  # the load generator, not the server
        total += 1
        counts[stage_of(frames)] += 1
        threads[comm] += 1
    if not total:
        print("no samples")
        return
    print(f"{total} samples")
    print("| stage | share of server CPU |" + (" µs per request |" if per_request else ""))
    print("|---|---|" + ("---|" if per_request else ""))
    for name, n in counts.most_common():
        line = f"| {name} | {100 * n / total:.1f} % |"
        if per_request:
            line += f" {per_request * n / total:.1f} |"
        print(line)
    print()
    print("| thread | share |")
    print("|---|---|")
    for comm, n in threads.most_common(8):
        print(f"| {comm} | {100 * n / total:.1f} % |")


if __name__ == "__main__":
    main()
