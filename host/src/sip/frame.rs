//! SIP over a stream (TLS or TCP, RFC 3261 §18.3): cutting the byte
//! stream into messages. The SIP door owns its sockets (so TLS is ours:
//! our certificates, SNI, handshake timeouts and connection caps) and
//! hands whole messages to the transaction layer.
//!
//! A message is a start line and headers up to the first empty line, then
//! exactly `Content-Length` bytes of body. The header must name the
//! length (stream transports require it), once (two different values are
//! how requests are smuggled past a proxy), as digits, within
//! [`MAX_BODY`]; the header section must end within [`MAX_HEADER`]. Any
//! breach is a [`FrameError`] and the connection is closed: after one,
//! the stream's message boundaries can no longer be trusted.
//!
//! Keep-alives (RFC 5626 §3.5.1): a double CRLF between messages is a ping
//! the caller answers with a single CRLF (a pong); a lone CRLF is a pong,
//! reported when the next byte shows it is not the start of a ping.

/// Longest header section (start line and headers).
pub const MAX_HEADER: usize = 16 * 1024;
/// Longest body.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// No empty line within [`MAX_HEADER`] bytes.
    #[error("SIP header section over {MAX_HEADER} bytes")]
    HeaderTooLong,
    /// A body over [`MAX_BODY`].
    #[error("SIP body of {0} bytes is over {MAX_BODY}")]
    BodyTooLong(usize),
    /// No `Content-Length` on a stream.
    #[error("SIP message without Content-Length on a stream")]
    NoLength,
    /// A `Content-Length` that is not digits, or two that disagree.
    #[error("bad Content-Length: {0}")]
    BadLength(String),
}

impl FrameError {
    /// A stable code for counters and logs.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::HeaderTooLong | FrameError::BodyTooLong(_) => "sip_too_large",
            FrameError::NoLength | FrameError::BadLength(_) => "sip_malformed",
        }
    }
}

/// What the stream delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole message, header and body.
    Message(Vec<u8>),
    /// A keep-alive ping (CRLF CRLF): answer with a single CRLF.
    Ping,
    /// A keep-alive pong (a lone CRLF).
    Pong,
}

/// Cuts one stream into frames.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes waiting (bounded by the limits: past them `next` fails).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        // Keep-alives sit between messages.
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.drain(..4);
            return Ok(Some(Frame::Ping));
        }
        if self.buf.starts_with(b"\r\n") {
            // A pong, or the first half of a ping: which one, the next
            // byte tells. (A pong needs no answer, so waiting costs
            // nothing.)
            match self.buf.get(2) {
                None | Some(b'\r') => return Ok(None),
                Some(_) => {
                    self.buf.drain(..2);
                    return Ok(Some(Frame::Pong));
                }
            }
        }
        let Some(end) = find(&self.buf, b"\r\n\r\n", MAX_HEADER) else {
            if self.buf.len() >= MAX_HEADER {
                return Err(FrameError::HeaderTooLong);
            }
            return Ok(None);
        };
        let header = &self.buf[..end];
        let length = content_length(header)?;
        let total = end + 4 + length;
        if self.buf.len() < total {
            return Ok(None);
        }
        let message: Vec<u8> = self.buf.drain(..total).collect();
        Ok(Some(Frame::Message(message)))
    }
}

/// Position of `needle` within the first `limit` bytes.
fn find(hay: &[u8], needle: &[u8], limit: usize) -> Option<usize> {
    hay[..hay.len().min(limit)]
        .windows(needle.len())
        .position(|w| w == needle)
}

