//! The plugin manifest: what a plugin is, which API version it targets,
//! which capabilities it asks for, which plugins it calls, which routes are
//! public, and the schema of the settings a tenant admin may give it.
//!
//! Parsed from `plugin.toml` (TOML, strict: unknown fields are refused) and
//! validated as a whole before anything else looks at it. The signed package
//! format (SPEC S1) wraps this manifest; the host trusts nothing in it that
//! `Manifest::parse` has not checked.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest manifest accepted, in bytes: a manifest is metadata, not content.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Most config settings a manifest may declare.
pub const MAX_SETTINGS: usize = 128;
/// Most dependencies a manifest may declare.
pub const MAX_DEPENDENCIES: usize = 32;
/// Most public routes a manifest may declare.
pub const MAX_PUBLIC_ROUTES: usize = 64;

/// Plugin API versions (`switchboard:plugin@X`) this crate knows. The host
/// decides which of them it can link (SPEC K8).
pub const KNOWN_API_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0"];

/// A parsed, validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: lower-case letters, digits and `-`, 1–32 chars, starting
    /// with a letter. Unique within a host; it is the mount point in URLs.
    pub name: String,
    /// Semantic version of this build of the plugin.
    pub version: semver::Version,
    /// The `switchboard:plugin` WIT version the component was built against.
    pub api_version: semver::Version,
    /// One line for operators and admins.
    #[serde(default)]
    pub description: String,
    /// Capabilities the component may import (SPEC K3).
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Hosts (`name` or `name:port`) the plugin may reach through
    /// `http-client` (SPEC N2).
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    /// Other plugins of the same tenant this one calls, with version ranges.
    #[serde(default)]
    pub dependencies: BTreeMap<String, semver::VersionReq>,
    /// Routes reachable without a session, as `METHOD /path` where the path
    /// may end in `/*` to match a subtree.
    #[serde(default)]
    pub public_routes: Vec<String>,
    /// Settings a tenant admin may give the plugin (the `config` capability).
    #[serde(default)]
    pub config: BTreeMap<String, Setting>,
    /// Key id of the publisher that signs the package. Set by `sign`; a
    /// `plugin.toml` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// SHA-256 of the component, hex. Set by `sign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_sha256: Option<String>,
}

/// A host capability, one per `switchboard:host` or
/// `switchboard:telephony` interface (the manifest name is the interface
/// name; [`Capability::package`] tells the package).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Capability {
    Kv,
    Log,
    Config,
    Timers,
    Plugins,
    Blobs,
    Identity,
    Crypto,
    Events,
    HttpClient,
    Audit,
    /// `switchboard:telephony/calls`: the plugin's own call legs.
    Calls,
    /// `switchboard:telephony/dial`: placing calls (every one through the
    /// dialing policy, SPEC T1).
    Dial,
    /// `switchboard:telephony/mwi`: message-waiting counts.
    Mwi,
}

impl Capability {
    /// Every capability, in WIT order.
    pub const ALL: [Capability; 14] = [
        Capability::Kv,
        Capability::Log,
        Capability::Config,
        Capability::Timers,
        Capability::Plugins,
        Capability::Blobs,
        Capability::Identity,
        Capability::Crypto,
        Capability::Events,
        Capability::HttpClient,
        Capability::Audit,
        Capability::Calls,
        Capability::Dial,
        Capability::Mwi,
    ];

    /// The WIT interface name (`kv`, `http-client`, ...).
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Kv => "kv",
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Timers => "timers",
            Capability::Plugins => "plugins",
            Capability::Blobs => "blobs",
            Capability::Identity => "identity",
            Capability::Crypto => "crypto",
            Capability::Events => "events",
            Capability::HttpClient => "http-client",
            Capability::Audit => "audit",
            Capability::Calls => "calls",
            Capability::Dial => "dial",
            Capability::Mwi => "mwi",
        }
    }

    /// The WIT package of the interface.
    pub fn package(self) -> &'static str {
        match self {
            Capability::Calls | Capability::Dial | Capability::Mwi => "switchboard:telephony",
            _ => "switchboard:host",
        }
    }

    /// The capability whose WIT interface is called `name`.
    pub fn from_interface(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.interface() == name)
    }

    /// The capability whose interface is `name` in `package`.
    pub fn from_package_interface(package: &str, name: &str) -> Option<Capability> {
        Capability::from_interface(name).filter(|c| c.package() == package)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// One tenant setting: its type, default and bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Setting {
    #[serde(rename = "type")]
    pub kind: SettingKind,
    /// The value when the admin gave none; must itself be valid.
    pub default: serde_json::Value,
    #[serde(default)]
    pub description: String,
    /// Inclusive bounds for integers.
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    /// Longest string accepted, in bytes (default 1024).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// For strings: the only values accepted, when given.
    #[serde(default, rename = "one-of")]
    pub one_of: Option<Vec<String>>,
}

