//! The operations kit (issue 19 item 7): the systemd unit in `dist/` is
//! hardened as documented, and its command line is one this binary takes.

use std::path::Path;

use clap::Parser as _;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/switchboard.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = unit();
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/switchboard"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("User", "switchboard"),
        ("UMask", "0077"),
    ] {
        assert_eq!(values(&unit, key), [want], "{key}");
    }
    // Plugin threads lower their priority with setpriority(2), in
    // @resources: the filter must not deny it.
    let denied = values(&unit, "SystemCallFilter").join(" ");
    assert!(
        denied.contains("~@privileged") && !denied.contains("@resources"),
        "{denied}"
    );
}

#[test]
fn the_units_command_line_is_one_the_binary_takes() {
    let unit = unit();
    let exec = values(&unit, "ExecStart").pop().expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert!(args[0].ends_with("/switchboard"));
    let cli = switchboard::cli::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
    let data = match cli.command {
        switchboard::cli::Command::Serve { data, .. } => data,
        other => panic!("ExecStart runs {other:?}, not serve"),
    };
    assert_eq!(
        data.as_deref(),
        Some(Path::new(&values(&unit, "ReadWritePaths")[0])),
        "the data folder is the one writable path"
    );
}

#[test]
fn systemd_accepts_the_unit() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/switchboard.service"))
        .output()
    else {
        eprintln!(
            "systemd-analyze is not installed here; the unit's syntax was not checked by systemd"
        );
        return;
    };
    // The binary is not installed at its path on a build machine; every
    // other complaint is a fault of the unit.
    let text = String::from_utf8_lossy(&out.stderr);
    let faults: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("is not executable") && !l.trim().is_empty())
        .collect();
    assert!(faults.is_empty(), "{faults:?}");
}
