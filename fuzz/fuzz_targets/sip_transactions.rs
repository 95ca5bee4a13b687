//! The UDP transaction layer under a hostile peer: any sequence of
//! messages received (retransmissions, ACKs for unknown or forged
//! transactions, responses to requests never sent, one peer's branch on
//! another flow) interleaved with what the door sends (requests, and
//! answers of any status to what it received, to strangers or not) and
//! with time passing (retransmission and forgetting timers, the sweep)
//! must not panic, and what it absorbs must be what it sent (SPEC T2: a
//! hostile device or trunk cannot take the door down or make it answer
//! for another).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard::sip::message::Message;
use switchboard::sip::udp::{Datagrams, Received, Transactions};

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    let _entered = rt.enter();
    let (timeouts, _) = tokio::sync::mpsc::channel(8);
    let t = Transactions::new(timeouts);
    let (out, _queue) = tokio::sync::mpsc::channel(1024);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<(u64, Message)> = None;
    let mut rest = data;
    // Each step: an op byte, a flow byte, a 2-byte length, then the bytes.
    while rest.len() >= 4 {
        let (op, flow) = (rest[0] % 5, u64::from(rest[1] % 3));
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let (chunk, tail) = rest[4..].split_at(len);
        rest = tail;
        match op {
            // A datagram from the peer.
            0 | 1 => {
                let Ok(m) = Message::parse(chunk) else { continue };
                match t.received(flow, &m) {
                    Received::Pass => {
                        if m.method().is_some_and(|m| m != "ACK") {
                            last = Some((flow, m));
                        }
                    }
                    Received::Absorb(Some(again)) => {
                        assert!(sent.contains(&again), "absorbed with what was never sent");
                    }
                    Received::Absorb(None) => {}
                }
            }
            // Our answer to the last request taken, of any status, to a
            // stranger or not.
            2 => {
                let Some((flow, request)) = &last else { continue };
                let n = u16::from_le_bytes([
                    chunk.first().copied().unwrap_or(0),
                    chunk.get(1).copied().unwrap_or(0),
                ]);
                let r = request.response(100 + n % 600, "Fuzz", Some("t"));
                let bytes = r.to_bytes();
                t.sending(*flow, &r, &bytes, &out, n & 0x8000 != 0);
                sent.push(bytes);
            }
            // A request or ACK of ours.
            3 => {
                let Ok(m) = Message::parse(chunk) else { continue };
                if m.method().is_none() {
                    continue;
                }
                let bytes = m.to_bytes();
                t.sending(flow, &m, &bytes, &out, false);
                sent.push(bytes);
            }
            // Time passes (up to about 6 minutes): timers fire.
            _ => {
                let ms = u64::from(chunk.first().copied().unwrap_or(0)) * 1500;
                rt.block_on(tokio::time::sleep(Duration::from_millis(ms)));
            }
        }
    }
});
