//! SIPp (Debian's `sip-tester`, installed by the README's test command
//! through `tests/tools/install-peers.sh`) as a trunk's provider over
//! UDP: its built-in `uac` and `uas` scenarios and ours in `tests/sipp/`.
//! Each run is bounded (`-timeout`, and a kill after it); the exit status
//! says whether every call went as the scenario says (0) or not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

/// The binary, looked up on `PATH`.
const SIPP: &str = "sipp";

/// What one run left.
#[derive(Debug)]
pub struct Run {
    /// SIPp's exit status: 0 when every call succeeded.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// What `-trace_err` wrote (unexpected messages), if anything.
    pub errors: String,
}

impl Run {
    /// Whether every call went as the scenario says.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// A scenario of ours, by file name.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
}

/// Fails, naming the install script, if SIPp is missing.
pub fn require() {
    let found = std::process::Command::new(SIPP).arg("-v").output().is_ok();
    assert!(
        found,
        "sipp is not installed: run `bash {}` (the README's test command does)",
        crate::baresip::INSTALL_SCRIPT
    );
}

/// Runs SIPp from `local` (an IP of ours) with `args`, against `remote`
/// if given, for at most `limit`. The future owns everything (it can be
/// spawned while the test drives the other side).
pub fn run(
    local: &str,
    remote: Option<SocketAddr>,
    args: &[&str],
    limit: Duration,
) -> impl std::future::Future<Output = Run> + Send + 'static {
    require();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let errors = dir.path().join("errors.log");
    let mut cmd = Command::new(SIPP);
    if let Some(r) = remote {
        cmd.arg(r.to_string());
    }
    cmd.args(["-i", local, "-t", "u1", "-nostdin", "-trace_err"])
        .arg("-error_file")
        .arg(&errors)
        .arg("-timeout")
        .arg(format!("{}s", limit.as_secs().max(1)))
        .args(args)
        .current_dir(dir.path())
        .kill_on_drop(true);
    async move {
        let out = tokio::time::timeout(limit + Duration::from_secs(5), cmd.output()).await;
        let out = match out {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => panic!("sipp did not start: {e}"),
            Err(_) => panic!("sipp ran past {limit:?} and its own -timeout"),
        };
        let errors = std::fs::read_to_string(&errors).unwrap_or_default();
        drop(dir);
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            errors,
        }
    }
}

/// A free UDP port on `ip` (for a SIPp that listens).
pub fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind(format!("{ip}:0"))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
