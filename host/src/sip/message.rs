//! SIP messages (RFC 3261 §7, §20): parsing a framed message into a start
//! line, headers and a body, reading the headers the door needs, and
//! writing requests and responses.
//!
//! Parsing is strict where a lenient reading would let a message mean two
//! things: the header section must be UTF-8, every line `name: value`,
//! the one-per-message headers (Call-ID, From, To, CSeq) present exactly
//! once, at least one Via, a CSeq whose method is the request's, and at
//! most [`MAX_HEADERS`] header lines, From and To that read as SIP
//! name-addrs. Folded lines (obsolete) and compact names are accepted.
//! Nothing here panics on input (fuzzed in `fuzz/`).

use std::fmt::Write as _;

/// Most header lines in one message.
pub const MAX_HEADERS: usize = 96;

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a SIP message, or a header that cannot be read.
    #[error("malformed SIP message: {0}")]
    Malformed(String),
    /// A required header is missing or given twice.
    #[error("SIP message needs exactly one {0}")]
    Header(&'static str),
    /// Too many header lines.
    #[error("SIP message with over {MAX_HEADERS} header lines")]
    TooManyHeaders,
}

impl MessageError {
    /// A stable code for counters and logs.
    pub fn code(&self) -> &'static str {
        "sip_malformed"
    }
}