/// The JSON type a setting holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettingKind {
    Bool,
    Integer,
    String,
}

/// Why a manifest or a tenant's config was refused. Each variant has a
/// stable code (`ManifestError::code`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest is larger than `MAX_MANIFEST_BYTES`.
    #[error("manifest is {0} bytes; the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge(usize),
    /// The bytes are not UTF-8 TOML of the manifest's shape.
    #[error("manifest is not valid: {0}")]
    Malformed(String),
    /// The plugin name breaks the naming rule.
    #[error(
        "plugin name {0:?} is invalid: use 1-32 lower-case letters, digits or '-', starting with a letter"
    )]
    InvalidName(String),
    /// The API version is not one this release knows.
    #[error("plugin API version {0} is not supported; supported: {supported}", supported = KNOWN_API_VERSIONS.join(", "))]
    UnsupportedApiVersion(String),
    /// A capability is listed twice.
    #[error("capability {0} is listed twice")]
    DuplicateCapability(Capability),
    /// A field is inconsistent with another or out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// A tenant setting is unknown, of the wrong type or out of bounds.
    #[error("setting {key:?}: {reason}")]
    InvalidSetting { key: String, reason: String },
}

impl ManifestError {
    /// Stable machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::TooLarge(_) => "manifest_too_large",
            ManifestError::Malformed(_) => "manifest_malformed",
            ManifestError::InvalidName(_) => "manifest_invalid_name",
            ManifestError::UnsupportedApiVersion(_) => "unsupported_api_version",
            ManifestError::DuplicateCapability(_) => "manifest_duplicate_capability",
            ManifestError::Invalid(_) => "manifest_invalid",
            ManifestError::InvalidSetting { .. } => "invalid_setting",
        }
    }
}

