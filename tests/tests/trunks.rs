//! SIP trunks end to end over real UDP (issue 20, part 4): a provider on
//! an allow-listed loopback address sends DID calls in and takes calls
//! out, through the door's transaction layer (retransmissions both
//! ways), the dialing policy and the trunk's digest credentials. The
//! provider is hand-written (`switchboard_tests::sip::Provider`) so it
//! reaches the corners: unknown sources, other tenants' numbers,
//! challenges, retransmissions, garbage. SPEC T1, T2, K4.

use std::net::SocketAddr;
use std::time::Duration;

use md5::Digest as _;
use serde_json::Value;
use switchboard::admin::{Op, TrunkPassword};
use switchboard::harness::Harness;
use switchboard::sip::message::Message;
use switchboard::tenant::{Dialing, Limits, Route, Trunk, TrunkTransport};
use switchboard_tests::accounts::console;
use switchboard_tests::sip::{
    Provider, ProviderConn, ProxyListener, assert_keys_in_clear_refused, challenge_param,
};
use switchboard_tests::sipp;
use switchboard_tests::{harness, ok_json, tenant};

const QUIET: Duration = Duration::from_millis(1500);

/// acme's DID, routed to `callflow answer`.
const DID: &str = "+442079460018";
/// acme's DID routed to `callflow ring` (never answered).
const RINGING_DID: &str = "+442079460019";
/// acme's DID routed to `callflow prompt:welcome` (answers, speaks).
const PROMPT_DID: &str = "+442079460020";
/// globex's DID.
const GLOBEX_DID: &str = "+442079460099";

struct Rig {
    h: Harness,
    /// The door's TLS port for devices, and for trunks' providers.
    tls: SocketAddr,
    trunk_tls: SocketAddr,
    /// The trunks' UDP socket and TCP listener (one port).
    udp: SocketAddr,
    /// The provider of acme's trunk (127.0.0.1, also its proxy).
    itsp: Provider,
    _stop: tokio::sync::oneshot::Sender<()>,
    _scheduler: switchboard::scheduler::Scheduler,
}

/// A tenant's routes: its DID (answered), an extension, and for acme two
/// more DIDs (one that only rings, one that speaks).
fn routes(tenant: &str, did: &str) -> Vec<Route> {
    let route = |number: &str, args: &str| Route {
        number: number.into(),
        plugin: "callflow".into(),
        args: args.into(),
    };
    let mut all = vec![route(did, "answer"), route("100", "answer")];
    if tenant == "acme" {
        all.push(route(RINGING_DID, "ring"));
        all.push(route(PROMPT_DID, "prompt:welcome"));
    }
    all
}

fn trunk(name: &str, addresses: &[&str], proxy: Option<SocketAddr>) -> Trunk {
    Trunk {
        name: name.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        proxy,
        username: Some("acct-7".into()),
        caller_id: Some("+442079460000".into()),
        caller_ids: Vec::new(),
        max_calls: 4,
        ..Default::default()
    }
}

async fn rig() -> Rig {
    let h = harness(&["callflow"]).await;
    // The door first: the provider needs its address.
    let ports = switchboard_tests::sip::start_door_with_trunks(h.runtime()).await;
    let (tls, trunk_tls) = (ports.tls, ports.trunk_tls.unwrap());
    let (udp, stop) = (ports.trunks.unwrap(), ports.stop);
    let itsp = Provider::bind("127.0.0.1", udp).await;
    for (t, did, addr) in [
        ("acme", DID, "127.0.0.1"),
        ("globex", GLOBEX_DID, "127.0.0.3"),
    ] {
        tenant(&h, t, Limits::default(), &["callflow"]).await;
        console(
            &h,
            Op::DialingSet {
                tenant: t.into(),
                dialing: Dialing {
                    region: Some("GB".into()),
                    ..Dialing::default()
                },
            },
        )
        .await;
        console(
            &h,
            Op::RoutesSet {
                tenant: t.into(),
                routes: routes(t, did),
            },
        )
        .await;
        let proxy = (t == "acme").then_some(itsp.local);
        console(
            &h,
            Op::TrunkSet {
                tenant: t.into(),
                trunk: trunk("itsp", &[addr], proxy),
                password: Some(TrunkPassword("pr0vider-secret".into())),
            },
        )
        .await;
    }
    let scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
    Rig {
        h,
        tls,
        trunk_tls,
        udp,
        itsp,
        _stop: stop,
        _scheduler: scheduler,
    }
}

impl Rig {
    async fn legs(&self, t: &str) -> Vec<String> {
        let v = ok_json(self.h.get(t, "callflow", "u", "/legs").await);
        serde_json::from_value(v.clone()).unwrap_or_else(|_| panic!("/legs: {v}"))
    }

    async fn dial(&self, t: &str, number: &str) -> Value {
        let r = self
            .h
            .post(
                t,
                "callflow",
                "u",
                &format!("/dial/{}", number.replace('+', "%2B")),
                b"",
            )
            .await;
        serde_json::from_slice(&r.expect("the plugin answers").body).unwrap_or(Value::Null)
    }
}

