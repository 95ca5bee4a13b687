//! A real phone for the black-box telephony tests: **baresip 1.0.0** (Debian
//! bookworm `baresip-core`), run headless as a child process and driven
//! over its `ctrl_tcp` interface (netstring-framed JSON on loopback).
//!
//! Every fact below was observed on the real 1.0.0 binary (against a probe
//! registrar and a second baresip), not taken from upstream docs, which
//! describe later versions.
//!
//! # How a UA is run
//!
//! - `baresip -f <tempdir>` with stdin at `/dev/null` (no TTY needed, stdin
//!   is never read: no `stdio`/`cons` UI module is loaded), stdout and
//!   stderr into `<tempdir>/baresip-N.log`. Never a pipe: nobody would
//!   drain it. Never `-d`: it forks, and we would lose the PID. `-t 900`
//!   makes it quit by itself if our test binary dies without killing it;
//!   `SB_BARESIP_TRACE=1` adds `-s` (SIP messages into the log).
//! - The `config` loads only `g711`, `aufile` (microphone), `sndfile`
//!   (dumps), `srtp` (SDES), `account`, `menu` (the commands) and
//!   `ctrl_tcp`. No audio player module at all: 1.0.0 then skips the player
//!   quietly, and received audio still runs through the `sndfile` filter.
//! - `sip_listen 127.0.0.1:0` (UDP, TCP and TLS each get a free port; with
//!   a fixed port P, TLS would take P+1), `net_interface 127.0.0.1` (else
//!   the SDP `c=` is the host's default-route address), its own
//!   `rtp_ports` block (RTP sockets bind `0.0.0.0`, RTCP on port+1, no
//!   rtcp-mux).
//! - The account is **not** in the `accounts` file (that one is empty):
//!   it is added with `uanew` once we are connected, because ctrl_tcp sends
//!   events only to a connected client and anything earlier is lost
//!   (`REGISTER_FAIL` "Connection refused" comes within milliseconds).
//!
//! # Quirks of 1.0.0 a test has to know
//!
//! - **TLS is not verified at all.** libre 1.1.0 never sets
//!   `SSL_VERIFY_PEER` on SIP client connections, `sip_verify_server` does
//!   not exist in 1.0.0, and a self-signed certificate for another name is
//!   accepted. `sip_cafile` is only loaded, yet an unreadable file aborts
//!   start-up (exit 22), so [`Baresip::start`] checks it first. No SNI is
//!   sent.
//! - The REGISTER Contact is `<sip:USER-0x55…@127.0.0.1:LISTENPORT;transport=tls>`
//!   (a pointer appended to the user part), but the Contact of its INVITE
//!   answers carries the *ephemeral source port* of the TLS connection:
//!   the server must send in-dialog requests down the existing connection.
//!   One connection carries REGISTER and every INVITE. `Supported:` is
//!   sent empty.
//! - Digest: the user is the AOR's user part. A server that re-challenges a
//!   wrong password with a fresh nonce gets **16 REGISTERs in one burst**
//!   (libre's loop detector), then `REGISTER_FAIL` "401 Unauthorized"; a
//!   403 gives one REGISTER and "403 Forbidden". The next try is 30–60 s
//!   later. 407 on INVITE is answered with `Proxy-Authorization`.
//! - **`aufile` ends the call when its WAV runs out** (`AUDIO_ERROR`
//!   "0,end of file", then `CALL_CLOSED` "end of file" and a BYE). It
//!   reads only 8 kHz mono 16-bit PCM WAV (no µ-law WAV) and re-reads the
//!   file from the start for every call. So the source is copied into the
//!   temp dir with [`SILENCE_PAD`] of silence appended (or is just that
//!   silence): calls last at most that long.
//! - There is no file *player* in 1.0.0. What the UA received, decoded to
//!   16-bit PCM 8 kHz mono, is dumped by `sndfile` as
//!   `dump-YYYY-MM-DD-HH-MM-SS-dec.wav` (what it sent: `…-enc.wav`) in
//!   [`Baresip::received_audio_dir`]; the name is local time to the second,
//!   so two calls within one second overwrite each other. The WAV sizes are
//!   written at close; after SIGKILL they read 0, which [`read_wav`]
//!   treats as "up to the end of the file".
//! - `sndcode` (DTMF) exists only while a call is up ("command not found
//!   (sndcode)" otherwise). DTMF is RFC 4733 only (telephone-event/8000,
//!   payload 101; no SIP INFO in 1.0.0), about 240 ms per key. The far end
//!   reports `CALL_DTMF_START` (param = the key) and `CALL_DTMF_END` (no
//!   param).
//! - A non-string `token` makes baresip segfault: tokens here are strings.
//! - One ctrl_tcp client at a time: a new connection silently replaces the
//!   old one. If `ctrl_tcp_listen` cannot bind, baresip runs on without it
//!   (one log line), and connecting would reach whoever owns the port,
//!   perhaps another test's UA. So we wait for "baresip is ready." in the
//!   log, check for "ctrl_tcp: failed to listen", and retry on a new port.
//! - With `answermode=auto` (always set here) there is no `CALL_INCOMING`
//!   event. `CALL_CLOSED`'s param: "Connection reset by peer" = the far end
//!   sent BYE, "Connection reset by user" = our `hangup`, "486 Busy Here"
//!   and the like = the INVITE failed, "end of file" = aufile ran out.
//!   `quit` tears calls down without `CALL_CLOSED`.
//! - `"event"` is JSON `true` (the module's own doc says `"true"`).
//! - The SDP offer: `RTP/SAVP 0 101`, one `a=crypto:1
//!   AES_CM_128_HMAC_SHA1_80`, `ptime:20`, `rtcp-rsize`.
//! - G.711: what the far end decodes matches the sent PCM after µ-law
//!   quantisation, except that a sent 0 decodes as 2.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The script that installs baresip (and the other SIP peers).
pub const INSTALL_SCRIPT: &str = "tests/tools/install-peers.sh";

