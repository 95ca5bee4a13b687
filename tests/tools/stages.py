#!/usr/bin/env python3
"""Splits a `perf record -g` profile of the server into a request's stages.

    SB_PERF=/tmp/plugin.perf cargo bench -p switchboard-tests --bench external
    python3 tests/tools/stages.py /tmp/plugin.perf [cpu-us-per-request]

Each sample is attributed to the innermost frame of its stack that names a
stage (walking from the leaf towards the root); kernel frames below it
count for that stage, so the `madvise` of a slot reset counts as "store
drop", a `sendto` under hyper as "network I/O". Samples with no stage frame
fall in "other". Given the CPU per request the bench printed for the
profiled run, shares become microseconds per request.

The stacks come from frame pointers: build with
`RUSTFLAGS="-C force-frame-pointers=yes"` for whole stacks (the standard
library's own frames may still cut some short; those land in "other").
"""

import re
import subprocess
import sys
from collections import Counter

# (stage, pattern on a frame's symbol), innermost match wins; order only
# breaks ties within one frame.
STAGES = [
    ("store drop (slot reset, madvise)", r"drop_in_place<wasmtime::runtime::store|StoreOpaque as core::ops::drop|deallocate_memor|decommit|reset_with_pagemap|clear_and_remain_ready"),
    ("instantiate", r"InstancePre.*instantiate|Instance.*new_started|instantiate_async|allocate_memor|MemoryImageSlot::instantiate"),
    ("guest work and host calls", r"call_handle|typed_func.*call_async|TypedFunc.*call|wasm\[|wasm-function|::host::|fiber"),
    ("new store", r"Store<.*>::new|HostState::new|StoreInner.*new"),
    ("commit", r"txn::|Commits::commit|commit_host|store::sealed|sled::"),
    ("call scheduling (fair turns, executor hand-over)", r"call::fair|CpuTurn|run_on_executor|kernel::executor|AbortOnDrop"),
    ("session check", r"identity::sessions|authenticate|Identity::session"),
    ("rate limits", r"gateway::limit|RateLimit|TokenBucket"),
    ("routing and gateway", r"switchboard::gateway|switchboard::server"),
    ("TLS (rustls, ring)", r"rustls::|ring::|ring_core|aes_gcm|aes_hw|chacha|gcm_"),
    ("HTTP (hyper, parsing, response)", r"hyper::|httparse|http::header|hyper_util"),
    ("tokio runtime (park, wake, I/O driver)", r"tokio::runtime|tokio::io|tokio::net|mio::|parking_lot|futex"),
]
COMPILED = [(name, re.compile(p)) for name, p in STAGES]
NETWORK = re.compile(r"sys_sendto|sys_recvfrom|sys_write|sys_read|tcp_|__x64_sys_epoll|ep_poll")


def samples(path):
    """Yields (comm, frames leaf-first) from `perf script`."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            comm = line.strip()
        else:
            frames.append(line.strip())
    if comm is not None:
        yield comm, frames


def stage_of(frames):
    for f in frames:
        for name, pat in COMPILED:
            if pat.search(f):
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