/// The one `Content-Length` (or compact `l`) of a header section.
fn content_length(header: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    for line in header.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = trim(&line[colon + 1..]);
        let text = String::from_utf8_lossy(value).into_owned();
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadLength(text));
        }
        let n: usize = text
            .parse()
            .map_err(|_| FrameError::BadLength(text.clone()))?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadLength(format!(
                "{} and {n}",
                found.unwrap_or(0)
            )));
        }
        if n > MAX_BODY {
            return Err(FrameError::BodyTooLong(n));
        }
        found = Some(n);
    }
    found.ok_or(FrameError::NoLength)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:acme.sip.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bK1\r\n\
        From: <sip:alice@acme.sip.example>;tag=1\r\n\
        To: <sip:alice@acme.sip.example>\r\n\
        Call-ID: a\r\nCSeq: 1 REGISTER\r\n\
        Content-Length: 0\r\n\r\n";

    fn invite(body: &str) -> String {
        format!(
            "INVITE sip:201@acme SIP/2.0\r\nCall-ID: b\r\nl: {}\r\nContent-Type: application/sdp\r\n\r\n{body}",
            body.len()
        )
    }

    fn frames(f: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next_frame().unwrap()).collect()
    }

    #[test]
    fn messages_come_out_whole_however_the_bytes_arrive() {
        let stream = format!("{REGISTER}\r\n\r\n{}{REGISTER}", invite("v=0\r\n"));
        let want = vec![
            Frame::Message(REGISTER.as_bytes().to_vec()),
            Frame::Ping,
            Frame::Message(invite("v=0\r\n").into_bytes()),
            Frame::Message(REGISTER.as_bytes().to_vec()),
        ];
        // All at once, and byte by byte.
        let mut f = Framer::default();
        f.push(stream.as_bytes());
        assert_eq!(frames(&mut f), want);
        let mut f = Framer::default();
        let mut got = Vec::new();
        for b in stream.as_bytes() {
            f.push(&[*b]);
            got.extend(frames(&mut f));
        }
        assert_eq!(got, want);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_lone_crlf_is_a_pong() {
        let mut f = Framer::default();
        f.push(b"\r\n");
        assert_eq!(frames(&mut f), vec![], "maybe half a ping");
        f.push(REGISTER.as_bytes());
        assert_eq!(
            frames(&mut f),
            vec![Frame::Pong, Frame::Message(REGISTER.as_bytes().to_vec())]
        );
    }

    #[test]
    fn lengths_must_be_there_once_and_bounded() {
        let cases = [
            (
                REGISTER.replace("Content-Length: 0\r\n", ""),
                "sip_malformed",
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: -1"),
                "sip_malformed",
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 0x10"),
                "sip_malformed",
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 99999999999"),
                "sip_malformed",
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 0\r\nl: 5"),
                "sip_malformed",
            ),
            (
                REGISTER.replace(
                    "Content-Length: 0",
                    &format!("Content-Length: {}", MAX_BODY + 1),
                ),
                "sip_too_large",
            ),
            (
                REGISTER.replace(
                    "Call-ID: a",
                    &format!("Call-ID: {}", "a".repeat(MAX_HEADER)),
                ),
                "sip_too_large",
            ),
        ];
        for (stream, code) in cases {
            let mut f = Framer::default();
            f.push(stream.as_bytes());
            let err = f.next_frame().unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        // The same value twice is fine; case and spacing do not matter.
        let mut f = Framer::default();
        f.push(
            REGISTER
                .replace("Content-Length: 0", "content-length:0\r\nL :  0")
                .as_bytes(),
        );
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
        // An endless header without an empty line is cut off at the limit.
        let mut f = Framer::default();
        f.push(&vec![b'a'; MAX_HEADER + 10]);
        assert_eq!(f.next_frame(), Err(FrameError::HeaderTooLong));
    }

    #[test]
    fn mutated_streams_never_panic() {
        let stream = format!(
            "{REGISTER}\r\n\r\n{}",
            invite("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n")
        );
        for m in crate::media::hostile::mutations(stream.as_bytes(), 21, 20_000) {
            let mut f = Framer::default();
            f.push(&m);
            while let Ok(Some(_)) = f.next_frame() {}
        }
    }
}
