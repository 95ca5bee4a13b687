//! Tamper evidence (SPEC R2): the hash chain over the chunks, the seal
//! signed on stop with an Ed25519 key the host holds for this tenant's
//! recording plugin (`SEAL_KEY`), the verification that re-reads
//! everything over one or more calls (the cursor between them under an
//! HMAC) and names each problem, and the published seal key.
//!
//! Uses `access` for the record and `retention` to notice media the host
//! shredded; `capture` seals and chains through here.

use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Error, Request, blobs, crypto, kv, tx};

use crate::access::{active_ns, announce, audit_ok, save, visible};
use crate::model::{self, Chunk, Recording, Seal, SealPayload, State};
use crate::retention::shredded_by_host;
use crate::{Reply, param};

/// The seal key's name (per tenant and plugin, held by the host).
const SEAL_KEY: &str = "seal";

/// Bytes of media one verify call re-reads before handing back a cursor
/// (each byte crosses to the host twice, read and hashed, within the
/// per-call budget of host bytes, 64 MiB by default).
const VERIFY_BUDGET: u64 = 8 << 20;

/// Chunk records one verify call reads at most.
const VERIFY_CHUNKS: u32 = 256;

/// Problems one verification lists (they travel in the cursor).
const MAX_PROBLEMS: usize = 20;

/// The bytes a hex string spells, or `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The chain head before the first chunk of `rid`.
pub fn genesis(rid: &str) -> String {
    crypto::hex(&crypto::sha256(
        format!("switchboard-recording-v1:{rid}").as_bytes(),
    ))
}