/// The binary, looked up on `PATH`.
const BARESIP: &str = "baresip";

/// Where Debian's `baresip-core` puts its modules.
const MODULE_DIR: &str = "/usr/lib/baresip/modules";

/// The modules the generated `config` loads.
const MODULES: &[&str] = &[
    "g711.so",
    "aufile.so",
    "sndfile.so",
    "srtp.so",
    "account.so",
    "menu.so",
    "ctrl_tcp.so",
    "mwi.so",
];

/// Silence appended to the microphone WAV, because aufile hangs up when
/// the file ends.
pub const SILENCE_PAD: Duration = Duration::from_secs(120);

/// The only WAV format aufile reads when the call uses PCMU.
const RATE: u32 = 8000;

/// From spawn to "baresip is ready." (about 50 ms when idle).
const READY_WAIT: Duration = Duration::from_secs(15);

/// A command's response is immediate; this bound only catches a hung UA.
const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// `baresip -t`: it quits by itself after this long, so a UA outlives a
/// killed test binary (whose `kill_on_drop` never ran) by this much at most.
const BACKSTOP: Duration = Duration::from_secs(900);

/// `quit` then waiting for the exit.
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// Tries at a ctrl_tcp port that nobody else grabbed meanwhile.
const START_ATTEMPTS: u32 = 3;

/// RTP ports per UA: up to 9 RTP/RTCP pairs, so 9 calls at once.
const RTP_BLOCK: u16 = 20;
/// Above the door's media ports (20000-29999 by default), which it
/// refuses as a far end's address on its own host.
const RTP_LOW: u16 = 30000;
const RTP_HIGH: u16 = 60000;