fn malformed(why: impl Into<String>) -> MessageError {
    MessageError::Malformed(why.into())
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: Start,
    /// In order, names in their canonical form (compact names expanded).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Full names of the compact forms (RFC 3261 §7.3.3, RFC 3515, 4028).
fn canonical(name: &str) -> String {
    let full = match name.to_ascii_lowercase().as_str() {
        "v" | "via" => "Via",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "e" | "content-encoding" => "Content-Encoding",
        "k" | "supported" => "Supported",
        "s" | "subject" => "Subject",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "cseq" => "CSeq",
        "www-authenticate" => "WWW-Authenticate",
        "authorization" => "Authorization",
        "proxy-authorization" => "Proxy-Authorization",
        "max-forwards" => "Max-Forwards",
        "expires" => "Expires",
        "record-route" => "Record-Route",
        "route" => "Route",
        "require" => "Require",
        "user-agent" => "User-Agent",
        _ => return name.to_string(),
    };
    full.to_string()
}

/// Headers whose values may be comma-separated lists that we split.
fn is_list(name: &str) -> bool {
    matches!(name, "Via" | "Contact" | "Route" | "Record-Route")
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

impl Message {
    /// Parses one framed message.
    pub fn parse(bytes: &[u8]) -> Result<Message, MessageError> {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| malformed("no end of the header section"))?;
        let head = std::str::from_utf8(&bytes[..end])
            .map_err(|_| malformed("the header section is not UTF-8"))?;
        let body = bytes[end + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let start = parse_start(first)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // An obsolete folded continuation.
                let Some(last) = headers.last_mut() else {
                    return Err(malformed("a continuation line before any header"));
                };
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| malformed("a header line without ':'"))?;
            let name = name.trim_end();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(malformed("a header name with spaces or controls"));
            }
            // Values are echoed into our own messages and logs: no
            // control characters (a bare CR or LF would split a header).
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(malformed("a header value with control characters"));
            }
            if headers.len() >= MAX_HEADERS {
                return Err(MessageError::TooManyHeaders);
            }
            headers.push((canonical(name), value.trim().to_string()));
        }
        let m = Message {
            start,
            headers,
            body,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), MessageError> {
        for name in ["Call-ID", "From", "To", "CSeq"] {
            if self.all(name).count() != 1 {
                return Err(MessageError::Header(match name {
                    "Call-ID" => "Call-ID",
                    "From" => "From",
                    "To" => "To",
                    _ => "CSeq",
                }));
            }
        }
        if self.via().is_empty() {
            return Err(MessageError::Header("Via"));
        }
        self.from()?;
        self.to()?;
        let (_, cseq_method) = self.cseq()?;
        if let Start::Request { method, .. } = &self.start
            && *method != cseq_method
        {
            return Err(malformed("the CSeq method is not the request's"));
        }
        if let Some(l) = self.header("Content-Length")
            && l.trim().parse::<usize>().ok() != Some(self.body.len())
        {
            return Err(malformed("Content-Length is not the body's length"));
        }
        Ok(())
    }

    /// The request's method, `None` for a response.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }

    /// The request URI, `None` for a response.
    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            Start::Request { uri, .. } => Some(uri),
            Start::Response { .. } => None,
        }
    }

    /// The response's status, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            Start::Response { code, .. } => Some(*code),
            Start::Request { .. } => None,
        }
    }

    /// The first value of header `name` (canonical name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every line of header `name`, in order.
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    /// The Via values, top first, lists split.
    pub fn via(&self) -> Vec<&str> {
        self.all("Via").flat_map(split_list).collect()
    }

    /// Every value of a list header, lists split.
    pub fn list(&self, name: &str) -> Vec<&str> {
        debug_assert!(is_list(name));
        self.all(name).flat_map(split_list).collect()
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<(u32, String), MessageError> {
        let v = self.header("CSeq").ok_or(MessageError::Header("CSeq"))?;
        let mut parts = v.split_whitespace();
        let n = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| malformed("CSeq number"))?;
        let method = parts
            .next()
            .filter(|m| is_token(m))
            .ok_or_else(|| malformed("CSeq method"))?;
        if parts.next().is_some() {
            return Err(malformed("CSeq has extra words"));
        }
        Ok((n, method.to_string()))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or_default()
    }

    /// The From header, parsed.
    pub fn from(&self) -> Result<NameAddr, MessageError> {
        NameAddr::parse(self.header("From").unwrap_or_default())
    }

    /// The To header, parsed.
    pub fn to(&self) -> Result<NameAddr, MessageError> {
        NameAddr::parse(self.header("To").unwrap_or_default())
    }

    /// The top Via's branch parameter.
    pub fn branch(&self) -> Option<String> {
        let top = *self.via().first()?;
        param(top.split_once(';')?.1, "branch")
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// A response to this request: its Via, From, To, Call-ID and CSeq
    /// (RFC 3261 §8.2.6.2); `to_tag` is added to To where it has none.
    pub fn response(&self, code: u16, reason: &str, to_tag: Option<&str>) -> Message {
        let mut headers = Vec::new();
        for (n, v) in &self.headers {
            match n.as_str() {
                "Via" | "From" | "Call-ID" | "CSeq" => headers.push((n.clone(), v.clone())),
                "To" => {
                    let mut v = v.clone();
                    if let Some(tag) = to_tag
                        && NameAddr::parse(&v).is_ok_and(|to| to.tag().is_none())
                    {
                        let _ = write!(v, ";tag={tag}");
                    }
                    headers.push((n.clone(), v));
                }
                _ => {}
            }
        }
        Message {
            start: Start::Response {
                code,
                reason: reason.to_string(),
            },
            headers,
            body: Vec::new(),
        }
    }

    /// The message on the wire, with its Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = match &self.start {
            Start::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
            Start::Response { code, reason } => format!("SIP/2.0 {code} {reason}\r\n"),
        };
        for (n, v) in &self.headers {
            if n != "Content-Length" {
                let _ = write!(s, "{n}: {v}\r\n");
            }
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn parse_start(line: &str) -> Result<Start, MessageError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| malformed("status code"))?;
        return Ok(Start::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("request line"));
    };
    if !is_token(method) || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("method"));
    }
    Uri::parse(uri)?;
    Ok(Start::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The value of parameter `name` in `;`-separated `params` (case-blind
/// name), `Some("")` for a flag.
pub fn param(params: &str, name: &str) -> Option<String> {
    params.split(';').find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A SIP or SIPS URI (RFC 3261 §19.1), enough of it for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub secure: bool,
    /// The user part, unescaped no further than it came.
    pub user: Option<String>,
    /// Lower-cased host (IPv6 in brackets).
    pub host: String,
    pub port: Option<u16>,
    /// `;` parameters as they came, without the leading `;`.
    pub params: String,
}

impl Uri {
    /// Parses `sip:` and `sips:` URIs; others are refused.
    pub fn parse(text: &str) -> Result<Uri, MessageError> {
        let (secure, rest) = if let Some(r) = strip_prefix_ci(text, "sips:") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(text, "sip:") {
            (false, r)
        } else {
            return Err(malformed("a URI that is not sip: or sips:"));
        };
        let rest = rest.split('?').next().unwrap_or_default();
        let (addr, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (user, hostport) = match addr.rsplit_once('@') {
            Some((u, h)) => {
                let u = u.split(':').next().unwrap_or_default();
                if u.is_empty() {
                    return Err(malformed("an empty user part"));
                }
                (Some(u.to_string()), h)
            }
            None => (None, addr),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| malformed("an IPv6 host without ']'"))?;
            (format!("[{h}]"), after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| malformed("URI port"))?),
            None => None,
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
        if !host_ok {
            return Err(malformed("URI host"));
        }
        Ok(Uri {
            secure,
            user,
            host: host.to_ascii_lowercase(),
            port,
            params: params.to_string(),
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // Compared as bytes: the cut may fall inside a character of `s`.
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    /// The URI as written.
    pub uri_text: String,
    pub uri: Uri,
    /// Header parameters (after the URI), without the leading `;`.
    pub params: String,
}

impl NameAddr {
    pub fn parse(text: &str) -> Result<NameAddr, MessageError> {
        let text = text.trim();
        let (display, uri_text, params) = if let Some(open) = text.find('<') {
            let close = text[open..]
                .find('>')
                .map(|c| open + c)
                .ok_or_else(|| malformed("'<' without '>'"))?;
            let display = text[..open].trim().trim_matches('"').trim();
            (
                (!display.is_empty()).then(|| display.to_string()),
                &text[open + 1..close],
                text[close + 1..].trim().trim_start_matches(';'),
            )
        } else {
            // Without brackets, `;` starts the header's parameters.
            let (u, p) = text.split_once(';').unwrap_or((text, ""));
            (None, u, p)
        };
        Ok(NameAddr {
            display,
            uri: Uri::parse(uri_text)?,
            uri_text: uri_text.to_string(),
            params: params.to_string(),
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<String> {
        param(&self.params, "tag").filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:acme.sip.test SIP/2.0\r\n\
        v: SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bK1;rport, SIP/2.0/TLS 10.0.0.9;branch=z9hG4bKx\r\n\
        Max-Forwards: 70\r\n\
        From: \"Alice, Desk\" <sip:alice@acme.sip.test>;tag=1a\r\n\
        t: <sip:alice@acme.sip.test>\r\n\
        i: a@b\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@10.0.0.2:5061;transport=tls>;expires=600\r\n\
        l: 0\r\n\r\n";

    #[test]
    fn a_request_reads_and_answers() {
        let m = Message::parse(REGISTER.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.via().len(), 2);
        assert_eq!(m.branch().as_deref(), Some("z9hG4bK1"));
        assert_eq!(m.cseq().unwrap(), (1, "REGISTER".into()));
        let from = m.from().unwrap();
        assert_eq!(from.display.as_deref(), Some("Alice, Desk"));
        assert_eq!(from.tag().as_deref(), Some("1a"));
        assert_eq!(from.uri.user.as_deref(), Some("alice"));
        assert_eq!(m.to().unwrap().tag(), None);
        let c = NameAddr::parse(m.header("Contact").unwrap()).unwrap();
        assert_eq!(param(&c.params, "expires").as_deref(), Some("600"));
        assert_eq!(c.uri.port, Some(5061));
        let r = m.response(200, "OK", Some("xyz"));
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(text.contains("To: <sip:alice@acme.sip.test>;tag=xyz\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let back = Message::parse(&r.to_bytes()).unwrap();
        assert_eq!(back.status(), Some(200));
        assert_eq!(back.via().len(), 2);
    }

    #[test]
    fn ambiguous_or_broken_messages_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (REGISTER.replace("i: a@b\r\n", ""), "no Call-ID"),
            (
                REGISTER.replace("i: a@b\r\n", "i: a\r\ni: b\r\n"),
                "two Call-IDs",
            ),
            (
                REGISTER.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE"),
                "CSeq method",
            ),
            (
                REGISTER.replace("CSeq: 1 REGISTER", "CSeq: x REGISTER"),
                "CSeq number",
            ),
            (REGISTER.replace("v: SIP", "Via SIP"), "no colon"),
            (REGISTER.replace("l: 0", "l: 5"), "length"),
            (REGISTER.replace("SIP/2.0\r\n", "SIP/3.0\r\n"), "version"),
            (
                REGISTER.replace("sip:acme.sip.test SIP", "http://x SIP"),
                "scheme",
            ),
            (REGISTER.replace("REGISTER sip", "reg ister sip"), "method"),
            (REGISTER.replace("alice@acme", "alice@ac me"), "host"),
            ("\u{0}\r\n\r\n".to_string(), "garbage"),
            (REGISTER.replace("i: a@b", "i: a\rb"), "bare CR"),
            (
                REGISTER.replace("i: a@b", "i: a\u{7}b"),
                "control character",
            ),
            (
                REGISTER.replace("REGISTER sip:acme", "REGISTER sip€:acme"),
                "cut inside a character",
            ),
        ];
        for (text, why) in cases {
            assert!(Message::parse(text.as_bytes()).is_err(), "{why}");
        }
        let mut many = REGISTER.replace("l: 0\r\n\r\n", "");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("l: 0\r\n\r\n");
        assert_eq!(
            Message::parse(many.as_bytes()),
            Err(MessageError::TooManyHeaders)
        );
    }

    #[test]
    fn uris_and_lists() {
        let u = Uri::parse("sips:100@Acme.SIP.test:5061;transport=tls?subject=x").unwrap();
        assert!(u.secure);
        assert_eq!(u.host, "acme.sip.test");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params, "transport=tls");
        let v6 = Uri::parse("sip:[::1]:5070").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", Some(5070)));
        assert!(Uri::parse("sip:@host").is_err());
        assert!(Uri::parse("sip:a@host:99999").is_err());
        assert_eq!(
            split_list("<sip:a@b>;q=1, \"x,y\" <sip:c@d>"),
            vec!["<sip:a@b>;q=1", "\"x,y\" <sip:c@d>"]
        );
    }
}
