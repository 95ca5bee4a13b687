//! A minimal SIP user agent over TLS for black-box tests of the SIP door:
//! it writes requests by hand (so tests can also write broken ones),
//! reads responses with the host's own parser, and answers digest
//! challenges (RFC 7616, SHA-256 or MD5) like a phone. Real phones are
//! `baresip`'s job (`crate::baresip`); this one reaches the corners.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::Digest as _;
use switchboard::sip::frame::{Frame, Framer};
use switchboard::sip::message::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for one message.
const WAIT: Duration = Duration::from_secs(10);

/// A byte stream SIP runs over (TLS or TCP, either side's).
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// SIP over one connection: whole messages out, framed messages in.
pub struct Conn {
    stream: Box<dyn Stream>,
    framer: Framer,
    /// Over UDP instead: the socket and the door's address.
    datagrams: Option<(tokio::net::UdpSocket, SocketAddr)>,
}

impl Conn {
    pub fn new(stream: impl Stream + 'static) -> Conn {
        Conn {
            stream: Box::new(stream),
            framer: Framer::default(),
            datagrams: None,
        }
    }

    /// SIP over UDP from `socket` to `door`, a message a datagram.
    pub fn datagrams(socket: tokio::net::UdpSocket, door: SocketAddr) -> Conn {
        Conn {
            stream: Box::new(tokio::io::empty()),
            framer: Framer::default(),
            datagrams: Some((socket, door)),
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &self.datagrams {
            Some((socket, door)) => {
                socket.send_to(bytes, door).await.unwrap();
            }
            None => self.stream.write_all(bytes).await.unwrap(),
        }
    }

    /// The next message, or `None` if none comes within 10 s or the
    /// connection closes.
    pub async fn recv(&mut self) -> Option<Message> {
        let end = tokio::time::Instant::now() + WAIT;
        let mut buf = [0u8; 8192];
        if let Some((socket, _)) = &self.datagrams {
            let (n, _) = tokio::time::timeout_at(end, socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            return Some(Message::parse(&buf[..n]).expect("the door writes valid SIP"));
        }
        loop {
            while let Ok(Some(f)) = self.framer.next_frame() {
                if let Frame::Message(bytes) = f {
                    return Some(Message::parse(&bytes).expect("the door writes valid SIP"));
                }
            }
            let n = tokio::time::timeout_at(end, self.stream.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.framer.push(&buf[..n]);
        }
    }
}

/// A device's connection to the door.
pub struct Ua {
    conn: Conn,
    /// `TLS`, `TCP` or `UDP` (its Via and Contact).
    proto: &'static str,
    /// Device name and its tenant's SIP domain.
    pub user: String,
    pub domain: String,
    pub password: String,
    /// Our address on the connection (Via, Contact).
    pub local: SocketAddr,
    cseq: u32,
    nc: u32,
    pub call_id: String,
    pub tag: String,
}

/// The value of `name="..."` or `name=token` in a challenge.
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    Some(if let Some(q) = rest.strip_prefix('"') {
        q[..q.find('"')?].to_string()
    } else {
        rest.split([',', ' ']).next()?.to_string()
    })
}

fn hash(algorithm: &str, text: &str) -> String {
    if algorithm == "MD5" {
        hex::encode(md5::Md5::digest(text.as_bytes()))
    } else {
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }
}

/// The `Digest ...` credentials answering `challenge` for `method uri`.
#[allow(clippy::too_many_arguments)]
pub fn digest_answer(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let algorithm = challenge_param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    let realm = challenge_param(challenge, "realm").unwrap_or_default();
    let nonce = challenge_param(challenge, "nonce").unwrap_or_default();
    let cnonce = format!("c{nc:08x}");
    let nc_text = format!("{nc:08x}");
    let ha1 = hash(&algorithm, &format!("{user}:{realm}:{password}"));
    let ha2 = hash(&algorithm, &format!("{method}:{uri}"));
    let response = hash(
        &algorithm,
        &format!("{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}"),
    );
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", qop=auth, nc={nc_text}"
    )
}

/// A SIP door for `runtime` on a free loopback port (the test
/// certificate; loopback media allowed), until the sender is dropped.
pub async fn start_door(
    runtime: &switchboard::Runtime,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_door_with(
        runtime,
        switchboard::sip::SipConfig {
            allow_loopback_media: true,
            ..switchboard::sip::SipConfig::default()
        },
        Default::default(),
    )
    .await
}

/// [`start_door`] with `config` and brute-force settings `throttle`.
pub async fn start_door_with(
    runtime: &switchboard::Runtime,
    config: switchboard::sip::SipConfig,
    throttle: switchboard::identity::throttle::ThrottleConfig,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let ports = start_door_full(runtime, config, throttle, false).await;
    (ports.tls, ports.stop)
}

/// Where a test's door listens.
pub struct DoorPorts {
    /// Devices (TLS).
    pub tls: SocketAddr,
    /// Trunks over UDP and TCP (one port).
    pub trunks: Option<SocketAddr>,
    /// Trunks' providers over TLS.
    pub trunk_tls: Option<SocketAddr>,
    /// Dropped, the door stops.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// The door with its trunks' ports on loopback too.
pub async fn start_door_with_trunks(runtime: &switchboard::Runtime) -> DoorPorts {
    let config = switchboard::sip::SipConfig {
        allow_loopback_media: true,
        ..switchboard::sip::SipConfig::default()
    };
    start_door_full(runtime, config, Default::default(), true).await
}

/// [`start_door_with_trunks`], devices also allowed on the trunks' UDP
/// and TCP port (`[sip] device_udp`).
pub async fn start_door_with_device_udp(runtime: &switchboard::Runtime) -> DoorPorts {
    let config = switchboard::sip::SipConfig {
        allow_loopback_media: true,
        device_udp: true,
        ..switchboard::sip::SipConfig::default()
    };
    start_door_full(runtime, config, Default::default(), true).await
}

async fn start_door_full(
    runtime: &switchboard::Runtime,
    config: switchboard::sip::SipConfig,
    throttle: switchboard::identity::throttle::ThrottleConfig,
    trunks: bool,
) -> DoorPorts {
    let pki = crate::http::test_pki();
    let tls = switchboard::gateway::tls::TlsIdentity::load(&pki.cert_file, &pki.key_file).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The trunks' UDP and TCP on one port, as `[sip] trunk_listen` has it,
    // and their TLS port.
    let (udp, tcp, trunk_tls) = if trunks {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let udp = tokio::net::UdpSocket::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let trunk_tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (Some(udp), Some(tcp), Some(trunk_tls))
    } else {
        (None, None, None)
    };
    let trunks_addr = udp.as_ref().map(|u| u.local_addr().unwrap());
    let trunk_tls_addr = trunk_tls.as_ref().map(|t| t.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(switchboard::sip::run(
        runtime.clone(),
        switchboard::sip::Listeners {
            tls: listener,
            trunk_udp: udp,
            trunk_tcp: tcp,
            trunk_tls,
        },
        switchboard::server::sip_tls(&tls),
        config,
        throttle,
        async move {
            let _ = stopped.await;
        },
    ));
    DoorPorts {
        tls: addr,
        trunks: trunks_addr,
        trunk_tls: trunk_tls_addr,
        stop,
    }
}

impl Ua {
    /// Connects to the door at `addr` as device `user` of `domain`.
    pub async fn connect(addr: SocketAddr, user: &str, domain: &str, password: &str) -> Ua {
        let stream = crate::http::tls_connect(addr).await;
        // Phones send small messages back to back (ACK, then BYE).
        stream.get_ref().0.set_nodelay(true).unwrap();
        let local = stream.get_ref().0.local_addr().unwrap();
        Ua::with_stream(stream, local, user, domain, password)
    }

    /// Connects from source address `source` (another loopback address:
    /// another place, as the throttles see it).
    pub async fn connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Ua {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let stream = crate::http::tls_handshake(addr, tcp).await;
        let local = stream.get_ref().0.local_addr().unwrap();
        Ua::with_stream(stream, local, user, domain, password)
    }

    /// Connects to the door's trunk port `addr` over plain TCP or UDP
    /// (`tcp`), as a device its admins allowed UDP/TCP for.
    pub async fn connect_plain(
        addr: SocketAddr,
        tcp: bool,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Ua {
        let mut ua = if tcp {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let local = stream.local_addr().unwrap();
            Ua::with_conn(Conn::new(stream), local, user, domain, password)
        } else {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let local = socket.local_addr().unwrap();
            Ua::with_conn(Conn::datagrams(socket, addr), local, user, domain, password)
        };
        ua.proto = if tcp { "TCP" } else { "UDP" };
        ua
    }

    fn with_stream(
        stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        local: SocketAddr,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Ua {
        Ua::with_conn(Conn::new(stream), local, user, domain, password)
    }

    fn with_conn(conn: Conn, local: SocketAddr, user: &str, domain: &str, password: &str) -> Ua {
        Ua {
            conn,
            proto: "TLS",
            user: user.into(),
            domain: domain.into(),
            password: password.into(),
            local,
            cseq: 0,
            nc: 0,
            call_id: format!("{}@test", switchboard::support::encoding::random_hex(8)),
            tag: switchboard::support::encoding::random_hex(4),
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.send_raw(bytes).await;
    }

    /// Sends a request or response.
    pub async fn send(&mut self, m: &Message) {
        self.send_raw(&m.to_bytes()).await;
    }

    /// The next message, or `None` if none comes within 10 s or the
    /// connection closes.
    pub async fn recv(&mut self) -> Option<Message> {
        self.conn.recv().await
    }

    /// The next message within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Message> {
        tokio::time::timeout(limit, self.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next final response (skipping 1xx).
    pub async fn final_response(&mut self) -> Option<Message> {
        loop {
            let m = self.recv().await?;
            if m.status().is_none_or(|s| s >= 200) {
                return Some(m);
            }
        }
    }

    /// A request of ours in a fresh transaction, with `extra` headers.
    pub fn request(&mut self, method: &str, uri: &str, extra: &[(&str, String)]) -> Message {
        self.cseq += 1;
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\n\
             From: <sip:{}@{}>;tag={}\r\nTo: <{}>\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
             Contact: <sip:{}@{};transport={}>\r\n",
            self.proto,
            self.local,
            switchboard::support::encoding::random_hex(6),
            self.user,
            self.domain,
            self.tag,
            if method == "REGISTER" {
                format!("sip:{}@{}", self.user, self.domain)
            } else {
                uri.to_string()
            },
            self.call_id,
            self.cseq,
            self.user,
            self.local,
            self.proto.to_ascii_lowercase(),
        );
        with_extra(text, extra)
    }

    /// Answers the challenge in `challenged` (401 or 407; the first,
    /// SHA-256, or the one of `algorithm`) for `method uri`.
    pub fn answer(
        &mut self,
        challenged: &Message,
        algorithm: &str,
        method: &str,
        uri: &str,
    ) -> (String, String) {
        let (ask, give) = if challenged.status() == Some(407) {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let challenge = challenged
            .all(ask)
            .find(|c| challenge_param(c, "algorithm").as_deref() == Some(algorithm))
            .expect("a challenge for the algorithm")
            .to_string();
        self.nc += 1;
        (
            give.to_string(),
            digest_answer(&challenge, &self.user, &self.password, method, uri, self.nc),
        )
    }

    /// Registers (challenge, then answer with `algorithm`); the final
    /// response.
    pub async fn register(&mut self, algorithm: &str, expires: u32) -> Message {
        let uri = format!("sip:{}", self.domain);
        let first = self.request("REGISTER", &uri, &[("Expires", expires.to_string())]);
        self.send(&first).await;
        let challenged = self.final_response().await.expect("a challenge");
        if challenged.status() != Some(401) {
            return challenged;
        }
        let (h, v) = self.answer(&challenged, algorithm, "REGISTER", &uri);
        let second = self.request(
            "REGISTER",
            &uri,
            &[("Expires", expires.to_string()), (&h, v)],
        );
        self.send(&second).await;
        self.final_response().await.expect("an answer")
    }
}

/// Asserts that `m` refuses an offer for carrying SDES keys in clear.
pub fn assert_keys_in_clear_refused(m: &Message) {
    assert_eq!(m.status(), Some(488), "{m:?}");
    assert!(
        m.header("Warning")
            .is_some_and(|w| w.contains("sdp_keys_in_clear")),
        "{m:?}"
    );
}

/// The headers of an INVITE carrying the SDP `sdp`.
pub fn sdp_headers(sdp: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/sdp".to_string()),
        ("body", sdp.to_string()),
    ]
}

/// An SDP offer receiving at `port`, SRTP (SDES) or plain.
pub fn offer(port: u16, srtp: bool) -> String {
    let (proto, crypto) = if srtp {
        (
            "RTP/SAVP",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        )
    } else {
        ("RTP/AVP", "")
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
    )
}

/// Sends an INVITE for `number` with `sdp`, answers the proxy challenge,
/// and returns the authenticated INVITE and the first response after 100.
pub async fn invite(ua: &mut Ua, number: &str, sdp: &str) -> (Message, Message) {
    let (invite, response, _) = invite_timed(ua, number, sdp).await;
    (invite, response)
}

/// [`invite`], also timing the authenticated INVITE until its final
/// answer.
pub async fn invite_timed(
    ua: &mut Ua,
    number: &str,
    sdp: &str,
) -> (Message, Message, std::time::Duration) {
    let uri = format!("sip:{number}@{}", ua.domain);
    let body = sdp_headers(sdp);
    let first = ua.request("INVITE", &uri, &body);
    ua.send(&first).await;
    let challenged = ua.final_response().await.expect("a challenge");
    assert_eq!(challenged.status(), Some(407), "{challenged:?}");
    let (h, v) = ua.answer(&challenged, "SHA-256", "INVITE", &uri);
    let mut extra = body.clone();
    extra.insert(0, (h.as_str(), v));
    let second = ua.request("INVITE", &uri, &extra);
    let t0 = std::time::Instant::now();
    ua.send(&second).await;
    let response = ua.final_response().await.expect("an answer");
    (second, response, t0.elapsed())
}

/// The ACK for a 2xx (a new transaction, RFC 3261 §13.2.2.4).
pub fn ack(invite: &Message, ok: &Message) -> Message {
    let mut m = invite.clone();
    m.start = switchboard::sip::message::Start::Request {
        method: "ACK".into(),
        uri: invite.uri().unwrap().to_string(),
    };
    m.headers.retain(|(n, _)| {
        !matches!(
            n.as_str(),
            "To" | "CSeq" | "Content-Type" | "Proxy-Authorization"
        )
    });
    m.push("To", ok.header("To").unwrap());
    m.push("CSeq", format!("{} ACK", invite.cseq().unwrap().0));
    m.body.clear();
    m
}

/// An in-dialog request (`BYE`) from the device.
pub fn in_dialog(ua: &mut Ua, method: &str, invite: &Message, ok: &Message) -> Message {
    let mut m = ua.request(method, invite.uri().unwrap(), &[]);
    m.headers.retain(|(n, _)| n != "To");
    m.push("To", ok.header("To").unwrap());
    m
}

/// A trunk's provider over UDP: sends requests by hand and reads what
/// the door sends, one datagram a message.
pub struct Provider {
    socket: tokio::net::UdpSocket,
    /// The door's UDP address.
    pub door: SocketAddr,
    pub local: SocketAddr,
    cseq: u32,
    pub call_id: String,
    pub tag: String,
}

impl Provider {
    /// A provider on `ip` (a loopback address), talking to `door`.
    pub async fn bind(ip: &str, door: SocketAddr) -> Provider {
        let socket = tokio::net::UdpSocket::bind(format!("{ip}:0"))
            .await
            .unwrap();
        let local = socket.local_addr().unwrap();
        Provider {
            socket,
            door,
            local,
            cseq: 0,
            call_id: fresh_call().0,
            tag: switchboard::support::encoding::random_hex(4),
        }
    }

    /// A request of ours from `+{from}` in a fresh transaction (new
    /// branch, next CSeq), with `extra` headers (`body` for the body).
    pub fn request(
        &mut self,
        method: &str,
        uri: &str,
        from: &str,
        extra: &[(&str, String)],
    ) -> Message {
        self.cseq += 1;
        provider_request(
            ("UDP", self.local),
            (self.cseq, &self.call_id, &self.tag),
            method,
            uri,
            from,
            extra,
        )
    }

    /// An INVITE for `uri` with a plain RTP offer receiving at `port`.
    pub fn invite(&mut self, uri: &str, from: &str, port: u16) -> Message {
        self.request("INVITE", uri, from, &offer_headers(port, false))
    }

    /// A new call: a fresh Call-ID and tag.
    pub fn new_call(&mut self) {
        (self.call_id, self.tag) = fresh_call();
    }

    pub async fn send(&self, m: &Message) {
        self.send_raw(&m.to_bytes()).await;
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.door).await.unwrap();
    }

    /// The next message within `limit`, with where it came from.
    pub async fn recv_from_within(&self, limit: Duration) -> Option<(Message, SocketAddr)> {
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(limit, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some((
            Message::parse(&buf[..n]).expect("the door writes valid SIP"),
            from,
        ))
    }

    /// The next message within `limit`.
    pub async fn recv_within(&self, limit: Duration) -> Option<Message> {
        self.recv_from_within(limit).await.map(|(m, _)| m)
    }

    /// The next final response within 10 s (skipping 1xx).
    pub async fn final_response(&self) -> Option<Message> {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv_within(left).await?;
            if m.status().is_some_and(|s| s >= 200) {
                return Some(m);
            }
        }
    }

    /// The next request within 10 s (skipping responses).
    pub async fn next_request(&self) -> Option<Message> {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv_within(left).await?;
            if m.method().is_some() {
                return Some(m);
            }
        }
    }
}

/// The headers of an SDP offer receiving at `port` (see [`offer`]).
fn offer_headers(port: u16, srtp: bool) -> [(&'static str, String); 2] {
    [
        ("Content-Type", "application/sdp".into()),
        ("body", offer(port, srtp)),
    ]
}

/// A provider's fresh Call-ID and tag.
fn fresh_call() -> (String, String) {
    (
        format!("{}@provider", switchboard::support::encoding::random_hex(8)),
        switchboard::support::encoding::random_hex(4),
    )
}

/// A provider's request over `proto` from `local`, in call
/// `(cseq, call_id, tag)`, from `{from}`, with `extra` headers (`body`
/// for the body).
fn provider_request(
    (proto, local): (&str, SocketAddr),
    (cseq, call_id, tag): (u32, &str, &str),
    method: &str,
    uri: &str,
    from: &str,
    extra: &[(&str, String)],
) -> Message {
    let transport = match proto {
        "UDP" => String::new(),
        p => format!(";transport={}", p.to_ascii_lowercase()),
    };
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{proto} {local};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}@{}>;tag={tag}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:gw@{local}{transport}>\r\n",
        switchboard::support::encoding::random_hex(6),
        local.ip(),
    );
    with_extra(text, extra)
}

/// A request's start and headers `text` finished with `extra` headers
/// (`body` for the body) and Content-Length, parsed.
fn with_extra(mut text: String, extra: &[(&str, String)]) -> Message {
    let mut body = String::new();
    for (n, v) in extra {
        if *n == "body" {
            body = v.clone();
        } else {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    Message::parse(text.as_bytes()).expect("test requests parse")
}

/// A trunk's provider over a connection (TCP or TLS): the door's link to
/// its proxy, or its own connection to the door.
pub struct ProviderConn {
    conn: Conn,
    pub local: SocketAddr,
    /// The door's end of the connection.
    pub peer: SocketAddr,
    /// `TLS` or `TCP` (its Via).
    proto: &'static str,
    cseq: u32,
    pub call_id: String,
    pub tag: String,
}

impl ProviderConn {
    fn new(
        stream: impl Stream + 'static,
        (local, peer): (SocketAddr, SocketAddr),
        proto: &'static str,
    ) -> ProviderConn {
        ProviderConn {
            conn: Conn::new(stream),
            local,
            peer,
            proto,
            cseq: 0,
            call_id: fresh_call().0,
            tag: switchboard::support::encoding::random_hex(4),
        }
    }

    /// Connects to the door at `door` from `source` (a loopback address a
    /// trunk allows), over TLS (trusting the test CA) or plain TCP.
    pub async fn connect(door: SocketAddr, source: std::net::IpAddr, tls: bool) -> ProviderConn {
        ProviderConn::try_connect(door, source, tls)
            .await
            .expect("a connection")
    }

    /// [`ProviderConn::connect`]; `None` if the TLS handshake fails (the
    /// door closed the connection).
    pub async fn try_connect(
        door: SocketAddr,
        source: std::net::IpAddr,
        tls: bool,
    ) -> Option<ProviderConn> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = socket.connect(door).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let ends = (tcp.local_addr().unwrap(), door);
        if tls {
            let stream = crate::http::try_tls_handshake(door, tcp).await?;
            Some(ProviderConn::new(stream, ends, "TLS"))
        } else {
            Some(ProviderConn::new(tcp, ends, "TCP"))
        }
    }

    /// A request of ours (see [`Provider::request`]).
    pub fn request(
        &mut self,
        method: &str,
        uri: &str,
        from: &str,
        extra: &[(&str, String)],
    ) -> Message {
        self.cseq += 1;
        provider_request(
            (self.proto, self.local),
            (self.cseq, &self.call_id, &self.tag),
            method,
            uri,
            from,
            extra,
        )
    }

    /// An INVITE for `uri` with an offer receiving at `port` (SRTP with
    /// [`offer`]'s key, or plain RTP).
    pub fn invite(&mut self, uri: &str, from: &str, port: u16, srtp: bool) -> Message {
        self.request("INVITE", uri, from, &offer_headers(port, srtp))
    }

    /// A new call: a fresh Call-ID and tag.
    pub fn new_call(&mut self) {
        (self.call_id, self.tag) = fresh_call();
    }

    pub async fn send(&mut self, m: &Message) {
        self.conn.send_raw(&m.to_bytes()).await;
    }

    /// The next message within 10 s (`None`: none, or closed).
    pub async fn recv(&mut self) -> Option<Message> {
        self.conn.recv().await
    }

    /// The next final response within 10 s (skipping 1xx and requests).
    pub async fn final_response(&mut self) -> Option<Message> {
        loop {
            let m = self.recv().await?;
            if m.status().is_some_and(|s| s >= 200) {
                return Some(m);
            }
        }
    }

    /// The next request within 10 s (skipping responses).
    pub async fn next_request(&mut self) -> Option<Message> {
        loop {
            let m = self.recv().await?;
            if m.method().is_some() {
                return Some(m);
            }
        }
    }
}

/// A provider's proxy the door connects to: TLS with a certificate for a
/// name, from a CA of its own, or plain TCP.
pub struct ProxyListener {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub addr: SocketAddr,
    /// The CA (PEM) that issued the proxy's certificate: the trunk's
    /// `tls_ca`.
    pub ca_pem: String,
}

impl ProxyListener {
    /// A TLS proxy on `ip` whose certificate names `name`.
    pub async fn tls(ip: &str, name: &str) -> ProxyListener {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Provider test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let mut p = ProxyListener::tcp(ip).await;
        p.tls = Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)));
        p.ca_pem = ca.pem();
        p
    }

    /// A plain TCP proxy on `ip`.
    pub async fn tcp(ip: &str) -> ProxyListener {
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        ProxyListener {
            listener,
            tls: None,
            addr,
            ca_pem: String::new(),
        }
    }

    /// The door's next connection within `limit` (its TLS handshake
    /// done); `None` if none comes or the handshake fails.
    pub async fn accept_within(&self, limit: Duration) -> Option<ProviderConn> {
        let (tcp, peer) = tokio::time::timeout(limit, self.listener.accept())
            .await
            .ok()?
            .ok()?;
        tcp.set_nodelay(true).unwrap();
        let ends = (tcp.local_addr().unwrap(), peer);
        match &self.tls {
            Some(acceptor) => {
                let tls = tokio::time::timeout(limit, acceptor.accept(tcp))
                    .await
                    .ok()?
                    .ok()?;
                Some(ProviderConn::new(tls, ends, "TLS"))
            }
            None => Some(ProviderConn::new(tcp, ends, "TCP")),
        }
    }
}