/// The device account a UA registers.
#[derive(Clone, Debug)]
pub struct Account {
    /// `sip:user@domain`; the user part is also the digest user name.
    pub aor: String,
    /// Digest password: no whitespace, `;`, `,`, `"`, `<` or `>` (baresip
    /// cuts account parameters there).
    pub password: String,
    /// The server's SIP-over-TLS address: the outbound proxy.
    pub outbound: SocketAddr,
    /// `mediaenc=srtp-mand` (SDES, RTP/SAVP); false offers plain RTP/AVP.
    pub srtp: bool,
}

impl Account {
    /// The `uanew` parameter: the line an `accounts` file would hold.
    pub fn line(&self) -> Result<String> {
        let aor = self.aor.as_str();
        ensure!(
            aor.starts_with("sip:") && aor.contains('@'),
            "AOR {aor:?} is not sip:user@domain"
        );
        ensure!(
            !aor.chars()
                .any(|c| c.is_whitespace() || "<>;\",".contains(c)),
            "AOR {aor:?} holds a character baresip's account parser cuts at"
        );
        let pw = self.password.as_str();
        ensure!(!pw.is_empty(), "empty password");
        ensure!(
            !pw.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>;\",".contains(c)),
            "password holds a character baresip's account parser cuts at"
        );
        let mut line = format!(
            "<{aor}>;auth_pass={pw};outbound=\"sip:{};transport=tls\";regint=60;\
             answermode=auto;audio_codecs=pcmu",
            self.outbound,
        );
        if self.srtp {
            line.push_str(";mediaenc=srtp-mand");
        }
        Ok(line)
    }
}