/// acme's call records once there are at least `n` (or after 10 s).
async fn records_of(h: &Harness, n: usize) -> Vec<switchboard::telephony::records::CallRecord> {
    let mut records = Vec::new();
    for _ in 0..100 {
        records = h
            .runtime()
            .call_records("acme", 0, u64::MAX, None, 100)
            .unwrap()
            .records;
        if records.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    records
}

/// The ACK of a 2xx from the provider.
fn ack_of(invite: &Message, ok: &Message, p: &mut Provider) -> Message {
    let mut ack = p.request("ACK", invite.uri().unwrap(), "442079461111", &[]);
    ack.headers.retain(|(n, _)| n != "To" && n != "CSeq");
    ack.push("To", ok.header("To").unwrap());
    ack.push("CSeq", format!("{} ACK", invite.cseq().unwrap().0));
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_did_call_from_the_trunk_reaches_its_plugin_and_retransmissions_are_absorbed() {
    let mut r = rig().await;
    let uri = format!("sip:{}@acme.localhost", &DID[1..]); // E.164 without its +
    let invite = r.itsp.invite(&uri, "442079461111", 40_000);
    r.itsp.send(&invite).await;
    let ok = r.itsp.final_response().await.expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(
        body.contains("RTP/AVP") && !body.contains("a=crypto"),
        "plain RTP, no keys over UDP: {body}"
    );
    // Not acknowledged: the 200 comes again (Timer G / §13.3.1.4), the
    // same bytes.
    let again = r
        .itsp
        .recv_within(Duration::from_secs(3))
        .await
        .expect("a retransmitted 200");
    assert_eq!(again.to_bytes(), ok.to_bytes());
    // The INVITE sent again is absorbed: the 200 once more, no new leg.
    r.itsp.send(&invite).await;
    let echoed = r
        .itsp
        .recv_within(Duration::from_secs(3))
        .await
        .expect("the last answer again");
    assert_eq!(echoed.status(), Some(200));
    assert_eq!(
        r.legs("acme").await.len(),
        1,
        "one call, however often the INVITE came"
    );
    let ack = ack_of(&invite, &ok, &mut r.itsp);
    r.itsp.send(&ack).await;
    // Acknowledged: once what was already on its way is in (1 s), no
    // more 200s (a retransmission would come within T2 = 4 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    while r
        .itsp
        .recv_within(Duration::from_millis(10))
        .await
        .is_some()
    {}
    let later = r.itsp.recv_within(Duration::from_millis(4500)).await;
    assert!(
        later.as_ref().is_none_or(|m| m.status() != Some(200)),
        "{later:?}"
    );
    // The provider hangs up.
    let mut bye = r.itsp.request("BYE", &uri, "442079461111", &[]);
    bye.headers.retain(|(n, _)| n != "To");
    bye.push("To", ok.header("To").unwrap());
    r.itsp.send(&bye).await;
    let done = r.itsp.final_response().await.expect("BYE answered");
    assert_eq!(done.status(), Some(200));
    // Its record names the trunk's caller and the DID.
    let records = records_of(&r.h, 1).await;
    let rec = serde_json::to_value(&records).unwrap().to_string();
    assert!(rec.contains("442079461111") && rec.contains(DID), "{rec}");
    assert_eq!(
        records[0].trunk.as_deref(),
        Some("itsp"),
        "the record names the trunk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_addresses_are_heard_and_only_their_tenants_dids_reached() {
    let mut r = rig().await;
    // An address no trunk allows: silence, however well-formed.
    let mut stranger = Provider::bind("127.0.0.2", r.udp).await;
    let uri = format!("sip:{DID}@acme.localhost");
    let m = stranger.invite(&uri, "1", 40_002);
    stranger.send(&m).await;
    let m = stranger.request("OPTIONS", "sip:acme.localhost", "1", &[]);
    stranger.send(&m).await;
    assert!(
        stranger.recv_within(QUIET).await.is_none(),
        "nothing answers a stranger"
    );
    // acme's provider cannot reach globex's number, nor acme's internal
    // extension, nor register a device.
    let into_globex = format!("sip:{GLOBEX_DID}@globex.localhost");
    let m = r.itsp.invite(&into_globex, "1", 40_004);
    r.itsp.send(&m).await;
    let refused = r.itsp.final_response().await.unwrap();
    assert_eq!(refused.status(), Some(403), "{refused:?}");
    r.itsp.new_call();
    let m = r.itsp.invite("sip:100@acme.localhost", "1", 40_006);
    r.itsp.send(&m).await;
    assert_eq!(
        r.itsp.final_response().await.unwrap().status(),
        Some(404),
        "no extension from outside"
    );
    r.itsp.new_call();
    let m = r
        .itsp
        .invite(&format!("sip:{GLOBEX_DID}@acme.localhost"), "1", 40_008);
    r.itsp.send(&m).await;
    assert_eq!(
        r.itsp.final_response().await.unwrap().status(),
        Some(404),
        "another tenant's DID"
    );
    let reg = r.itsp.request("REGISTER", "sip:acme.localhost", "1", &[]);
    r.itsp.send(&reg).await;
    assert_eq!(r.itsp.final_response().await.unwrap().status(), Some(403));
    // globex's own provider reaches globex's DID.
    let mut globex = Provider::bind("127.0.0.3", r.udp).await;
    let m = globex.invite(&into_globex, "1", 40_010);
    globex.send(&m).await;
    assert_eq!(globex.final_response().await.unwrap().status(), Some(200));
    assert_eq!(r.legs("acme").await.len(), 0, "nothing reached acme");
    assert_eq!(r.legs("globex").await.len(), 1);
    // An SDP with keys over UDP is refused: keys never travel in clear.
    r.itsp.new_call();
    let keyed = r.itsp.request(
        "INVITE",
        &uri,
        "1",
        &[
            ("Content-Type", "application/sdp".into()),
            ("body", switchboard_tests::sip::offer(40_012, true)),
        ],
    );
    r.itsp.send(&keyed).await;
    assert_eq!(r.itsp.final_response().await.unwrap().status(), Some(488));
    // Garbage, a truncated message and an oversized one: dropped; the
    // door keeps serving.
    r.itsp.send_raw(b"\x00\x01garbage").await;
    r.itsp
        .send_raw(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n")
        .await;
    let huge = format!(
        "OPTIONS sip:acme.localhost SIP/2.0\r\nX: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(60_000)
    );
    r.itsp.send_raw(huge.as_bytes()).await;
    r.itsp.new_call();
    let ping = r.itsp.request("OPTIONS", "sip:acme.localhost", "1", &[]);
    r.itsp.send(&ping).await;
    let pong = r.itsp.final_response().await.expect("still serving");
    assert_eq!(pong.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_out_go_over_the_trunk_with_its_credentials_and_the_dialing_policy() {
    let r = rig().await;
    // Premium-rate and international numbers never reach the provider.
    for refused in ["09012345678", "+12015550123"] {
        let v = r.dial("acme", refused).await;
        assert!(
            v["error"].as_str().unwrap_or("").contains("restricted"),
            "{refused}: {v}"
        );
    }
    assert!(
        r.itsp.recv_within(QUIET).await.is_none(),
        "no INVITE for a refused number"
    );
    // A national number goes out, read as E.164.
    let v = r.dial("acme", "020 7946 0123").await;
    assert!(v["leg"].is_string(), "{v}");
    let invite = r.itsp.next_request().await.expect("an INVITE");
    assert_eq!(invite.method(), Some("INVITE"));
    assert!(
        invite.uri().unwrap().starts_with("sip:+442079460123@"),
        "{invite:?}"
    );
    // The caller (the plugin, not a DID) shows the trunk's number.
    assert!(
        invite.header("From").unwrap().contains("+442079460000"),
        "{invite:?}"
    );
    assert!(String::from_utf8_lossy(&invite.body).contains("RTP/AVP"));
    // Not answered at once: the INVITE is sent again (Timer A).
    let again = r.itsp.next_request().await.expect("a retransmission");
    assert_eq!(again.to_bytes(), invite.to_bytes());
    // The provider challenges; the door answers with the trunk's
    // credentials, once.
    let realm = "itsp.example";
    let mut challenge = invite.response(407, "Proxy Authentication Required", Some("p1"));
    challenge.push(
        "Proxy-Authenticate",
        format!("Digest realm=\"{realm}\", nonce=\"n0nce\", qop=\"auth\", algorithm=MD5"),
    );
    r.itsp.send(&challenge).await;
    // (Retransmissions of the INVITE may still be on their way.)
    let ack = loop {
        let m = r.itsp.next_request().await.expect("the ACK of the 407");
        if m.method() == Some("ACK") {
            break m;
        }
        assert_eq!(
            m.branch(),
            invite.branch(),
            "only the first INVITE again: {m:?}"
        );
    };
    assert_eq!(ack.branch(), invite.branch());
    let authed = loop {
        let m = r
            .itsp
            .next_request()
            .await
            .expect("the INVITE with credentials");
        if m.method() == Some("INVITE") && m.header("Proxy-Authorization").is_some() {
            break m;
        }
    };
    assert_eq!(authed.call_id(), invite.call_id());
    assert_eq!(authed.cseq().unwrap().0, invite.cseq().unwrap().0 + 1);
    let creds = authed.header("Proxy-Authorization").unwrap().to_string();
    let param = |n: &str| challenge_param(&creds, n).unwrap_or_else(|| panic!("{n} in {creds}"));
    assert_eq!(param("username"), "acct-7");
    assert_eq!(param("realm"), realm);
    assert_eq!(param("uri"), authed.uri().unwrap());
    // The response, computed here from the trunk's password.
    assert_eq!(
        param("response"),
        md5_response(&creds, realm, "n0nce", "INVITE")
    );
    // A second challenge is not answered again: the call fails.
    let mut twice = authed.response(407, "Proxy Authentication Required", Some("p2"));
    twice.push(
        "Proxy-Authenticate",
        format!("Digest realm=\"{realm}\", nonce=\"other\", qop=\"auth\""),
    );
    r.itsp.send(&twice).await;
    let ack2 = loop {
        let m = r
            .itsp
            .next_request()
            .await
            .expect("the ACK of the second 407");
        if m.method() == Some("ACK") {
            break m;
        }
        assert_eq!(
            m.branch(),
            authed.branch(),
            "only the second INVITE again: {m:?}"
        );
    };
    assert_eq!(ack2.branch(), authed.branch());
    // No third INVITE (a new branch) follows.
    let end = tokio::time::Instant::now() + QUIET;
    while let Some(m) = r
        .itsp
        .recv_within(end.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(
            m.method() != Some("INVITE") || m.branch() == authed.branch(),
            "no third INVITE: {m:?}"
        );
    }
    // The audit trail has the trunk's change, never its password.
    let trail = acme_trail(&r.h).await;
    assert!(trail.contains("tenant.trunk"), "{trail}");
    assert!(!trail.contains("pr0vider-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_in_over_the_trunk_and_cancels_while_ringing() {
    let r = rig().await;
    // 20 calls at 20/s: INVITE, 200, ACK, BYE at once (the race of a
    // BYE right behind the ACK), each to the DID (E.164 without +).
    let run = sipp::run(
        "127.0.0.1",
        Some(r.udp),
        &[
            "-sn",
            "uac",
            "-s",
            &DID[1..],
            "-m",
            "20",
            "-r",
            "20",
            "-d",
            "0",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(run.ok(), "{run:?}");
    assert_eq!(r.legs("acme").await.len(), 20);
    // 5 callers give up while it rings: 200 to the CANCEL, 487, ACK.
    let cancel = sipp::scenario("cancel.xml");
    let run = sipp::run(
        "127.0.0.1",
        Some(r.udp),
        &[
            "-sf",
            cancel.to_str().unwrap(),
            "-s",
            &RINGING_DID[1..],
            "-m",
            "5",
            "-r",
            "5",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(run.ok(), "{run:?}");
    assert_eq!(r.legs("acme").await.len(), 25);
    // Every leg ended and left its record (20 talked, 5 cancelled).
    let records = records_of(&r.h, 25).await;
    assert_eq!(records.len(), 25);
    let answered = records.iter().filter(|c| c.answered_ms.is_some()).count();
    assert_eq!(answered, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_takes_a_call_out_from_the_trunk() {
    let r = rig().await;
    let port = sipp::free_udp_port("127.0.0.1");
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    set_acme_trunk(&r.h, trunk("itsp", &["127.0.0.1"], Some(proxy))).await;
    let uas = tokio::spawn(sipp::run(
        "127.0.0.1",
        None,
        &["-sn", "uas", "-p", &port.to_string(), "-m", "1"],
        Duration::from_secs(20),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = r.dial("acme", "02079460123").await;
    let leg = v["leg"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string();
    // Answered (SIPp sends 180 and 200 at once), then hung up by the
    // plugin: our BYE ends SIPp's one call.
    let mut answered = false;
    for _ in 0..50 {
        let events = ok_json(
            r.h.get("acme", "callflow", "u", &format!("/events/{leg}"))
                .await,
        );
        if events.to_string().contains("answered") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "SIPp answered the call");
    let poked = ok_json(
        r.h.post("acme", "callflow", "u", &format!("/poke/{leg}"), b"")
            .await,
    );
    assert_eq!(poked["hangup"], "ok", "{poked}");
    let run = uas.await.unwrap();
    assert!(run.ok(), "{run:?}");
    // The call out's record names the trunk it went over.
    let records = records_of(&r.h, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].trunk.as_deref(), Some("itsp"));
    assert_eq!(records[0].callee, "+442079460123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_from_the_trunk_moves_the_calls_media() {
    let mut r = rig().await;
    let first_rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let moved_rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("sip:{PROMPT_DID}@acme.localhost");
    let invite = r
        .itsp
        .invite(&uri, "442079461111", first_rtp.local_addr().unwrap().port());
    r.itsp.send(&invite).await;
    let ok = r.itsp.final_response().await.expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    // An ACK naming another To tag is not this dialog's: the call stays
    // unacknowledged, and a re-INVITE meanwhile is 491.
    let mut forged = ack_of(&invite, &ok, &mut r.itsp);
    forged.headers.retain(|(n, _)| n != "To");
    forged.push("To", format!("<{uri}>;tag=forged"));
    r.itsp.send(&forged).await;
    let mut early = r
        .itsp
        .invite(&uri, "442079461111", moved_rtp.local_addr().unwrap().port());
    early.headers.retain(|(n, _)| n != "To");
    early.push("To", ok.header("To").unwrap());
    r.itsp.send(&early).await;
    let pending = answer_to(&r.itsp, &early).await;
    assert_eq!(pending.status(), Some(491), "{pending:?}");
    // Nor does the forged ACK silence our 200: it is sent again.
    let again = loop {
        let m = r
            .itsp
            .recv_within(Duration::from_secs(5))
            .await
            .expect("our 200 sent again");
        if m.cseq().ok() == ok.cseq().ok() && m.status() == Some(200) {
            break m;
        }
    };
    assert_eq!(again.to_bytes(), ok.to_bytes());
    let ack = ack_of(&invite, &ok, &mut r.itsp);
    r.itsp.send(&ack).await;
    // The prompt's RTP reaches the first port.
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_secs(5), first_rtp.recv_from(&mut buf))
        .await
        .expect("RTP at the first address")
        .unwrap();
    // The provider moves the call's media (a re-INVITE in the dialog).
    let mut re = r
        .itsp
        .invite(&uri, "442079461111", moved_rtp.local_addr().unwrap().port());
    re.headers.retain(|(n, _)| n != "To");
    re.push("To", ok.header("To").unwrap());
    r.itsp.send(&re).await;
    let ok2 = answer_to(&r.itsp, &re).await;
    assert_eq!(ok2.status(), Some(200), "{ok2:?}");
    assert!(String::from_utf8_lossy(&ok2.body).contains("RTP/AVP"));
    let ack2 = ack_of(&re, &ok2, &mut r.itsp);
    r.itsp.send(&ack2).await;
    // What the host sends now arrives at the new port.
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), moved_rtp.recv_from(&mut buf))
        .await
        .expect("RTP at the new address")
        .unwrap();
    assert!(n >= 12 + 160, "an RTP packet of 20 ms of G.711");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_numbers_stay_where_they_belong() {
    let r = rig().await;
    let rt = r.h.runtime();
    let has_password = |t: &str| rt.trunks(t).unwrap()[0]["has_password"].clone();
    assert_eq!(has_password("acme"), true);
    // Re-set with the same proxy and user name: the password stays.
    let same = trunk("itsp", &["127.0.0.1"], Some(r.itsp.local));
    rt.set_trunk("acme", same, None, true).await.unwrap();
    assert_eq!(has_password("acme"), true);
    // A new proxy without the password again: cleared, so the provider's
    // credentials never answer a server someone else chose.
    let moved = trunk(
        "itsp",
        &["127.0.0.0/24"],
        Some("127.0.0.9:5060".parse().unwrap()),
    );
    rt.set_trunk("acme", moved, None, true).await.unwrap();
    assert_eq!(has_password("acme"), false);
    // A proxy outside the trunk's own addresses is refused.
    let outside = trunk(
        "itsp",
        &["127.0.0.1"],
        Some("192.0.2.1:5060".parse().unwrap()),
    );
    let e = rt
        .set_trunk("acme", outside, None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_trunk", "{e}");
    // A new transport without the password again: cleared too (TLS to
    // TCP would send the digest in clear).
    let mut t = trunk(
        "itsp",
        &["192.0.2.0/28"],
        Some("192.0.2.5:5060".parse().unwrap()),
    );
    set_acme_trunk_with(&r.h, t.clone(), "pr0vider-secret").await;
    assert_eq!(has_password("acme"), true);
    t.transport = TrunkTransport::Tcp;
    rt.set_trunk("acme", t.clone(), None, false).await.unwrap();
    assert_eq!(has_password("acme"), false);
    // Over TLS, a new name to verify is a new server: cleared.
    t.transport = TrunkTransport::Tls;
    t.tls_name = Some("sip.provider.test".into());
    set_acme_trunk_with(&r.h, t.clone(), "pr0vider-secret").await;
    assert_eq!(has_password("acme"), true);
    t.tls_name = Some("elsewhere.example".into());
    rt.set_trunk("acme", t.clone(), None, false).await.unwrap();
    assert_eq!(has_password("acme"), false);
    (t.transport, t.tls_name) = (TrunkTransport::Udp, None);
    // A tenant admin may not aim the door at the host's loopback or a
    // link-local address (an operator may).
    for proxy in ["127.0.0.9:5060", "169.254.0.9:5060"] {
        let mut local = trunk("local", &["127.0.0.0/8", "169.254.0.0/16"], None);
        local.proxy = Some(proxy.parse().unwrap());
        let e = rt.set_trunk("acme", local, None, false).await.unwrap_err();
        assert_eq!(e.code(), "invalid_trunk", "{proxy}: {e}");
    }
    // Once the operator manages acme's trunk, no tenant admin sets up
    // another trunk to the same provider (its proxy, or an address in
    // common), in acme or elsewhere: the operator's contract and caller
    // ids stay the operator's.
    t.managed = true;
    set_acme_trunk_with(&r.h, t.clone(), "pr0vider-secret").await;
    let mut shadow = trunk("shadow", &["198.51.100.1"], t.proxy);
    let e = rt
        .set_trunk("acme", shadow.clone(), None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "trunk_managed", "{e}");
    shadow.proxy = None;
    shadow.addresses = vec!["192.0.2.4".into()];
    let e = rt
        .set_trunk("globex", shadow.clone(), None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "trunk_managed", "{e}");
    shadow.addresses = vec!["198.51.100.1".into()];
    rt.set_trunk("globex", shadow, None, false).await.unwrap();
    // Nor does the operator manage a provider other trunks reach
    // unmanaged: they are named, to be removed or taken over first.
    let mut house = trunk("house", &["198.51.100.0/28"], None);
    house.managed = true;
    let e = rt.set_trunk("acme", house, None, true).await.unwrap_err();
    assert_eq!(e.code(), "trunk_managed", "{e}");
    assert!(e.to_string().contains("globex/shadow"), "{e}");
    // A DID is one tenant's: globex cannot take acme's number.
    let e = rt
        .set_routes(
            "globex",
            vec![Route {
                number: DID.into(),
                plugin: "callflow".into(),
                args: String::new(),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_routes", "{e}");
    assert!(
        rt.routes("globex")
            .unwrap()
            .iter()
            .any(|r| r.number == GLOBEX_DID)
    );
}

/// The MD5 `qop=auth` digest response the trunk's credentials (acct-7,
/// pr0vider-secret) give for `method` under `nonce`, with the uri, nc and
/// cnonce of `creds`: computed here, independently of the host's code.
fn md5_response(creds: &str, realm: &str, nonce: &str, method: &str) -> String {
    let param = |n: &str| challenge_param(creds, n).unwrap_or_else(|| panic!("{n} in {creds}"));
    let md5 = |t: String| hex::encode(md5::Md5::digest(t.as_bytes()));
    let ha1 = md5(format!("acct-7:{realm}:pr0vider-secret"));
    let ha2 = md5(format!("{method}:{}", param("uri")));
    md5(format!(
        "{ha1}:{nonce}:{}:{}:auth:{ha2}",
        param("nc"),
        param("cnonce")
    ))
}

/// The final response to `request` (others, such as our 200 sent again,
/// are skipped).
async fn answer_to(p: &Provider, request: &Message) -> Message {
    let want = request.cseq().unwrap();
    loop {
        let m = p.final_response().await.expect("an answer");
        if m.cseq().ok() == Some(want.clone()) {
            return m;
        }
    }
}

/// The next REGISTER the provider gets (skipping anything else).
async fn next_register(p: &Provider) -> Message {
    loop {
        let m = p.next_request().await.expect("a REGISTER");
        if m.method() == Some("REGISTER") {
            return m;
        }
    }
}

/// acme's trunk registration as the trunk list shows it.
fn registration(h: &Harness) -> Value {
    let trunks = h.runtime().trunks("acme").unwrap();
    trunks[0]["registration"].clone()
}

async fn wait_registration(h: &Harness, state: &str) -> Value {
    for _ in 0..300 {
        let r = registration(h);
        if r["state"] == state {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("registration never {state}: {}", registration(h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_registers_refreshes_takes_calls_at_its_contact_and_unregisters() {
    let mut r = rig().await;
    let mut t = trunk("itsp", &["127.0.0.1"], Some(r.itsp.local));
    t.register = true;
    t.domain = Some("sip.itsp.example".into());
    // (Same proxy and user name: the password stays.)
    set_acme_trunk(&r.h, t.clone()).await;
    assert_eq!(registration(&r.h)["state"], "pending");
    // The REGISTER: to the provider's domain, for the trunk's user, our
    // UDP address as the contact.
    let reg = next_register(&r.itsp).await;
    assert_eq!(reg.uri(), Some("sip:sip.itsp.example"));
    assert_eq!(reg.header("To"), Some("<sip:acct-7@sip.itsp.example>"));
    let contact = format!("<sip:acct-7@{}>", r.udp);
    assert_eq!(reg.header("Contact"), Some(contact.as_str()));
    assert_eq!(reg.header("Expires"), Some("600"));
    // Challenged; answered once with the trunk's password.
    let realm = "itsp.example";
    let mut challenge = reg.response(401, "Unauthorized", Some("r1"));
    challenge.push(
        "WWW-Authenticate",
        format!("Digest realm=\"{realm}\", nonce=\"r3g\", qop=\"auth\", algorithm=MD5"),
    );
    r.itsp.send(&challenge).await;
    let authed = loop {
        let m = next_register(&r.itsp).await;
        if m.header("Authorization").is_some() {
            break m;
        }
    };
    assert_eq!(authed.call_id(), reg.call_id());
    assert_eq!(authed.cseq().unwrap().0, reg.cseq().unwrap().0 + 1);
    let creds = authed.header("Authorization").unwrap().to_string();
    let param = |n: &str| challenge_param(&creds, n).unwrap_or_else(|| panic!("{n} in {creds}"));
    // The response, computed here from the trunk's password.
    assert_eq!(
        param("response"),
        md5_response(&creds, realm, "r3g", "REGISTER")
    );
    // Granted 4 s: registered, refreshed at half that.
    let mut ok = authed.response(200, "OK", Some("r1"));
    ok.push("Contact", format!("{contact};expires=4"));
    r.itsp.send(&ok).await;
    let shown = wait_registration(&r.h, "registered").await;
    assert!(shown["expires_ms"].as_u64().is_some(), "{shown}");
    let started = std::time::Instant::now();
    let refresh = next_register(&r.itsp).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(4),
        "refreshed after {after:?}"
    );
    assert_eq!(refresh.call_id(), reg.call_id());
    assert!(refresh.cseq().unwrap().0 > authed.cseq().unwrap().0);
    let mut ok = refresh.response(200, "OK", Some("r1"));
    ok.push("Contact", format!("{contact};expires=600"));
    r.itsp.send(&ok).await;
    // A call to the contact, the DID in To, reaches the DID's plugin.
    let mut invite = r
        .itsp
        .invite(&format!("sip:acct-7@{}", r.udp), "442079461111", 40_010);
    invite.headers.retain(|(n, _)| n != "To");
    invite.push("To", format!("<sip:{DID}@sip.itsp.example>"));
    r.itsp.send(&invite).await;
    let answered = answer_to(&r.itsp, &invite).await;
    assert_eq!(answered.status(), Some(200), "{answered:?}");
    let ack = ack_of(&invite, &answered, &mut r.itsp);
    r.itsp.send(&ack).await;
    assert_eq!(r.legs("acme").await.len(), 1);
    // Registration off: the binding is removed (Expires: 0).
    t.register = false;
    set_acme_trunk(&r.h, t).await;
    let gone = next_register(&r.itsp).await;
    assert_eq!(gone.header("Expires"), Some("0"));
    assert_eq!(gone.call_id(), reg.call_id());
    assert!(registration(&r.h).is_null());
    // Both changes of state audited, without the password.
    let trail =
        r.h.runtime()
            .audit_log()
            .entries(&switchboard::audit::Scope::tenant("acme"), 0, 1000)
            .unwrap();
    let states: Vec<&str> = trail
        .iter()
        .filter(|e| e.action == "trunk.register")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(states, ["registered", "stopped"], "{trail:?}");
    assert!(!format!("{trail:?}").contains("pr0vider-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_is_shown_failed_and_tried_again_later() {
    let r = rig().await;
    let mut t = trunk("itsp", &["127.0.0.1"], Some(r.itsp.local));
    t.register = true;
    set_acme_trunk(&r.h, t).await;
    let reg = next_register(&r.itsp).await;
    // No domain: the proxy's address.
    assert_eq!(
        reg.uri(),
        Some(format!("sip:{}", r.itsp.local.ip()).as_str())
    );
    // An answer from an address that is not the proxy is not taken.
    let stranger = Provider::bind("127.0.0.1", r.udp).await;
    stranger.send(&reg.response(200, "OK", Some("x"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registration(&r.h)["state"], "pending");
    r.itsp
        .send(&reg.response(403, "Forbidden", Some("r1")))
        .await;
    let shown = wait_registration(&r.h, "failed").await;
    assert_eq!(shown["status"], 403, "{shown}");
    // Not hammered: nothing within the retry's first wait (30 s; we
    // watch 3 s of it).
    let again = r.itsp.recv_within(Duration::from_secs(3)).await;
    assert!(
        again
            .as_ref()
            .is_none_or(|m| m.method() != Some("REGISTER")),
        "{again:?}"
    );
    // Registering needs a proxy and a user name.
    let mut bad = trunk("itsp2", &["127.0.0.9"], None);
    bad.register = true;
    let e =
        r.h.runtime()
            .set_trunk("acme", bad, None, false)
            .await
            .unwrap_err();
    assert_eq!(e.code(), "invalid_trunk", "{e}");
}

/// The next INVITE a provider gets (skipping anything else).
async fn next_invite(p: &Provider) -> Message {
    loop {
        let m = p.next_request().await.expect("an INVITE");
        if m.method() == Some("INVITE") {
            return m;
        }
    }
}

/// The next INVITE whose Request-URI starts with `uri` (an earlier
/// call's INVITE sent again is skipped).
async fn next_invite_to(p: &Provider, uri: &str) -> Message {
    loop {
        let m = next_invite(p).await;
        if m.uri().is_some_and(|u| u.starts_with(uri)) {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_out_goes_on_over_the_next_trunk_when_a_provider_fails() {
    let r = rig().await;
    let backup = Provider::bind("127.0.0.4", r.udp).await;
    set_acme_trunk_with(
        &r.h,
        trunk("backup", &["127.0.0.4"], Some(backup.local)),
        "b4ckup",
    )
    .await;
    // The first provider is overloaded (503): the call goes on over the
    // backup trunk, with the same number, and is answered there.
    let dialled = r.dial("acme", "02079460018").await;
    assert!(dialled["leg"].is_string(), "{dialled}");
    let first = next_invite(&r.itsp).await;
    r.itsp
        .send(&first.response(503, "Service Unavailable", Some("f1")))
        .await;
    let second = next_invite(&backup).await;
    assert_eq!(
        second.uri(),
        Some(format!("sip:+442079460018@{}", backup.local).as_str())
    );
    let mut ok = second.response(200, "OK", Some("b1"));
    ok.push("Contact", format!("<sip:gw@{}>", backup.local));
    ok.push("Content-Type", "application/sdp");
    ok.body = switchboard_tests::sip::offer(40_070, false).into_bytes();
    backup.send(&ok).await;
    let ack = loop {
        let m = backup.next_request().await.expect("the ACK");
        if m.method() == Some("ACK") {
            break m;
        }
    };
    assert_eq!(ack.call_id(), second.call_id());
    // The provider hangs up; the record names the trunk that carried it.
    let bye = Message::parse(
        format!(
            "BYE sip:switchboard@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            r.udp,
            backup.local,
            ok.header("To").unwrap(),
            second.header("From").unwrap(),
            second.call_id(),
        )
        .as_bytes(),
    )
    .unwrap();
    backup.send(&bye).await;
    let records = records_of(&r.h, 1).await;
    assert_eq!(records[0].trunk.as_deref(), Some("backup"), "{records:?}");
    // A busy number is the number's answer, not the provider's: no
    // failover.
    r.dial("acme", "02079460019").await;
    let first = next_invite(&r.itsp).await;
    r.itsp
        .send(&first.response(486, "Busy Here", Some("f2")))
        .await;
    assert_no_invite(&backup, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_out_takes_the_trunk_with_the_longest_prefix_it_matches() {
    let r = rig().await;
    // acme's first trunk (any number) and a London one listed after it.
    let london = Provider::bind("127.0.0.4", r.udp).await;
    let mut t = trunk("london", &["127.0.0.4"], Some(london.local));
    t.prefixes = vec!["+4420".into()];
    set_acme_trunk(&r.h, t.clone()).await;
    // A London number goes to the London trunk first; when it fails as a
    // provider, on over the catch-all.
    r.dial("acme", "02079460018").await;
    let first = next_invite(&london).await;
    london
        .send(&first.response(503, "Service Unavailable", Some("l1")))
        .await;
    let second = next_invite(&r.itsp).await;
    assert_eq!(
        second.uri().unwrap(),
        format!("sip:+442079460018@{}", r.itsp.local)
    );
    r.itsp
        .send(&second.response(486, "Busy Here", Some("i1")))
        .await;
    // Another number never reaches the London trunk.
    r.dial("acme", "01614960123").await;
    let other = next_invite(&r.itsp).await;
    assert!(
        other.uri().unwrap().starts_with("sip:+441614960123@"),
        "{other:?}"
    );
    r.itsp
        .send(&other.response(486, "Busy Here", Some("i2")))
        .await;
    assert_no_invite(&london, &[first.call_id()]).await;
    // An emergency call takes the catch-all first (London has no prefix
    // for it) and goes on to London whatever the failure (a busy here).
    r.dial("acme", "999").await;
    let first = next_invite_to(&r.itsp, "sip:999@").await;
    r.itsp
        .send(&first.response(486, "Busy Here", Some("e1")))
        .await;
    let second = next_invite_to(&london, "sip:999@").await;
    london
        .send(&second.response(486, "Busy Here", Some("e2")))
        .await;
    // Without the catch-all, a number no trunk takes finds no way out,
    // but an emergency call may take any trunk: it must never find none.
    console(
        &r.h,
        Op::TrunkRemove {
            tenant: "acme".into(),
            name: "itsp".into(),
        },
    )
    .await;
    r.dial("acme", "01614960123").await;
    let records = records_of(&r.h, 4).await;
    assert!(
        records
            .iter()
            .any(|c| c.callee == "+441614960123" && c.cause == "unavailable"),
        "{records:?}"
    );
    r.dial("acme", "999").await;
    let _emergency = loop {
        let m = next_invite_to(&london, "sip:999@").await;
        if m.call_id() != second.call_id() {
            break m;
        }
    };
    // Prefixes are E.164 or emergency digits.
    t.prefixes = vec!["44x".into()];
    let e =
        r.h.runtime()
            .set_trunk("acme", t, None, true)
            .await
            .unwrap_err();
    assert_eq!(e.code(), "invalid_trunk", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_numbers_never_reach_a_trunk_and_emergency_calls_pass_a_full_one() {
    let r = rig().await;
    // Numbers the plan reads as extensions (a premium short code, an
    // emergency look-alike) are the tenant's own: with no route they end
    // unavailable and never go out over the trunk (T1).
    for short in ["118118", "1120"] {
        let v = r.dial("acme", short).await;
        assert!(v["leg"].is_string(), "{short}: {v}");
    }
    assert_no_invite(&r.itsp, &[]).await;
    let records = records_of(&r.h, 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|c| c.cause == "unavailable" && c.trunk.is_none()),
        "{records:?}"
    );
    // The trunk full (max_calls 4, all ringing): an emergency call still
    // goes out over it.
    for n in 0..4 {
        r.dial("acme", &format!("0207946012{n}")).await;
        next_invite_to(&r.itsp, &format!("sip:+44207946012{n}@")).await;
    }
    r.dial("acme", "999").await;
    let emergency = next_invite_to(&r.itsp, "sip:999@").await;
    assert_eq!(emergency.method(), Some("INVITE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_calls_out_show_their_presentation_number_only_if_the_tenant_holds_it() {
    let r = rig().await;
    console(
        &r.h,
        Op::DialingSet {
            tenant: "acme".into(),
            dialing: Dialing {
                region: Some("GB".into()),
                presentation: [
                    ("u-ann".to_string(), DID.to_string()),
                    ("u-eve".to_string(), GLOBEX_DID.to_string()),
                ]
                .into(),
                ..Dialing::default()
            },
        },
    )
    .await;
    let from_of = |m: &Message| m.header("From").unwrap_or_default().to_string();
    for (user, shown) in [
        ("u-ann", DID),
        ("u-eve", "+442079460000"),
        ("u-nobody", "+442079460000"),
    ] {
        let r2 =
            r.h.post(
                "acme",
                "callflow",
                "u",
                &format!("/dial-as/{user}/call/02079460018"),
                b"",
            )
            .await
            .unwrap();
        assert_eq!(r2.status, 200, "{user}");
        let invite = next_invite(&r.itsp).await;
        assert!(
            from_of(&invite).contains(&format!("<sip:{shown}@")),
            "{user}: {}",
            from_of(&invite)
        );
        r.itsp
            .send(&invite.response(486, "Busy Here", Some("x")))
            .await;
    }
    // Over a managed trunk the tenant's own `+` routes prove nothing:
    // only the trunk's numbers show (the operator's contract).
    for (allowed, shown) in [(vec![DID.to_string()], DID), (Vec::new(), "+442079460000")] {
        let mut managed = trunk("itsp", &["127.0.0.1"], Some(r.itsp.local));
        managed.managed = true;
        managed.caller_ids = allowed;
        r.h.runtime()
            .set_trunk("acme", managed, None, true)
            .await
            .unwrap();
        let r2 =
            r.h.post(
                "acme",
                "callflow",
                "u",
                "/dial-as/u-ann/call/02079460018",
                b"",
            )
            .await
            .unwrap();
        assert_eq!(r2.status, 200);
        let invite = next_invite(&r.itsp).await;
        assert!(
            from_of(&invite).contains(&format!("<sip:{shown}@")),
            "managed: {}",
            from_of(&invite)
        );
        r.itsp
            .send(&invite.response(486, "Busy Here", Some("x")))
            .await;
    }
    // A malformed presentation number is refused when set.
    let bad = Dialing {
        presentation: [("u-ann".to_string(), "0207".to_string())].into(),
        ..Dialing::default()
    };
    let e = r.h.runtime().set_dialing("acme", bad).await.unwrap_err();
    assert_eq!(e.code(), "invalid_dialing", "{e}");
}

/// Asserts that `p` gets no INVITE for `QUIET` but those of the calls
/// `seen` sent again (other messages, e.g. ACKs of earlier answers, may
/// come).
async fn assert_no_invite(p: &Provider, seen: &[&str]) {
    let end = tokio::time::Instant::now() + QUIET;
    while let Some(m) = p
        .recv_within(end.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(
            m.method() != Some("INVITE") || seen.contains(&m.call_id()),
            "{m:?}"
        );
    }
}

/// acme's trunk `name` as the trunk list shows it.
fn shown_trunk(h: &Harness, name: &str) -> Value {
    h.runtime()
        .trunks("acme")
        .unwrap()
        .into_iter()
        .find(|t| t["name"] == name)
        .unwrap_or(Value::Null)
}

/// Waits until acme's trunk `name` shows its connection `state`, as
/// checked after `after_ms`.
async fn wait_connection(h: &Harness, name: &str, state: &str, after_ms: u64) -> Value {
    for _ in 0..500 {
        let c = shown_trunk(h, name)["connection"].clone();
        if c["state"] == state && c["checked_ms"].as_u64().is_some_and(|t| t > after_ms) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("connection never {state}: {}", shown_trunk(h, name));
}

/// Sets acme's trunk (no password).
async fn set_acme_trunk(h: &Harness, t: Trunk) {
    console(
        h,
        Op::TrunkSet {
            tenant: "acme".into(),
            trunk: t,
            password: None,
        },
    )
    .await;
}

/// Sets acme's trunk with `password`.
async fn set_acme_trunk_with(h: &Harness, t: Trunk, password: &str) {
    console(
        h,
        Op::TrunkSet {
            tenant: "acme".into(),
            trunk: t,
            password: Some(TrunkPassword(password.into())),
        },
    )
    .await;
}

/// acme's audit trail, as exported.
async fn acme_trail(h: &Harness) -> String {
    console(
        h,
        Op::AuditExport {
            realm: "acme".into(),
            after: 0,
            limit: 10_000,
        },
    )
    .await
    .to_string()
}

/// The SDES key (`inline:` parameters) of an SDP body.
fn sdes_key(sdp: &[u8]) -> switchboard::media::srtp::MasterKey {
    let text = String::from_utf8_lossy(sdp);
    let line = text
        .lines()
        .find(|l| l.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
        .unwrap_or_else(|| panic!("an SDES key: {text}"));
    let params = line.split_whitespace().nth(2).unwrap();
    switchboard::media::srtp::MasterKey::from_key_params(params).expect("a valid key")
}

/// The provider's ACK of our 2xx to its `invite`, over its connection.
fn conn_ack(p: &mut ProviderConn, invite: &Message, ok: &Message) -> Message {
    let mut ack = p.request("ACK", invite.uri().unwrap(), "442079461111", &[]);
    ack.headers.retain(|(n, _)| n != "To" && n != "CSeq");
    ack.push("To", ok.header("To").unwrap());
    ack.push("CSeq", format!("{} ACK", invite.cseq().unwrap().0));
    ack
}

/// The provider's BYE of a call the door placed (`invite`, answered by
/// the provider with To tag `tag`).
fn provider_bye(p: &ProviderConn, invite: &Message, tag: &str) -> Message {
    let contact = switchboard::sip::message::NameAddr::parse(invite.header("Contact").unwrap())
        .unwrap()
        .uri_text;
    let text = format!(
        "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/TLS {};branch=z9hG4bKbye{tag}\r\nMax-Forwards: 70\r\n\
         From: {};tag={tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        p.local,
        invite.header("To").unwrap(),
        invite.header("From").unwrap(),
        invite.call_id(),
    );
    Message::parse(text.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_trunk_keeps_a_verified_link_and_carries_srtp_calls_both_ways() {
    let r = rig().await;
    let proxy = ProxyListener::tls("127.0.0.4", "sip.provider.test").await;
    let mut t = trunk("itsp", &["127.0.0.4"], Some(proxy.addr));
    t.transport = TrunkTransport::Tls;
    t.domain = Some("sip.provider.test".into());
    t.tls_ca = Some(proxy.ca_pem.clone());
    set_acme_trunk(&r.h, t).await;
    // The door connects, verifies the provider's certificate for its
    // domain against the trunk's CA, and shows the link up.
    let mut p = proxy
        .accept_within(Duration::from_secs(10))
        .await
        .expect("the door links to the proxy");
    let shown = wait_connection(&r.h, "itsp", "up", 0).await;
    assert!(shown["local"].is_string(), "{shown}");
    assert!(shown_trunk(&r.h, "itsp")["tls_ca"].is_string());
    // A call in over the link: SRTP with fresh keys of ours.
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("sip:{PROMPT_DID}@acme.localhost");
    let invite = p.invite(&uri, "442079461111", rtp.local_addr().unwrap().port(), true);
    p.send(&invite).await;
    let ok = p.final_response().await.expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.body).contains("RTP/SAVP"),
        "{ok:?}"
    );
    let key = sdes_key(&ok.body);
    let ack = conn_ack(&mut p, &invite, &ok);
    p.send(&ack).await;
    // The prompt arrives as SRTP that the answer's key authenticates.
    let mut srtp = switchboard::media::srtp::Srtp::new(
        switchboard::media::srtp::Suite::AesCm128HmacSha1_80,
        &key,
    );
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), rtp.recv_from(&mut buf))
        .await
        .expect("SRTP from the host")
        .unwrap();
    let mut packet = buf[..n].to_vec();
    srtp.unprotect_rtp(&mut packet)
        .expect("authenticated with the key the answer gave");
    assert_eq!(packet.len(), 12 + 160, "20 ms of G.711");
    let mut bye = conn_ack(&mut p, &invite, &ok);
    bye.start = switchboard::sip::message::Start::Request {
        method: "BYE".into(),
        uri: uri.clone(),
    };
    bye.headers.retain(|(n, _)| n != "CSeq");
    bye.push("CSeq", format!("{} BYE", invite.cseq().unwrap().0 + 1));
    p.send(&bye).await;
    assert_eq!(p.final_response().await.unwrap().status(), Some(200));
    // Plain RTP on a trunk that wants SRTP is refused.
    p.new_call();
    let plain = p.invite(&uri, "442079461111", 40_000, false);
    p.send(&plain).await;
    let refused = p.final_response().await.expect("a refusal");
    assert_eq!(refused.status(), Some(488), "{refused:?}");
    // A call out goes over the link: TLS, the provider's domain, SRTP.
    let v = r.dial("acme", "020 7946 0123").await;
    assert!(v["leg"].is_string(), "{v}");
    let out = p.next_request().await.expect("an INVITE over the link");
    assert_eq!(out.method(), Some("INVITE"));
    assert!(
        out.header("Via").unwrap().starts_with("SIP/2.0/TLS "),
        "{out:?}"
    );
    assert!(
        out.uri()
            .unwrap()
            .starts_with("sip:+442079460123@sip.provider.test"),
        "{out:?}"
    );
    let offered = String::from_utf8_lossy(&out.body).to_string();
    assert!(offered.contains("RTP/SAVP"), "{offered}");
    let ours = sdes_key(&out.body);
    let mut answer = out.response(200, "OK", Some("prov1"));
    answer.push("Contact", format!("<sip:gw@{};transport=tls>", p.local));
    answer.push("Content-Type", "application/sdp");
    answer.body =
        switchboard_tests::sip::offer(rtp.local_addr().unwrap().port(), true).into_bytes();
    p.send(&answer).await;
    let acked = p.next_request().await.expect("our ACK");
    assert_eq!(acked.method(), Some("ACK"), "{acked:?}");
    assert!(!ours.same_as(&key), "a fresh key per call");
    // The provider hangs up; the call's record names the trunk, secure.
    p.send(&provider_bye(&p, &out, "prov1")).await;
    assert_eq!(p.final_response().await.unwrap().status(), Some(200));
    let records = records_of(&r.h, 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for rec in &records {
        assert_eq!(rec.trunk.as_deref(), Some("itsp"), "{rec:?}");
        assert!(rec.secure, "{rec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_tls_trunks_hear_only_their_transport_and_trust_only_their_provider() {
    let r = rig().await;
    // A certificate for another name than the trunk expects: the link
    // never comes up, and nothing goes out over it.
    let proxy = ProxyListener::tls("127.0.0.4", "sip.provider.test").await;
    let mut t = trunk("itsp", &["127.0.0.4"], Some(proxy.addr));
    t.transport = TrunkTransport::Tls;
    t.tls_name = Some("other.provider.test".into());
    t.tls_ca = Some(proxy.ca_pem.clone());
    set_acme_trunk(&r.h, t.clone()).await;
    assert!(
        proxy.accept_within(Duration::from_secs(5)).await.is_none(),
        "no handshake completes"
    );
    let down = wait_connection(&r.h, "itsp", "down", 0).await;
    assert!(
        down["reason"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{down}"
    );
    let first_ms = down["checked_ms"].as_u64().unwrap();
    // Nor without the trunk's CA (Mozilla's roots do not hold it).
    t.tls_name = None;
    t.domain = Some("sip.provider.test".into());
    t.tls_ca = None;
    set_acme_trunk(&r.h, t).await;
    assert!(proxy.accept_within(Duration::from_secs(5)).await.is_none());
    let down = wait_connection(&r.h, "itsp", "down", first_ms).await;
    assert!(
        down["reason"].as_str().unwrap().contains("UnknownIssuer"),
        "{down}"
    );
    // With no link up, a call out finds no way out.
    let v = r.dial("acme", "020 7946 0123").await;
    assert!(v["leg"].is_string(), "{v}");
    let records = records_of(&r.h, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].cause, "unavailable", "{records:?}");
    // A TLS trunk's provider connecting to the door is heard from its
    // address, over TLS, with SRTP.
    let mut edge = trunk("edge", &["127.0.0.5"], None);
    edge.transport = TrunkTransport::Tls;
    set_acme_trunk(&r.h, edge).await;
    let mut p = ProviderConn::connect(r.trunk_tls, "127.0.0.5".parse().unwrap(), true).await;
    let uri = format!("sip:{DID}@acme.localhost");
    let invite = p.invite(&uri, "442079461111", 40_000, true);
    p.send(&invite).await;
    let ok = p.final_response().await.expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.body).contains("RTP/SAVP"));
    // The devices' port never takes a provider: there the same address
    // is a device's, challenged like any.
    let mut as_device = ProviderConn::connect(r.tls, "127.0.0.5".parse().unwrap(), true).await;
    as_device.new_call();
    let at_devices = as_device.invite(&uri, "442079461111", 40_006, true);
    as_device.send(&at_devices).await;
    let challenged = as_device.final_response().await.expect("a challenge");
    assert_eq!(challenged.status(), Some(407), "{challenged:?}");
    // An address no TLS trunk allows is closed unheard on the trunks'
    // TLS port: not even the handshake.
    let stranger_tls =
        ProviderConn::try_connect(r.trunk_tls, "127.0.0.8".parse().unwrap(), true).await;
    assert!(stranger_tls.is_none(), "no handshake for a stranger");
    // (While the allowed provider's handshake there succeeds.)
    assert!(
        ProviderConn::try_connect(r.trunk_tls, "127.0.0.5".parse().unwrap(), true)
            .await
            .is_some()
    );
    // From the same address over UDP it is not heard at all.
    let mut stranger = Provider::bind("127.0.0.5", r.udp).await;
    let udp_invite = stranger.invite(&uri, "442079461111", 40_002);
    stranger.send(&udp_invite).await;
    assert!(stranger.recv_within(QUIET).await.is_none(), "UDP dropped");
    // A TCP trunk: heard on the trunks' port over TCP, plain RTP only
    // (keys never travel in clear).
    let mut wire = trunk("wire", &["127.0.0.6"], None);
    wire.transport = TrunkTransport::Tcp;
    set_acme_trunk(&r.h, wire.clone()).await;
    let mut c = ProviderConn::connect(r.udp, "127.0.0.6".parse().unwrap(), false).await;
    let keyed = c.invite(&uri, "442079461111", 40_004, true);
    c.send(&keyed).await;
    let refused = c.final_response().await.expect("a refusal");
    assert_keys_in_clear_refused(&refused);
    c.new_call();
    let plain = c.invite(&uri, "442079461111", 40_004, false);
    c.send(&plain).await;
    let ok = c.final_response().await.expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.body).contains("RTP/AVP"));
    // An address no TCP trunk allows is closed unheard.
    let mut other = ProviderConn::connect(r.udp, "127.0.0.7".parse().unwrap(), false).await;
    let options = other.request("OPTIONS", &uri, "442079461111", &[]);
    other.send(&options).await;
    assert!(other.recv().await.is_none(), "closed unheard");
    // SRTP is for TLS trunks only; a TLS name or CA too.
    wire.srtp = Some(true);
    let e =
        r.h.runtime()
            .set_trunk("acme", wire.clone(), None, false)
            .await
            .unwrap_err();
    assert_eq!(e.code(), "invalid_trunk", "{e}");
    wire.srtp = None;
    wire.tls_name = Some("x.example".into());
    let e =
        r.h.runtime()
            .set_trunk("acme", wire, None, false)
            .await
            .unwrap_err();
    assert_eq!(e.code(), "invalid_trunk", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_trunk_registers_over_its_link_and_again_after_the_link_drops() {
    let r = rig().await;
    let proxy = ProxyListener::tcp("127.0.0.4").await;
    let mut t = trunk("itsp", &["127.0.0.4"], Some(proxy.addr));
    t.transport = TrunkTransport::Tcp;
    t.register = true;
    t.domain = Some("sip.itsp.example".into());
    set_acme_trunk_with(&r.h, t, "pr0vider-secret").await;
    for round in 0..2 {
        // (Round 1: the link was up less than a minute, so the door
        // waits its first back-off, 5 s, before connecting again.)
        let mut p = proxy
            .accept_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("round {round}: the door links"));
        // The REGISTER comes over the link, with the link's own address
        // as the contact (the provider reaches us back over it).
        let reg = p.next_request().await.expect("a REGISTER");
        assert_eq!(reg.method(), Some("REGISTER"), "{reg:?}");
        assert!(reg.header("Via").unwrap().starts_with("SIP/2.0/TCP "));
        let contact = format!("<sip:acct-7@{};transport=tcp>", p.peer);
        assert_eq!(
            reg.header("Contact"),
            Some(contact.as_str()),
            "round {round}"
        );
        let realm = "itsp.example";
        let mut challenge = reg.response(401, "Unauthorized", Some("r1"));
        challenge.push(
            "WWW-Authenticate",
            format!("Digest realm=\"{realm}\", nonce=\"r3g\", qop=\"auth\", algorithm=MD5"),
        );
        p.send(&challenge).await;
        let authed = p.next_request().await.expect("the REGISTER again");
        let creds = authed.header("Authorization").unwrap().to_string();
        assert_eq!(
            challenge_param(&creds, "response").unwrap(),
            md5_response(&creds, realm, "r3g", "REGISTER")
        );
        let mut ok = authed.response(200, "OK", Some("r1"));
        ok.push("Contact", format!("{contact};expires=600"));
        p.send(&ok).await;
        wait_registration(&r.h, "registered").await;
        // A call to the contact over the link reaches the DID in To.
        let mut invite = p.invite(
            &format!("sip:acct-7@{};transport=tcp", p.peer),
            "442079461111",
            40_010 + round,
            false,
        );
        invite.headers.retain(|(n, _)| n != "To");
        invite.push("To", format!("<sip:{DID}@sip.itsp.example>"));
        p.send(&invite).await;
        let answered = p.final_response().await.expect("an answer");
        assert_eq!(answered.status(), Some(200), "{answered:?}");
        // The provider drops the connection: the door links again (the
        // next round's accept) and registers its new contact there.
        drop(p);
    }
    // Both changes of the link's state are in the trail.
    let trail = acme_trail(&r.h).await;
    assert!(trail.contains("trunk.connect"), "{trail}");
    assert!(trail.contains("the connection closed"), "{trail}");
}
