//! The partner loop (SPEC P2): `plugin new NAME` scaffolds a plugin crate;
//! `plugin dev` builds it, signs it with a local development key, installs
//! it into the running server as a dev build, enables it for a tenant and
//! prints where its routes are.
//!
//! A dev build's version is the manifest's with `-dev.N` (N one above the
//! newest dev build of that version the server has), so each run is an
//! upgrade; a tenant that already ran a higher version refuses it
//! (`rollback_refused`), which `plugin dev` reports and never overrides.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use switchboard_signing::{KeyId, Manifest, keys};

use super::{DataArgs, admin_op, key_err, read};
use crate::admin::Op;
use crate::support::encoding::Base64Bytes;

/// The SDK of the source tree this binary was built from, if it is still
/// there.
fn built_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    sdk.join("Cargo.toml")
        .exists()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

/// Where the SDK dependency of a new crate points.
pub(super) enum SdkSource {
    Path(PathBuf),
    Git(String),
}

/// `plugin new`: writes the crate `dir/name`; refuses an existing folder.
pub(super) fn new_plugin(name: &str, dir: &Path, sdk: Option<SdkSource>) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("{name:?} is not a plugin name: 1-32 of [a-z0-9-], starting with a letter");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists; plugin new never overwrites a folder",
            root.display()
        );
    }
    let sdk = match sdk.or_else(|| built_sdk().map(SdkSource::Path)) {
        Some(s) => s,
        None => bail!(
            "cannot find the switchboard SDK this binary was built from; pass --sdk PATH (the sdk/ folder of a Switchboard checkout) or --sdk-git URL"
        ),
    };
    let (dep, dep_harness, note, lock) = match &sdk {
        SdkSource::Path(p) => {
            let p = p
                .canonicalize()
                .with_context(|| format!("the SDK folder {} does not exist", p.display()))?;
            if !p.join("Cargo.toml").exists() {
                bail!("{} has no Cargo.toml: not the SDK's folder", p.display());
            }
            let path = toml_string(&p.display().to_string());
            (
                format!("{{ path = {path} }}"),
                format!("{{ path = {path}, features = [\"harness\"] }}"),
                format!("the path {}", p.display()),
                // The versions the SDK's own workspace is tested with.
                p.parent()
                    .map(|w| w.join("Cargo.lock"))
                    .filter(|l| l.exists()),
            )
        }
        SdkSource::Git(url) => {
            let url = toml_string(url);
            (
                format!("{{ git = {url} }}"),
                format!("{{ git = {url}, features = [\"harness\"] }}"),
                format!("the git repository {url}"),
                None,
            )
        }
    };
    // Notes go into comments and Markdown: one line, no control characters.
    let note: String = note.chars().filter(|c| !c.is_control()).collect();
    let values = [
        ("name", name),
        ("api", crate::kernel::v0_3::API_VERSION),
        ("sdk_harness", dep_harness.as_str()),
        ("sdk_note", note.as_str()),
        ("sdk", dep.as_str()),
    ];
    let fill = |template: &str| fill(template, &values);
    let files: [(&str, &str); 6] = [
        (
            "Cargo.toml",
            include_str!("../../templates/plugin/Cargo.toml.tmpl"),
        ),
        (
            "plugin.toml",
            include_str!("../../templates/plugin/plugin.toml.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("../../templates/plugin/lib.rs.tmpl"),
        ),
        (
            "tests/harness.rs",
            include_str!("../../templates/plugin/harness.rs.tmpl"),
        ),
        (
            "README.md",
            include_str!("../../templates/plugin/README.md.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("../../templates/plugin/gitignore.tmpl"),
        ),
    ];
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Created, not opened: a folder that appeared meanwhile is refused.
    std::fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
    for (file, template) in files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, fill(template))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(lock) = lock {
        std::fs::copy(&lock, root.join("Cargo.lock"))
            .with_context(|| format!("cannot copy {}", lock.display()))?;
    }
    println!("created plugin crate {} (SDK: {note})", root.display());
    println!("next, with `switchboard serve` running on this machine:");
    println!(
        "  cd {} && switchboard plugin dev --tenant TENANT --trust-dev-key",
        root.display()
    );
    Ok(())
}

/// `template` with each `{{key}}` replaced by its value, in one pass (a
/// value is never read as a template).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| {
            let key = &after[..end];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// 1-32 of [a-z0-9-], starting with a letter (the manifest's rule).
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `plugin dev` is asked to do.
pub(super) struct DevArgs {
    pub data: DataArgs,
    pub path: PathBuf,
    pub tenant: String,
    pub key: Option<PathBuf>,
    pub trust_dev_key: bool,
    pub target_dir: Option<PathBuf>,
}