/// One running baresip with its control connection.
///
/// Dropping it kills the process (SIGKILL) and removes its directory, the
/// received audio included: read that first.
pub struct Baresip {
    /// Declared first, so it is dropped (killed) before the directory goes.
    child: Child,
    ctrl: TcpStream,
    /// Bytes read from ctrl_tcp and not yet framed.
    inbox: Vec<u8>,
    /// Every event received, in order.
    events: Vec<Value>,
    /// Which of `events` a `wait_event` has already returned.
    taken: Vec<bool>,
    next_token: u64,
    aor: String,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Baresip {
    /// Starts a UA with `account`, trusting the PEM CA/cert at `ca_file`,
    /// sending `source_wav` (8 kHz mono 16-bit PCM) as its microphone, or
    /// silence if None. Returns once the account exists; registration runs
    /// on: see [`Baresip::wait_registered`].
    pub async fn start(
        account: &Account,
        ca_file: &Path,
        source_wav: Option<&Path>,
    ) -> Result<Baresip> {
        require()?;
        let line = account.line()?;
        ensure!(
            ca_file.is_file(),
            "CA file {} is missing (baresip exits at start without it)",
            ca_file.display()
        );
        let ca_file = std::fs::canonicalize(ca_file)
            .with_context(|| format!("resolving {}", ca_file.display()))?;
        config_safe(&ca_file)?;

        let dir = tempfile::Builder::new()
            .prefix("baresip-")
            .tempdir()
            .context("creating baresip's config directory")?;
        config_safe(dir.path())?;
        let source = dir.path().join("source.wav");
        write_source(&source, source_wav)?;
        let dumps = dir.path().join("received");
        std::fs::create_dir(&dumps).context("creating the dump directory")?;
        // Empty on purpose: the account comes with `uanew` (see the module doc).
        std::fs::write(dir.path().join("accounts"), "").context("writing accounts")?;

        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let ctrl_port = free_tcp_port()?;
            let (rtp_low, rtp_high) = rtp_block()?;
            let config = config_text(&ca_file, &source, &dumps, ctrl_port, rtp_low, rtp_high);
            std::fs::write(dir.path().join("config"), config).context("writing config")?;

            let log_path = dir.path().join(format!("baresip-{attempt}.log"));
            let log = std::fs::File::create(&log_path).context("creating baresip's log")?;
            let log_err = log.try_clone().context("cloning the log handle")?;
            let mut cmd = Command::new(BARESIP);
            cmd.arg("-f")
                .arg(dir.path())
                .arg("-t")
                .arg(BACKSTOP.as_secs().to_string());
            if std::env::var_os("SB_BARESIP_TRACE").is_some() {
                cmd.arg("-s"); // SIP trace into the log
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {BARESIP} (installed by {INSTALL_SCRIPT})"))?;

            let text = wait_ready(&mut child, &log_path).await?;
            if text.contains("ctrl_tcp: failed to listen") {
                // Someone took the port between our probe and baresip's bind.
                let _ = child.kill().await;
                failures.push(format!(
                    "attempt {attempt}: ctrl_tcp port {ctrl_port} taken"
                ));
                continue;
            }
            let ctrl = connect(ctrl_port)
                .await
                .with_context(|| format!("connecting to ctrl_tcp; log:\n{}", tail(&log_path)))?;
            let mut ua = Baresip {
                child,
                ctrl,
                inbox: Vec::new(),
                events: Vec::new(),
                taken: Vec::new(),
                next_token: 0,
                aor: account.aor.clone(),
                log_path,
                dir,
            };
            let resp = ua.command("uanew", &line).await?;
            ensure!(
                ok(&resp),
                "uanew refused: {}; log:\n{}",
                data(&resp),
                ua.log()
            );
            return Ok(ua);
        }
        bail!("baresip did not start: {}", failures.join("; "))
    }

    /// Sends `command` (a baresip long command: `dial`, `hangup`,
    /// `sndcode`, `reginfo`, `listcalls`, `callstat`, `accept`,
    /// `answermode`, `uanew`, `quit`, …) with `params` and returns its
    /// response `{"response":true,"ok":…,"data":"…","token":"…"}`, whatever
    /// `ok` says. Events that arrive meanwhile go to the log.
    pub async fn command(&mut self, command: &str, params: &str) -> Result<Value> {
        // baresip joins them into a 1024-byte buffer and cuts the rest.
        ensure!(
            command.len() + params.len() < 1000,
            "command `{command}` too long for baresip"
        );
        self.next_token += 1;
        let token = format!("sb-{}", self.next_token);
        let mut msg = serde_json::Map::new();
        msg.insert("command".into(), Value::from(command));
        if !params.is_empty() {
            msg.insert("params".into(), Value::from(params));
        }
        msg.insert("token".into(), Value::from(token.as_str()));
        let payload = serde_json::to_vec(&Value::Object(msg))?;
        let mut frame = format!("{}:", payload.len()).into_bytes();
        frame.extend_from_slice(&payload);
        frame.push(b',');
        self.ctrl
            .write_all(&frame)
            .await
            .with_context(|| format!("sending `{command}` to baresip; log:\n{}", self.log()))?;

        let deadline = Instant::now() + COMMAND_WAIT;
        loop {
            let msg = self
                .read_message(deadline)
                .await
                .with_context(|| format!("waiting for the response to `{command}`"))?;
            if is_response(&msg) && msg.get("token").and_then(Value::as_str) == Some(token.as_str())
            {
                return Ok(msg);
            }
        }
    }

    /// Waits up to `limit` for an event matching `pred` and returns it.
    /// Looks first at the events already received (during a command, say)
    /// that no earlier `wait_event` returned, oldest first; each event is
    /// returned at most once. Everything received stays in [`Self::events`].
    pub async fn wait_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        let mut scanned = 0;
        loop {
            let found =
                (scanned..self.events.len()).find(|&i| !self.taken[i] && pred(&self.events[i]));
            if let Some(i) = found {
                self.taken[i] = true;
                return Ok(self.events[i].clone());
            }
            scanned = self.events.len();
            if let Err(e) = self.read_message(deadline).await {
                let seen: Vec<String> = self
                    .events
                    .iter()
                    .map(|ev| {
                        format!(
                            "{}({})",
                            event_type(ev).unwrap_or("?"),
                            ev.get("param").and_then(Value::as_str).unwrap_or("")
                        )
                    })
                    .collect();
                return Err(e.context(format!(
                    "no matching event within {limit:?} at {}; events so far: [{}]",
                    self.aor,
                    seen.join(", ")
                )));
            }
        }
    }