impl Manifest {
    /// Parses and validates a `plugin.toml`.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ManifestError::Malformed(format!("not UTF-8: {e}")))?;
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Malformed(e.message().to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule a parsed manifest must meet.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !is_valid_name(&self.name) {
            return Err(ManifestError::InvalidName(self.name.clone()));
        }
        let api = self.api_version.to_string();
        if !KNOWN_API_VERSIONS.contains(&api.as_str()) {
            return Err(ManifestError::UnsupportedApiVersion(api));
        }
        let mut seen = Vec::with_capacity(self.capabilities.len());
        for cap in &self.capabilities {
            if seen.contains(cap) {
                return Err(ManifestError::DuplicateCapability(*cap));
            }
            seen.push(*cap);
        }
        if self.dependencies.len() > MAX_DEPENDENCIES {
            return Err(ManifestError::Invalid(format!(
                "{} dependencies declared; the limit is {MAX_DEPENDENCIES}",
                self.dependencies.len()
            )));
        }
        for dep in self.dependencies.keys() {
            if !is_valid_name(dep) {
                return Err(ManifestError::InvalidName(dep.clone()));
            }
            if *dep == self.name {
                return Err(ManifestError::Invalid(format!(
                    "plugin {dep:?} cannot depend on itself"
                )));
            }
        }
        if !self.dependencies.is_empty() && !self.capabilities.contains(&Capability::Plugins) {
            return Err(ManifestError::Invalid(
                "dependencies are declared but the `plugins` capability is not requested".into(),
            ));
        }
        if !self.outbound_hosts.is_empty() && !self.capabilities.contains(&Capability::HttpClient) {
            return Err(ManifestError::Invalid(
                "outbound-hosts are declared but the `http-client` capability is not requested"
                    .into(),
            ));
        }
        for host in &self.outbound_hosts {
            // `name`, `name:port` or `name:*` (any port of that host).
            let (name, port) = match host.rsplit_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (host.as_str(), None),
            };
            let name_ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
            let port_ok = port.is_none_or(|p| p == "*" || p.parse::<u16>().is_ok_and(|n| n > 0));
            if !name_ok || !port_ok {
                return Err(ManifestError::Invalid(format!(
                    "outbound host {host:?} is not a host name, host:port or host:*"
                )));
            }
        }
        if self.public_routes.len() > MAX_PUBLIC_ROUTES {
            return Err(ManifestError::Invalid(format!(
                "{} public routes declared; the limit is {MAX_PUBLIC_ROUTES}",
                self.public_routes.len()
            )));
        }
        for route in &self.public_routes {
            PublicRoute::from_str(route)?;
        }
        if self.config.len() > MAX_SETTINGS {
            return Err(ManifestError::Invalid(format!(
                "{} settings declared; the limit is {MAX_SETTINGS}",
                self.config.len()
            )));
        }
        for (key, setting) in &self.config {
            if !is_valid_setting_key(key) {
                return Err(ManifestError::InvalidSetting {
                    key: key.clone(),
                    reason: "setting names use lower-case letters, digits, '-' and '_' (1-64)"
                        .into(),
                });
            }
            setting
                .check(&setting.default)
                .map_err(|reason| ManifestError::InvalidSetting {
                    key: key.clone(),
                    reason: format!("default is invalid: {reason}"),
                })?;
        }
        Ok(())
    }

    /// Whether `method path` is one of the manifest's public routes.
    pub fn is_public_route(&self, method: &str, path: &str) -> bool {
        self.public_routes
            .iter()
            .filter_map(|r| PublicRoute::from_str(r).ok())
            .any(|r| r.matches(method, path))
    }

    /// Validates a tenant admin's settings against the schema and returns
    /// the full set, with defaults for what the admin left out.
    pub fn resolve_config(
        &self,
        given: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ManifestError> {
        for key in given.keys() {
            if !self.config.contains_key(key) {
                return Err(ManifestError::InvalidSetting {
                    key: key.clone(),
                    reason: format!("plugin {} has no such setting", self.name),
                });
            }
        }
        let mut out = serde_json::Map::new();
        for (key, setting) in &self.config {
            let value = given.get(key).unwrap_or(&setting.default);
            setting
                .check(value)
                .map_err(|reason| ManifestError::InvalidSetting {
                    key: key.clone(),
                    reason,
                })?;
            out.insert(key.clone(), value.clone());
        }
        Ok(out)
    }
}

impl Setting {
    fn check(&self, value: &serde_json::Value) -> Result<(), String> {
        match (self.kind, value) {
            (SettingKind::Bool, serde_json::Value::Bool(_)) => Ok(()),
            (SettingKind::Integer, serde_json::Value::Number(n)) => {
                let n = n
                    .as_i64()
                    .ok_or_else(|| format!("{n} is not a 64-bit integer"))?;
                if let Some(min) = self.min
                    && n < min
                {
                    return Err(format!("{n} is below the minimum {min}"));
                }
                if let Some(max) = self.max
                    && n > max
                {
                    return Err(format!("{n} is above the maximum {max}"));
                }
                Ok(())
            }
            (SettingKind::String, serde_json::Value::String(s)) => {
                let max = self.max_length.unwrap_or(1024);
                if s.len() > max {
                    return Err(format!("{} bytes is longer than {max}", s.len()));
                }
                if let Some(one_of) = &self.one_of
                    && !one_of.iter().any(|o| o == s)
                {
                    return Err(format!("{s:?} is not one of {}", one_of.join(", ")));
                }
                Ok(())
            }
            (kind, other) => Err(format!("expected {kind:?}, got {other}").to_lowercase()),
        }
    }
}

/// A parsed `METHOD /path` or `METHOD /prefix/*` public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicRoute {
    method: String,
    path: String,
    subtree: bool,
}