/// The development key's default place: `$XDG_CONFIG_HOME/switchboard/`
/// or `~/.config/switchboard/`.
fn default_key() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set; pass --key")?;
    Ok(base.join("switchboard").join("dev.key"))
}

/// The development key at `path`, created (0600, in a 0700 folder) on
/// first use.
fn dev_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if path.exists() {
        return keys::read_secret(path).map_err(key_err);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        // A folder made here is private; an existing one is left alone.
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let key = keys::generate().map_err(key_err)?;
    keys::write_key_pair(&key, path).map_err(key_err)?;
    println!(
        "created development key {} (key id {})",
        path.display(),
        KeyId::of(&key.verifying_key())
    );
    Ok(key)
}

/// The data folder of the server `plugin dev` talks to: `--data` (or the
/// config file's), else the nearest `switchboard-data` with a control
/// socket in the crate's folder or above it (`plugin new` runs where the
/// server's folder is; `plugin dev` in the crate below). A server must be
/// running on it: a dev build goes into the running server, never into a
/// folder opened on the side.
async fn running_server(data: &DataArgs, crate_dir: &Path) -> anyhow::Result<PathBuf> {
    let folder = if data.data.is_some() || data.server_config.is_some() {
        data.dir()?
    } else {
        let start = crate_dir
            .canonicalize()
            .unwrap_or_else(|_| crate_dir.to_path_buf());
        start
            .ancestors()
            .map(|d| d.join("switchboard-data"))
            .find(|d| crate::control::socket_path(d).exists())
            .with_context(|| {
                format!(
                    "no running server found: no switchboard-data/control.sock in {} or above it; start `switchboard serve` or pass --data with the running server's data folder",
                    start.display()
                )
            })?
    };
    match crate::control::send(&folder, &crate::control::ControlRequest::Info).await {
        Some(Ok(_)) => Ok(folder),
        _ => bail!(
            "no server runs on {}: start `switchboard serve` there (plugin dev installs into the running server)",
            folder.display()
        ),
    }
}

/// `plugin dev`.
pub(super) async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let folder = running_server(&args.data, &args.path).await?;
    args.data.data = Some(folder);
    let manifest_file = args.path.join("plugin.toml");
    let manifest_text = String::from_utf8(read(&manifest_file)?)
        .with_context(|| format!("{} is not UTF-8", manifest_file.display()))?;
    let manifest = Manifest::parse(manifest_text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e} ({})", manifest_file.display(), e.code()))?;
    let name = manifest.name.clone();

    // The next dev build of this version.
    let installed = admin_op(&args.data, Op::PluginList).await?;
    let version = next_dev_version(&manifest.version, &name, &installed);
    let manifest_bytes = with_version(&manifest_text, &version)?;

    // Sign with the development key; trust it only when told to.
    let key_path = match args.key {
        Some(k) => k,
        None => default_key()?,
    };
    let key = dev_key(&key_path)?;
    let id = KeyId::of(&key.verifying_key()).to_string();
    let trust = admin_op(&args.data, Op::TrustList).await?;
    let trusted = trust["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["key_id"] == id.as_str());
    if trusted.is_some_and(|k| !k["revoked_ms"].is_null()) {
        bail!(
            "your development key {id} ({}) was revoked on this server; revocation is permanent: move the key file away and run again for a new one",
            key_path.display()
        );
    }
    let trusted = trusted.is_some();
    if !trusted {
        if !args.trust_dev_key {
            bail!(
                "the server does not trust your development key {id} ({}); re-run with --trust-dev-key to trust it (recorded in the audit trail)",
                key_path.display()
            );
        }
        let public_key = keys::public_key_text(&key.verifying_key());
        let label = "development key (plugin dev)".to_string();
        admin_op(&args.data, Op::TrustAdd { public_key, label }).await?;
        println!("trusted development key {id}");
    }
    // Build.
    println!("building {name} for wasm32-wasip2 …");
    let wasm = crate::harness::Harness::build_plugin_into(&args.path, args.target_dir.as_deref())?;
    let component = read(&wasm)?;
    let package = crate::harness::sign(&key, &manifest_bytes, &component)
        .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;

    // Install and enable with what the manifest asks for.
    let v = admin_op(
        &args.data,
        Op::PluginInstall {
            package: Base64Bytes(package),
        },
    )
    .await?;
    println!(
        "installed {name} {version} (sha256 {})",
        v["digest"].as_str().unwrap_or("")
    );
    let grants = manifest
        .capabilities
        .iter()
        .map(|c| c.interface().to_string())
        .collect();
    let enabled = admin_op(
        &args.data,
        Op::PluginEnable {
            tenant: args.tenant.clone(),
            name: name.clone(),
            version: version.to_string(),
            grants: Some(grants),
            config: None,
            allow_rollback: false,
        },
    )
    .await;
    if let Err(e) = enabled {
        if e.to_string().contains("rollback_refused") {
            bail!(
                "{e}\n{} has run a higher version of {name} than {version}: raise `version` in plugin.toml (dev builds never roll a tenant back)",
                args.tenant
            );
        }
        if e.to_string().contains("tenant_not_found") {
            bail!(
                "{e}\ncreate it first: switchboard tenant create {}",
                args.tenant
            );
        }
        return Err(e);
    }
    let base = server_url(&args.data).await;
    println!("enabled {name} {version} for {}", args.tenant);
    println!(
        "routes: {base}/api/v1/t/{}/p/{name}/…  (e.g. {base}/api/v1/t/{}/p/{name}/hello)",
        args.tenant, args.tenant
    );
    Ok(())
}