    /// Waits for the next unreturned event of type `ty` (`CALL_ESTABLISHED`…).
    pub async fn wait_type(&mut self, ty: &str, limit: Duration) -> Result<Value> {
        self.wait_event(|e| event_type(e) == Some(ty), limit)
            .await
            .with_context(|| format!("waiting for {ty}"))
    }

    /// Waits for `REGISTER_OK`; a `REGISTER_FAIL` first is an error carrying
    /// its param ("401 Unauthorized", "403 Forbidden", "Connection refused"…).
    pub async fn wait_registered(&mut self, limit: Duration) -> Result<()> {
        let ev = self
            .wait_event(
                |e| matches!(event_type(e), Some("REGISTER_OK" | "REGISTER_FAIL")),
                limit,
            )
            .await
            .context("waiting for the registration")?;
        if event_type(&ev) == Some("REGISTER_FAIL") {
            bail!(
                "{} failed to register: {}",
                self.aor,
                ev.get("param").and_then(Value::as_str).unwrap_or("")
            );
        }
        Ok(())
    }

    /// Every event received so far, in order (`{"event":true,"type":…,
    /// "class":…,"accountaor":…, "direction","peeruri","id","param"…}`).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Places a call: `uri` is `sip:100@acme.localhost`, or just `100`
    /// (baresip adds the AOR's domain). Returns once baresip took the
    /// command; the call's fate comes as events (`CALL_RINGING`,
    /// `CALL_MENC`, `CALL_ESTABLISHED`, `CALL_CLOSED`).
    pub async fn dial(&mut self, uri: &str) -> Result<()> {
        let resp = self.command("dial", uri).await?;
        ensure!(ok(&resp), "dial {uri} refused: {}", data(&resp));
        Ok(())
    }

    /// Hangs up the current call (a no-op that succeeds when there is none).
    pub async fn hangup(&mut self) -> Result<()> {
        let resp = self.command("hangup", "").await?;
        ensure!(ok(&resp), "hangup refused: {}", data(&resp));
        Ok(())
    }

    /// Sends `keys` (`0-9 * # A-D`) as RFC 4733 events in the current call;
    /// baresip paces them itself (about 240 ms a key), after this returns.
    pub async fn send_dtmf(&mut self, keys: &str) -> Result<()> {
        ensure!(
            !keys.is_empty()
                && keys
                    .chars()
                    .all(|c| c.is_ascii_digit() || "*#ABCDabcd".contains(c)),
            "not DTMF keys: {keys:?}"
        );
        let resp = self.command("sndcode", keys).await?;
        if !ok(&resp) && data(&resp).contains("command not found") {
            bail!(
                "no call is up at {} (baresip has `sndcode` only during a call)",
                self.aor
            );
        }
        ensure!(ok(&resp), "sndcode {keys} refused: {}", data(&resp));
        Ok(())
    }

    /// Where `sndfile` writes `dump-…-dec.wav` (received, decoded) and
    /// `dump-…-enc.wav` (sent) for each call.
    pub fn received_audio_dir(&self) -> PathBuf {
        self.dir.path().join("received")
    }

    /// The samples received in the newest call (8 kHz mono), from its
    /// `-dec.wav` dump. Safe to read once `CALL_CLOSED` arrived, and even
    /// during the call (the header sizes are not written yet then).
    pub fn received_audio(&self) -> Result<Vec<i16>> {
        self.newest_dump("-dec.wav")
    }

    /// The samples sent in the newest call, from its `-enc.wav` dump.
    pub fn sent_audio(&self) -> Result<Vec<i16>> {
        self.newest_dump("-enc.wav")
    }