impl FromStr for PublicRoute {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ManifestError::Invalid(format!(
                "public route {s:?} must look like `GET /path` or `POST /prefix/*`"
            ))
        };
        let (method, path) = s.split_once(' ').ok_or_else(bad)?;
        let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        if !methods.contains(&method)
            || !path.starts_with('/')
            || path.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let (path, subtree) = match path.strip_suffix("/*") {
            Some(prefix) => (prefix.to_string(), true),
            None => (path.to_string(), false),
        };
        if path.contains('*') || path.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(bad());
        }
        Ok(PublicRoute {
            method: method.to_string(),
            path,
            subtree,
        })
    }
}

impl PublicRoute {
    /// Whether a request matches. Paths compare segment by segment so
    /// `/join/*` never matches `/joinx`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if !self.method.eq_ignore_ascii_case(method) {
            return false;
        }
        if self.subtree {
            path == self.path
                || path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        } else {
            path == self.path
        }
    }
}

/// Plugin names: `^[a-z][a-z0-9-]{0,31}$`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_valid_setting_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "chat"
version = "1.2.3"
api-version = "0.1.0"
capabilities = ["kv", "log", "plugins", "config"]
public-routes = ["GET /public/*", "POST /join"]

[dependencies]
recording = "^0.1"

[config.edit-enabled]
type = "bool"
default = true

[config.max-len]
type = "integer"
default = 4000
min = 1
max = 100000
"#;

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(m.name, "chat");
        assert_eq!(m.capabilities.len(), 4);
        assert!(m.is_public_route("GET", "/public/x/y"));
        assert!(m.is_public_route("GET", "/public"));
        assert!(!m.is_public_route("GET", "/publicx"));
        assert!(!m.is_public_route("POST", "/public/x"));
        assert!(m.is_public_route("POST", "/join"));
        assert!(!m.is_public_route("POST", "/join/x"));
    }

    #[test]
    fn refuses_unknown_fields_and_bad_names() {
        let err = Manifest::parse(format!("{GOOD}\nsurprise = 1\n").as_bytes()).unwrap_err();
        assert_eq!(err.code(), "manifest_malformed");
        let err = Manifest::parse(GOOD.replace("\"chat\"", "\"../chat\"").as_bytes()).unwrap_err();
        assert_eq!(err.code(), "manifest_invalid_name");
        let err = Manifest::parse(GOOD.replace("\"0.1.0\"", "\"9.0.0\"").as_bytes()).unwrap_err();
        assert_eq!(err.code(), "unsupported_api_version");
    }

    #[test]
    fn refuses_oversized_and_non_utf8() {
        let big = vec![b'#'; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            Manifest::parse(&big).unwrap_err().code(),
            "manifest_too_large"
        );
        assert_eq!(
            Manifest::parse(&[0xff, 0xfe, 0x00]).unwrap_err().code(),
            "manifest_malformed"
        );
    }

    #[test]
    fn refuses_dependencies_without_the_plugins_capability() {
        let text = GOOD.replace("\"plugins\", ", "");
        let err = Manifest::parse(text.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "manifest_invalid");
    }

    #[test]
    fn refuses_bad_defaults_and_routes() {
        let text = GOOD.replace("default = 4000", "default = 0");
        assert_eq!(
            Manifest::parse(text.as_bytes()).unwrap_err().code(),
            "invalid_setting"
        );
        let text = GOOD.replace("POST /join", "POST /../admin");
        assert_eq!(
            Manifest::parse(text.as_bytes()).unwrap_err().code(),
            "manifest_invalid"
        );
    }

    #[test]
    fn resolves_config_with_defaults_and_checks_types() {
        let m = Manifest::parse(GOOD.as_bytes()).unwrap();
        let cfg = m.resolve_config(&serde_json::Map::new()).unwrap();
        assert_eq!(cfg["edit-enabled"], serde_json::json!(true));
        let mut given = serde_json::Map::new();
        given.insert("edit-enabled".into(), serde_json::json!("no"));
        assert_eq!(
            m.resolve_config(&given).unwrap_err().code(),
            "invalid_setting"
        );
        let mut given = serde_json::Map::new();
        given.insert("nope".into(), serde_json::json!(1));
        assert_eq!(
            m.resolve_config(&given).unwrap_err().code(),
            "invalid_setting"
        );
        let mut given = serde_json::Map::new();
        given.insert("max-len".into(), serde_json::json!(100001));
        assert_eq!(
            m.resolve_config(&given).unwrap_err().code(),
            "invalid_setting"
        );
    }
}
