//! Search: the keyed index of message words and the `/search` route. Key
//! names are not encrypted at rest, so the index holds a keyed hash of
//! each word's first characters, never the words; every candidate message
//! is checked against the query before it is answered.
//!
//! Uses `conversations` for membership; `messages` calls
//! `index_message`/`unindex_message` as texts change.

use std::collections::BTreeSet;

use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, crypto, kv};

use crate::conversations::{load_conversation, membership};
use crate::model::{self, Message};
use crate::{Reply, limit_param, text};

/// The index tag of a word: a keyed hash (HMAC-SHA-256 under a key the
/// host holds for this tenant's chat) of its first three characters. Key
/// names are not encrypted at rest, so words never appear in them; several
/// words share a tag, and search checks each candidate message.
fn index_tag(word: &str) -> Result<String, ApiError> {
    let head: String = word.chars().take(text::TAG_CHARS).collect();
    let mac = crypto::hmac_sha256("search-index", head.as_bytes())?;
    Ok(crypto::hex(&mac[..12]))
}

/// The distinct index tags of a text.
fn index_tags(body: &str) -> Result<BTreeSet<String>, ApiError> {
    text::tokens(body).iter().map(|t| index_tag(t)).collect()
}

pub fn index_message(cid: &str, seq: u64, body: &str) -> Result<(), ApiError> {
    for tag in index_tags(body)? {
        kv::set(model::index(cid, &tag, seq), b"")?;
    }
    Ok(())
}

pub fn unindex_message(cid: &str, seq: u64, body: &str) -> Result<(), ApiError> {
    for tag in index_tags(body)? {
        kv::delete(model::index(cid, &tag, seq))?;
    }
    Ok(())
}

/// Most index entries read per query word and conversation.
const SEARCH_SCAN: u32 = 500;

/// Most candidate messages checked per conversation.
const SEARCH_CHECK: usize = 200;

/// Most words in a query.
const MAX_QUERY_WORDS: usize = 8;

/// Most conversations one search looks through (the newest-joined first
/// is not guaranteed: conversations are visited in id order).
const SEARCH_CONVERSATIONS: usize = 2000;

pub fn search(req: &Request, _: &Params) -> Reply {
    let me = req.user()?.to_string();
    let q = req.query_param("q").unwrap_or_default();
    if q.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a query has at most 200 characters",
        ));
    }
    let mut words = text::tokens(&q);
    if words.is_empty() || words.len() > MAX_QUERY_WORDS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("search for 1-{MAX_QUERY_WORDS} words of two or more letters or digits"),
        ));
    }
    // The longest word leads: its tag is likely the rarest.
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    let limit = limit_param(req, 20, 50)? as usize;
    let conversations: Vec<String> = match req.query_param("conversation") {
        Some(cid) => {
            membership(req, &cid)?;
            vec![cid]
        }
        None => {
            let prefix = format!("uc/{me}/");
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = kv::scan(&prefix, after.as_deref(), 1000)?;
                out.extend(
                    page.entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned()),
                );
                match page.next {
                    Some(n) if out.len() < SEARCH_CONVERSATIONS => after = Some(n),
                    _ => break,
                }
            }
            out
        }
    };
    let mut tags = Vec::new();
    for w in &words {
        tags.push(index_tag(w)?);
    }
    let mut hits: Vec<Message> = Vec::new();
    for cid in &conversations {
        // A conversation being purged is gone for its members already.
        if load_conversation(cid).is_err() {
            continue;
        }
        // Candidates: the newest messages with the leading word's tag that
        // carry every other word's tag too; a candidate matches when each
        // query word begins a word of its text.
        let page = kv::scan(model::index_prefix(cid, &tags[0]), None, SEARCH_SCAN)?;
        let mut matched = 0;
        let mut checked = 0;
        for seq in page.entries.iter().filter_map(|e| model::index_seq(&e.key)) {
            let mut has_all = true;
            for tag in &tags[1..] {
                if kv::get(model::index(cid, tag, seq))?.is_none() {
                    has_all = false;
                    break;
                }
            }
            if !has_all {
                continue;
            }
            checked += 1;
            if checked > SEARCH_CHECK {
                break;
            }
            let Some(m) = kv::get_json::<Message>(model::message(cid, seq))? else {
                continue;
            };
            let have = text::tokens(&m.text);
            let all = words
                .iter()
                .all(|w| have.iter().any(|t| t.starts_with(w.as_str())));
            if m.deleted.is_none() && all {
                hits.push(m);
                matched += 1;
                if matched == limit {
                    break;
                }
            }
        }
    }
    hits.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then(b.seq.cmp(&a.seq)));
    hits.truncate(limit);
    Ok(http::json(200, &json!({ "results": hits })))
}