    fn newest_dump(&self, suffix: &str) -> Result<Vec<i16>> {
        let dir = self.received_audio_dir();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        names.sort();
        let path = names.pop().ok_or_else(|| {
            anyhow!(
                "no *{suffix} dump in {} (no call had audio?)",
                dir.display()
            )
        })?;
        let wav = read_wav(&path)?;
        ensure!(
            wav.rate == RATE && wav.channels == 1,
            "{}: {} Hz, {} channels",
            path.display(),
            wav.rate,
            wav.channels
        );
        Ok(wav.samples)
    }

    /// The AOR this UA registered.
    pub fn aor(&self) -> &str {
        &self.aor
    }

    /// baresip's own log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Ends baresip cleanly (un-REGISTER, BYE, dump headers written): `quit`,
    /// then up to 5 s for the exit, then a kill. Dropping instead kills it
    /// at once.
    pub async fn quit(mut self) -> Result<()> {
        // The response may never come if baresip exits first.
        let _ = tokio::time::timeout(QUIT_WAIT, self.command("quit", "")).await;
        match tokio::time::timeout(QUIT_WAIT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for baresip to exit")?;
                ensure!(status.success(), "baresip ended with {status} after quit");
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("baresip did not exit within {QUIT_WAIT:?} of quit; killed")
            }
        }
    }

    /// Reads one message; events are logged on the way.
    async fn read_message(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            if let Some(payload) = take_netstring(&mut self.inbox)? {
                let msg: Value = serde_json::from_slice(&payload).with_context(|| {
                    format!(
                        "ctrl_tcp sent non-JSON: {}",
                        String::from_utf8_lossy(&payload)
                    )
                })?;
                if is_event(&msg) {
                    self.events.push(msg.clone());
                    self.taken.push(false);
                }
                return Ok(msg);
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.ctrl.read(&mut chunk)).await {
                Err(_) => bail!("timed out"),
                Ok(read) => read.context("reading ctrl_tcp")?,
            };
            if n == 0 {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "baresip closed ctrl_tcp (exit status {status:?}); log:\n{}",
                    tail(&self.log_path)
                );
            }
            self.inbox.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Fails, naming the install script, when baresip or a module it needs is
/// missing. Telephony tests call this and never skip.
pub fn require() -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(BARESIP)))
    });
    if !found {
        bail!(
            "baresip is not installed (Debian package baresip-core); run \
             `bash {INSTALL_SCRIPT}` first: the telephony tests need it and never skip"
        );
    }
    let missing: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| !Path::new(MODULE_DIR).join(m).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "baresip modules {missing:?} are missing from {MODULE_DIR}; run \
             `bash {INSTALL_SCRIPT}` (Debian package baresip-core)"
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The generated `config` (every line checked against 1.0.0).
fn config_text(
    ca_file: &Path,
    source: &Path,
    dumps: &Path,
    ctrl_port: u16,
    rtp_low: u16,
    rtp_high: u16,
) -> String {
    format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t127.0.0.1:0\n\
         sip_cafile\t\t{ca}\n\
         call_local_timeout\t120\n\
         call_max_calls\t\t4\n\
         audio_path\t\t/usr/share/baresip\n\
         audio_source\t\taufile,{source}\n\
         audio_buffer\t\t20-160\n\
         audio_level\t\tno\n\
         ausrc_format\t\ts16\n\
         auplay_format\t\ts16\n\
         auenc_format\t\ts16\n\
         audec_format\t\ts16\n\
         rtp_ports\t\t{rtp_low}-{rtp_high}\n\
         rtcp_mux\t\tno\n\
         jitter_buffer_delay\t0-10\n\
         rtp_stats\t\tno\n\
         net_interface\t\t127.0.0.1\n\
         module_path\t\t{MODULE_DIR}\n\
         module\t\t\tg711.so\n\
         module\t\t\taufile.so\n\
         module\t\t\tsndfile.so\n\
         module\t\t\tsrtp.so\n\
         module_tmp\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         module_app\t\tctrl_tcp.so\n\
         module_app\t\tmwi.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}\n\
         snd_path\t\t{dumps}\n\
         statmode_default\toff\n\
         ringback_disabled\tyes\n",
        ca = ca_file.display(),
        source = source.display(),
        dumps = dumps.display(),
    )
}

