//! Checks on what users send, and the search tokenizer. A leaf: the
//! areas call it; it uses no other module of the plugin.

use switchboard_sdk::http::ApiError;

/// Characters that render as nothing: a message of only these (and
/// whitespace) is empty.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' | '\u{00AD}'
        )
}

/// Checks a message text: at most `max_chars` characters, no control
/// characters but newline and tab, and something visible unless
/// `may_be_empty` (a message carrying attachments). Unicode is kept exactly
/// as sent (no normalisation): combining marks, emoji sequences and
/// right-to-left text round-trip byte for byte.
pub fn message(text: &str, max_chars: usize, may_be_empty: bool) -> Result<(), ApiError> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(ApiError::new(
            413,
            "message_too_long",
            format!("a message has at most {max_chars} characters; this one has {chars}"),
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!(
                "messages may not contain control character U+{:04X}",
                c as u32
            ),
        ));
    }
    if !may_be_empty && text.chars().all(invisible) {
        return Err(ApiError::bad_request(
            "empty_message",
            "a message needs visible text or an attachment",
        ));
    }
    Ok(())
}

/// A conversation title: 1-200 characters, visible, no control characters.
pub fn title(title: &str) -> Result<String, ApiError> {
    let t = title.trim();
    if t.is_empty() || t.chars().all(invisible) || t.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_title",
            "a title has 1-200 visible characters",
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_title",
            "a title may not contain control characters",
        ));
    }
    Ok(t.to_string())
}

/// A message seq: a decimal number from 1.
pub fn seq(s: &str) -> Result<u64, ApiError> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 && !s.starts_with('+') && !s.starts_with('0') => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_id",
            "a message id is its sequence number in the conversation, from 1",
        )),
    }
}

/// Characters that reorder how text displays: in a file name they make
/// `invoice\u{202E}fdp.exe` look like `invoiceexe.pdf`.
fn bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// An attachment's file name: 1-255 characters, no path separators,
/// control or bidirectional formatting characters, not `.` or `..`.
pub fn file_name(name: &str) -> Result<(), ApiError> {
    let bad = name.is_empty()
        || name.chars().count() > 255
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\' || bidi_control(c));
    if bad {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a file name has 1-255 characters and no '/', '\\' or control characters",
        ));
    }
    Ok(())
}

/// A declared media type (`type/subtype`, token characters), or the
/// generic one. It is only ever reported back, never used to serve.
pub fn content_type(t: Option<&str>) -> Result<String, ApiError> {
    let Some(t) = t.filter(|t| !t.is_empty()) else {
        return Ok("application/octet-stream".into());
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((a, b)) if t.len() <= 127 && token(a) && token(b) => Ok(t.to_ascii_lowercase()),
        _ => Err(ApiError::bad_request(
            "invalid_type",
            "a content type looks like type/subtype",
        )),
    }
}

/// A resource id of an owning plugin: `[A-Za-z0-9._:-]{1,128}`.
pub fn resource(r: &str) -> Result<(), ApiError> {
    if r.is_empty()
        || r.len() > 128
        || !r
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid_resource",
            "a resource id is 1-128 of [A-Za-z0-9._:-]",
        ));
    }
    Ok(())
}

/// Characters of a word its index tag is made from: a query word of at
/// least this many characters finds every word it begins.
pub const TAG_CHARS: usize = 3;

/// Most tokens indexed per message.
pub const MAX_TOKENS: usize = 64;
/// Longest token kept (characters); longer words are cut.
const MAX_TOKEN_CHARS: usize = 32;

/// The distinct search tokens of `text`: runs of letters and digits,
/// lower-cased, at least two characters, at most [`MAX_TOKENS`].
pub fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.chars().count() < 2 {
            continue;
        }
        let token: String = word.to_lowercase().chars().take(MAX_TOKEN_CHARS).collect();
        if !out.contains(&token) {
            out.push(token);
            if out.len() == MAX_TOKENS {
                break;
            }
        }
    }
    out
}

/// `filename="ascii"; filename*=UTF-8''percent-encoded` for
/// Content-Disposition (RFC 6266): the fallback replaces anything outside
/// printable ASCII, quotes and backslashes.
pub fn disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}