/// The version for the next dev build: the manifest's with `-dev.N`, N one
/// above the highest dev build of the same version installed.
fn next_dev_version(
    base: &semver::Version,
    name: &str,
    installed: &serde_json::Value,
) -> semver::Version {
    let prefix = if base.pre.is_empty() {
        "dev.".to_string()
    } else {
        format!("{}.dev.", base.pre)
    };
    let highest = installed["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["version"].as_str()?.parse::<semver::Version>().ok())
        .filter(|v| (v.major, v.minor, v.patch) == (base.major, base.minor, base.patch))
        .filter_map(|v| v.pre.as_str().strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut v = base.clone();
    v.pre = semver::Prerelease::new(&format!("{prefix}{}", highest + 1)).unwrap_or_default();
    v.build = semver::BuildMetadata::EMPTY;
    v
}

/// The manifest text with its top-level `version` set to `version`.
fn with_version(text: &str, version: &semver::Version) -> anyhow::Result<Vec<u8>> {
    let mut done = false;
    let mut out = String::new();
    for line in text.lines() {
        let top_level = !done && !line.trim_start().starts_with('[');
        if top_level
            && let Some(rest) = line.trim_start().strip_prefix("version")
            && rest.trim_start().starts_with('=')
        {
            out.push_str(&format!("version = \"{version}\"\n"));
            done = true;
            continue;
        }
        if line.trim_start().starts_with('[') {
            done = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !out.contains(&format!("version = \"{version}\"")) {
        bail!("plugin.toml has no top-level `version = \"…\"` line to set");
    }
    Ok(out.into_bytes())
}

/// The URL clients reach the server at: what the running server says, else
/// the default listen address.
async fn server_url(data: &DataArgs) -> String {
    let fallback = "https://127.0.0.1:8443".to_string();
    let Ok(dir) = data.dir() else { return fallback };
    match crate::control::send(&dir, &crate::control::ControlRequest::Info).await {
        Some(Ok(answer)) if answer.ok => answer.message,
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_builds_count_up_from_what_is_installed() {
        let base: semver::Version = "0.3.0".parse().unwrap();
        let none = serde_json::json!({"plugins": []});
        assert_eq!(
            next_dev_version(&base, "p", &none).to_string(),
            "0.3.0-dev.1"
        );
        let some = serde_json::json!({"plugins": [
            {"name": "p", "version": "0.3.0-dev.1"},
            {"name": "p", "version": "0.3.0-dev.9"},
            {"name": "p", "version": "0.2.0-dev.40"},
            {"name": "q", "version": "0.3.0-dev.70"},
            {"name": "p", "version": "0.3.0"},
        ]});
        let next = next_dev_version(&base, "p", &some);
        assert_eq!(next.to_string(), "0.3.0-dev.10");
        assert!(next > "0.3.0-dev.9".parse().unwrap() && next < base);
    }

    #[test]
    fn the_version_line_is_replaced_and_nothing_else() {
        let text = "name = \"p\"\nversion = \"0.1.0\"\n[config.version]\nversion = \"x\"\n";
        let v: semver::Version = "0.1.0-dev.2".parse().unwrap();
        let out = String::from_utf8(with_version(text, &v).unwrap()).unwrap();
        assert_eq!(
            out,
            "name = \"p\"\nversion = \"0.1.0-dev.2\"\n[config.version]\nversion = \"x\"\n"
        );
        assert!(with_version("name = \"p\"\n", &v).is_err());
    }

    #[test]
    fn templates_are_filled_in_one_pass() {
        let values = [("a", "{{b}}"), ("b", "x")];
        assert_eq!(
            fill("[{{a}}] {{b}} {{c}} {{", &values),
            "[{{b}}] x {{c}} {{"
        );
    }

    #[test]
    fn names_follow_the_manifest_rule() {
        assert!(valid_name("greeter") && valid_name("a-1"));
        for bad in ["", "1a", "A", "a_b", "a/b", "..", &"a".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