/// baresip's config values end at whitespace.
fn config_safe(path: &Path) -> Result<()> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))?;
    ensure!(
        !s.chars().any(|c| c.is_whitespace() || c == '#' || c == ','),
        "path {s:?} cannot go into a baresip config (whitespace, '#' or ',')"
    );
    Ok(())
}

/// Waits for "baresip is ready." in the log; the log so far on success.
async fn wait_ready(child: &mut Child, log_path: &Path) -> Result<String> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let text = read_log(log_path);
        if text.contains("baresip is ready.") {
            return Ok(text);
        }
        if let Some(status) = child.try_wait().context("polling baresip")? {
            bail!(
                "baresip exited at start ({status}); log:\n{}",
                tail(log_path)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "baresip not ready within {READY_WAIT:?}; log:\n{}",
                tail(log_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(port: u16) -> Result<TcpStream> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {addr}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A loopback TCP port free right now. Probed without SO_REUSEADDR (which
/// std's listener sets), as baresip binds without it: a port still in
/// TIME_WAIT would fail there.
fn free_tcp_port() -> Result<u16> {
    let sock = tokio::net::TcpSocket::new_v4().context("probe socket")?;
    sock.set_reuseaddr(false)?;
    sock.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("probing a free port")?;
    Ok(sock.local_addr()?.port())
}

/// A block of RTP ports whose every port binds on 0.0.0.0 now (baresip's
/// RTP sockets bind the wildcard), as `(low, high)` for `rtp_ports`.
/// Blocks go round-robin from a per-process start, so UAs of one test
/// binary never share one.
fn rtp_block() -> Result<(u16, u16)> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let blocks = u32::from((RTP_HIGH - RTP_LOW) / RTP_BLOCK);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % blocks,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..64 {
        let index = NEXT.fetch_add(1, Ordering::SeqCst) % blocks;
        let low = RTP_LOW + u16::try_from(index).expect("index < blocks") * RTP_BLOCK;
        let free = (low..low + RTP_BLOCK).all(|port| {
            std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
        });
        if free {
            // libre picks an even port in [low, high) and RTCP at port + 1.
            return Ok((low, low + RTP_BLOCK - 1));
        }
    }
    bail!("no free block of {RTP_BLOCK} UDP ports in {RTP_LOW}-{RTP_HIGH}")
}

/// Takes one `len:payload,` netstring off the front of `buf`.
fn take_netstring(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let Some(colon) = buf.iter().position(|&b| b == b':') else {
        ensure!(
            buf.len() <= 9 && buf.iter().all(|b| b.is_ascii_digit()),
            "malformed netstring from ctrl_tcp: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(64)])
        );
        return Ok(None);
    };
    let digits = &buf[..colon];
    ensure!(
        !digits.is_empty() && digits.len() <= 9 && digits.iter().all(|b| b.is_ascii_digit()),
        "malformed netstring length from ctrl_tcp: {:?}",
        String::from_utf8_lossy(&digits[..digits.len().min(64)])
    );
    let len: usize = std::str::from_utf8(digits)?.parse()?;
    let end = colon + 1 + len;
    if buf.len() <= end {
        return Ok(None);
    }
    ensure!(
        buf[end] == b',',
        "netstring from ctrl_tcp not closed by ','"
    );
    let payload = buf[colon + 1..end].to_vec();
    buf.drain(..=end);
    Ok(Some(payload))
}

fn is_true(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_str) == Some("true")
}

fn is_event(msg: &Value) -> bool {
    is_true(msg.get("event"))
}

fn is_response(msg: &Value) -> bool {
    is_true(msg.get("response"))
}

fn ok(resp: &Value) -> bool {
    resp.get("ok").and_then(Value::as_bool) == Some(true)
}

fn data(resp: &Value) -> &str {
    resp.get("data")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
}

/// An event's `type` (`REGISTER_OK`, `CALL_CLOSED`, …).
pub fn event_type(event: &Value) -> Option<&str> {
    event.get("type").and_then(Value::as_str)
}

/// A log file as text (lossy: it is only searched and shown).
fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last 40 lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A decoded WAV file.
#[derive(Clone, Debug)]
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

/// Reads a 16-bit PCM WAV. A `data` size of 0 or past the end (a dump
/// whose writer was killed) means "to the end of the file".
pub fn read_wav(path: &Path) -> Result<Wav> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_wav(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn parse_wav(bytes: &[u8]) -> Result<Wav> {
    ensure!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "not a RIFF/WAVE file"
    );
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            ensure!(size >= 16 && body + 16 <= bytes.len(), "short fmt chunk");
            fmt = Some((
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or_else(|| anyhow!("data before fmt"))?;
            ensure!(
                (format == 1 || format == 0xFFFE) && bits == 16,
                "not 16-bit PCM (format {format}, {bits} bits)"
            );
            let left = bytes.len() - body;
            let len = if size == 0 || size > left { left } else { size };
            let samples = bytes[body..body + len - len % 2]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Ok(Wav {
                rate,
                channels,
                samples,
            });
        }
        pos = body.saturating_add(size).saturating_add(size % 2);
    }
    bail!("no data chunk")
}

/// Writes 16-bit PCM mono WAV at 8 kHz.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<()> {
    let data_len = u32::try_from(samples.len() * 2).context("WAV too long")?;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The microphone: `source` (8 kHz mono 16-bit PCM) then [`SILENCE_PAD`]
/// of silence, since aufile hangs up at the end of its file.
fn write_source(dest: &Path, source: Option<&Path>) -> Result<()> {
    let mut samples = match source {
        None => Vec::new(),
        Some(path) => {
            let wav = read_wav(path)?;
            ensure!(
                wav.rate == RATE && wav.channels == 1,
                "{}: baresip's aufile needs 8 kHz mono 16-bit PCM, not {} Hz × {} channels",
                path.display(),
                wav.rate,
                wav.channels
            );
            wav.samples
        }
    };
    let pad = SILENCE_PAD.as_secs() as usize * RATE as usize;
    samples.resize(samples.len() + pad, 0);
    write_wav(dest, &samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_split_and_wait_for_more() {
        let mut buf = b"5:hello,3:ab".to_vec();
        assert_eq!(
            take_netstring(&mut buf).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(take_netstring(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"c,");
        assert_eq!(
            take_netstring(&mut buf).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert!(buf.is_empty());
        assert!(take_netstring(&mut b"x:1,".to_vec()).is_err());
        assert!(take_netstring(&mut b"1:ab".to_vec()).is_err());
    }

    #[test]
    fn killed_dump_reads_to_the_end() {
        // What sndfile leaves after SIGKILL: RIFF size 8, data size 0.
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\x08\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0data\0\0\0\0");
        wav.extend_from_slice(&[2, 0, 0xfe, 0xff]);
        let w = parse_wav(&wav).unwrap();
        assert_eq!((w.rate, w.channels, w.samples), (8000, 1, vec![2, -2]));
    }

    #[test]
    fn account_line() {
        let a = Account {
            aor: "sip:alice-desk@acme.localhost".into(),
            password: "s3cret".into(),
            outbound: "127.0.0.1:5061".parse().unwrap(),
            srtp: true,
        };
        assert_eq!(
            a.line().unwrap(),
            "<sip:alice-desk@acme.localhost>;auth_pass=s3cret;\
             outbound=\"sip:127.0.0.1:5061;transport=tls\";regint=60;answermode=auto;\
             audio_codecs=pcmu;mediaenc=srtp-mand"
        );
        let bad = Account {
            password: "a;b".into(),
            ..a
        };
        assert!(bad.line().is_err());
    }
}