/// The head after chunk `seq` whose SHA-256 is `hash`, given the head
/// before it: SHA-256(previous head (hex) || seq (u64 BE) || hash).
pub fn chain_next(previous: &str, seq: u64, hash: &[u8]) -> String {
    let mut buf = Vec::with_capacity(previous.len() + 8 + hash.len());
    buf.extend_from_slice(previous.as_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(hash);
    crypto::hex(&crypto::sha256(&buf))
}

/// Ends the recording and signs what it holds. Writes the recording.
pub fn seal(req: &Request, rec: &mut Recording) -> Result<(), ApiError> {
    seal_at(req, rec, switchboard_sdk::now_ms())
}

/// [`seal`], stating that capture ended at `now` (a call's recording,
/// handed over after the call, ended with the call).
pub fn seal_at(req: &Request, rec: &mut Recording, now: u64) -> Result<(), ApiError> {
    if let Some(last) = rec.pauses.last_mut()
        && last.to.is_none()
    {
        last.to = Some(now);
    }
    rec.state = State::Stopped;
    rec.stopped_at = Some(now);
    let payload = SealPayload {
        v: 2,
        by_plugin: rec.owner_plugin.clone(),
        policy: rec.policy.clone(),
        tenant: req.principal.tenant.clone(),
        recording: rec.id.clone(),
        source: rec.source.clone(),
        initiator: rec.initiator.clone(),
        content_type: rec.content_type.clone(),
        started_at: rec.started_at,
        stopped_at: now,
        chunks: rec.chunks,
        bytes: rec.bytes,
        head: rec.head.clone(),
        pauses: rec
            .pauses
            .iter()
            .map(|p| (p.from, p.to.unwrap_or(now), p.after_chunk))
            .collect(),
    };
    let payload = serde_json::to_string(&payload)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let signature = crypto::sign(SEAL_KEY, payload.as_bytes())?;
    let public_key = crypto::public_key(SEAL_KEY)?;
    rec.seal = Some(Seal {
        payload,
        signature: crypto::hex(&signature),
        public_key: crypto::hex(&public_key),
    });
    save(rec)?;
    kv::delete(model::active(&active_ns(rec), &rec.source))?;
    audit_ok(
        "recording.stop",
        rec,
        json!({ "chunks": rec.chunks, "bytes": rec.bytes, "head": rec.head,
                "reason": req.query_param("reason").filter(|r| r == "source_ended") }),
    )?;
    announce(rec, "recording.stopped")?;
    Ok(())
}

/// `GET /recordings/:rid/verify[?cursor=...]`: re-reads the chunk records
/// and the media, recomputes every hash and the chain, and checks the
/// seal's signature and statements. Long recordings are verified over
/// several calls: an answer with `"done": false` carries the `cursor` to
/// pass next. Audited (`recording.verify`) when done.
pub fn verify(req: &Request, p: &Params) -> Reply {
    let rec = visible(req, param(p, "rid"))?;
    let (mut next, mut head, mut bytes, mut problems) = match req.query_param("cursor") {
        None => (1u64, genesis(&rec.id), 0u64, Vec::<String>::new()),
        Some(c) => parse_cursor(&rec.id, &c)?,
    };
    let prefix = model::chunks_prefix(&rec.id);
    let start = (next > 1).then(|| model::chunk(&rec.id, next - 1).into_bytes());
    let page = kv::scan(&prefix, start.as_deref(), VERIFY_CHUNKS)?;
    let mut read = 0u64;
    let media_gone = rec.state == State::Shredded || shredded_by_host(&rec)?;
    let mut stopped_early = false;
    for e in &page.entries {
        let key_seq = std::str::from_utf8(&e.key[prefix.len()..])
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let chunk: Chunk = match serde_json::from_slice(&e.value) {
            Ok(c) => c,
            Err(_) => {
                problems.push(format!("chunk {key_seq}: its record is unreadable"));
                continue;
            }
        };
        if key_seq != next {
            if key_seq > next {
                problems.push(format!("chunks {next}..{} are missing", key_seq - 1));
            } else {
                problems.push(format!("chunk {key_seq} appears out of order"));
            }
        }
        if chunk.seq != key_seq {
            problems.push(format!(
                "position {key_seq} holds chunk {}: chunks were reordered",
                chunk.seq
            ));
        }
        if key_seq > rec.chunks {
            problems.push(format!(
                "chunk {key_seq} was added after the recording's last chunk ({})",
                rec.chunks
            ));
        }
        if chunk.offset != bytes {
            problems.push(format!(
                "chunk {key_seq} starts at byte {} instead of {bytes}",
                chunk.offset
            ));
        }
        if !media_gone {
            match read_all(&rec.blob, chunk.offset, chunk.len) {
                Ok(data) => {
                    let actual = crypto::hex(&crypto::sha256(&data));
                    if actual != chunk.hash {
                        problems.push(format!("chunk {key_seq}: its media was changed"));
                    }
                    read += data.len() as u64;
                }
                Err(e) => {
                    problems.push(format!("chunk {key_seq}: its media cannot be read ({e:?})"))
                }
            }
        }
        let hash = unhex(&chunk.hash).unwrap_or_default();
        let expected = chain_next(&head, key_seq, &hash);
        if expected != chunk.chain {
            problems.push(format!("chunk {key_seq}: the hash chain breaks here"));
        }
        head = expected;
        bytes = chunk.offset.saturating_add(chunk.len);
        next = key_seq + 1;
        if problems.len() > MAX_PROBLEMS {
            problems.truncate(MAX_PROBLEMS);
            problems.push("more problems not listed: verification stopped".into());
            break;
        }
        if read >= VERIFY_BUDGET {
            stopped_early = true;
            break;
        }
    }
    let more = stopped_early || page.next.is_some();
    if more && problems.len() <= MAX_PROBLEMS {
        return Ok(http::json(
            200,
            &json!({
                "done": false,
                "cursor": make_cursor(&rec.id, next, &head, bytes, &problems)?,
                "checked_chunks": next - 1,
            }),
        ));
    }
    // Everything read: compare with the record and the seal.
    if next - 1 < rec.chunks {
        problems.push(format!("chunks {next}..{} are missing", rec.chunks));
    }
    if head != rec.head {
        problems.push("the chain head differs from the recording's".into());
    }
    if !media_gone && blobs::size(&rec.blob)? != bytes {
        problems.push("the media holds bytes beyond the last chunk".into());
    }
    let mut signature_valid = None;
    if let Some(seal) = &rec.seal {
        let sig = unhex(&seal.signature).unwrap_or_default();
        let ok = crypto::verify(SEAL_KEY, seal.payload.as_bytes(), &sig)?;
        signature_valid = Some(ok);
        if !ok {
            problems.push("the seal's signature is not valid".into());
        }
        match serde_json::from_str::<SealPayload>(&seal.payload) {
            Ok(s) => {
                if s.recording != rec.id || s.tenant != req.principal.tenant {
                    problems.push("the seal is for another recording".into());
                }
                let pauses: Vec<(u64, u64, u64)> = rec
                    .pauses
                    .iter()
                    .map(|p| (p.from, p.to.unwrap_or(0), p.after_chunk))
                    .collect();
                let stated = (
                    &s.source,
                    &s.initiator,
                    &s.content_type,
                    s.started_at,
                    Some(s.stopped_at),
                    &s.pauses,
                );
                let recorded = (
                    &rec.source,
                    &rec.initiator,
                    &rec.content_type,
                    rec.started_at,
                    rec.stopped_at,
                    &pauses,
                );
                if stated != recorded {
                    problems.push(
                        "the recording's source, initiator, type, times or pauses differ from the sealed ones"
                            .into(),
                    );
                }
                if s.v >= 2 && (s.by_plugin != rec.owner_plugin || s.policy != rec.policy) {
                    problems.push(
                        "the plugin or policy the recording was made by differs from the sealed one"
                            .into(),
                    );
                }
                if s.head != head {
                    problems.push("the chain head differs from the sealed one".into());
                }
                if s.chunks != next - 1 || s.bytes != bytes {
                    problems.push(format!(
                        "sealed {} chunks and {} bytes; found {} chunks and {bytes} bytes",
                        s.chunks,
                        s.bytes,
                        next - 1
                    ));
                }
            }
            Err(_) => problems.push("the seal's statement is unreadable".into()),
        }
    } else if rec.state == State::Stopped {
        problems.push("the recording stopped but has no seal".into());
    }
    let intact = problems.is_empty();
    audit_ok(
        "recording.verify",
        &rec,
        json!({ "intact": intact, "problems": problems.len() }),
    )?;
    // A failed verification is an error answer (409 `tampered`) carrying
    // the whole report; its audit entry stays.
    tx::keep_writes();
    Ok(http::json(
        if intact { 200 } else { 409 },
        &json!({
            "code": if intact { "intact" } else { "tampered" },
            "done": true,
            "intact": intact,
            "sealed": rec.seal.is_some(),
            "signature_valid": signature_valid,
            "media_shredded": media_gone,
            "chunks": next - 1,
            "bytes": bytes,
            "head": head,
            "problems": problems,
            "seal": rec.seal,
        }),
    ))
}

fn read_all(blob: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = offset;
    while at < offset + len {
        let part = blobs::read(blob, at, (offset + len - at).min(4 << 20) as u32)?;
        if part.is_empty() {
            break;
        }
        at += part.len() as u64;
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// The state of a verification between calls: next chunk, chain head,
/// bytes and problems so far, with an HMAC (a key the host holds for this
/// plugin) so that a caller cannot skip chunks or forge findings.
fn make_cursor(
    rid: &str,
    next: u64,
    head: &str,
    bytes: u64,
    problems: &[String],
) -> Result<String, ApiError> {
    let body = format!(
        "{next}.{head}.{bytes}.{}",
        crypto::hex(
            serde_json::to_string(problems)
                .unwrap_or_default()
                .as_bytes()
        )
    );
    let mac = crypto::hmac_sha256("verify-cursor", format!("{rid}:{body}").as_bytes())?;
    Ok(format!("{body}.{}", crypto::hex(&mac)))
}

fn parse_cursor(rid: &str, c: &str) -> Result<(u64, String, u64, Vec<String>), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "pass the cursor as received");
    let (body, mac) = c.rsplit_once('.').ok_or_else(bad)?;
    let expected = crypto::hmac_sha256("verify-cursor", format!("{rid}:{body}").as_bytes())?;
    if unhex(mac).as_deref() != Some(&expected[..]) {
        return Err(bad());
    }
    let mut parts = body.split('.');
    let next = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let head = parts
        .next()
        .filter(|h| h.len() == 64 && unhex(h).is_some())
        .ok_or_else(bad)?;
    let bytes = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let problems = parts
        .next()
        .and_then(unhex)
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .ok_or_else(bad)?;
    if next == 0 || parts.next().is_some() {
        return Err(bad());
    }
    Ok((next, head.to_string(), bytes, problems))
}

/// The tenant's recording seal public key, for verifying seals elsewhere.
pub fn seal_key(req: &Request, _: &Params) -> Reply {
    req.user()?;
    Ok(http::json(
        200,
        &json!({ "algorithm": "Ed25519", "public_key": crypto::hex(&crypto::public_key(SEAL_KEY)?) }),
    ))
}
