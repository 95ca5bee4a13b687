//! Password policy and hashing (SPEC I2). The policy is checked on the
//! server and answers with one message per unmet rule, so a client can
//! show them all at once. Hashes are argon2id (m = 19 MiB, t = 2, p = 1,
//! OWASP's recommended floor) in PHC string form, so parameters can be
//! raised later without invalidating stored hashes.

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest password, in characters.
pub const MIN_CHARS: usize = 8;
/// Longest password, in characters.
pub const MAX_CHARS: usize = 128;
/// Characters of which a password needs at least one (SPEC I2).
pub const SPECIALS: &str = "@!#$%&_-=+";

const COMMON: &str = include_str!("common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Why a candidate password is refused: every unmet rule, in order.
pub fn check(candidate: &str, username: &str) -> Result<(), Vec<String>> {
    let mut unmet = Vec::new();
    let chars = candidate.chars().count();
    if chars < MIN_CHARS {
        unmet.push(format!(
            "use at least {MIN_CHARS} characters (this has {chars})"
        ));
    }
    if chars > MAX_CHARS {
        unmet.push(format!(
            "use at most {MAX_CHARS} characters (this has {chars})"
        ));
    }
    if !candidate.chars().any(|c| SPECIALS.contains(c)) {
        unmet.push(format!(
            "include at least one of these characters: {}",
            SPECIALS
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !candidate.chars().any(|c| c.is_ascii_digit()) {
        unmet.push("include at least one digit".into());
    }
    if !candidate.chars().any(char::is_uppercase) {
        unmet.push("include at least one upper-case letter".into());
    }
    if !candidate.chars().any(char::is_lowercase) {
        unmet.push("include at least one lower-case letter".into());
    }
    if candidate.chars().any(char::is_control) {
        unmet.push("do not use control characters".into());
    }
    if chars <= MAX_CHARS && is_common(candidate, username) {
        unmet.push(
            "choose a less common password: this one is on the list of commonly used or easily guessed passwords".into(),
        );
    }
    if unmet.is_empty() { Ok(()) } else { Err(unmet) }
}

/// Whether `candidate` is a common password or a decorated form of one (or
/// of the user's own name): `Summer2026!` and `P@ssw0rd1` both count.
fn is_common(candidate: &str, username: &str) -> bool {
    let lower = candidate.to_lowercase();
    let set = common();
    if set.contains(lower.as_str()) {
        return true;
    }
    let core_of = |s: &str| -> String { s.trim_matches(|c: char| !c.is_alphabetic()).to_string() };
    // Trim the decoration (digits and symbols at the ends) before and
    // after undoing substitutions: `!Dragon99` and `P@ssw0rd1!` both fold.
    let trimmed = core_of(&lower);
    let core = unleet(&trimmed);
    let folded = core_of(&unleet(&lower));
    let name = username.to_lowercase();
    let name_core = name
        .split(['@', '.'])
        .next()
        .unwrap_or_default()
        .to_string();
    [core.as_str(), trimmed.as_str(), folded.as_str()]
        .iter()
        .any(|c| {
            !c.is_empty()
                && (set.contains(c) || (name_core.len() >= 3 && *c == name_core) || *c == name)
        })
}

fn unleet(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '@' | '4' => 'a',
            '0' => 'o',
            '1' | '!' => 'i',
            '3' => 'e',
            '5' | '$' => 's',
            '7' => 't',
            c => c,
        })
        .collect()
}

/// The hasher with the host's parameters.
fn argon2() -> Argon2<'static> {
    // Fixed, valid parameters: m = 19456 KiB, t = 2, p = 1.
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh salt (PHC string).
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `phc`. A malformed stored hash never
/// matches.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, verified against when the account does
/// not exist so that unknown names cost the same time (SPEC I3).
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        hash(&crate::support::encoding::random_hex(16)).unwrap_or_else(|_| {
            // Same parameters, fixed salt: still a full-cost verification.
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$kXW2u1o3z6Ns7JycN8zZjt1Nvm8zPqTj9wzH2Yq9S1Q".into()
        })
    })
}

/// A random password meeting the policy, for welcome (initial) passwords.
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let hex = crate::support::encoding::random_hex(16);
        bytes.copy_from_slice(&hex.as_bytes()[..16]);
    }
    let body: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    // Guarantee every class regardless of the draw.
    format!("{body}-Q7k")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unmet_rule_has_its_own_message() {
        let unmet = check("xqz", "alice").unwrap_err();
        assert_eq!(unmet.len(), 4, "{unmet:?}");
        assert!(unmet[0].contains("at least 8"));
        assert!(unmet.iter().any(|m| m.contains("digit")));
        assert!(unmet.iter().any(|m| m.contains("upper-case")));
        assert!(unmet.iter().any(|m| m.contains("@ ! # $ % & _ - = +")));
        let long = format!("Aa1!{}", "x".repeat(130));
        assert!(check(&long, "bob").unwrap_err()[0].contains("at most 128"));
        assert!(check("ALLUPPER1!", "bob").unwrap_err()[0].contains("lower-case"));
    }

    #[test]
    fn a_good_password_passes_and_boundaries_hold() {
        assert!(check("Correct-Horse7", "alice").is_ok());
        assert!(check("Zq7!mwvx", "alice").is_ok(), "exactly 8");
        let max = format!("Zq7!{}", "w".repeat(124));
        assert!(check(&max, "alice").is_ok(), "exactly 128");
        // Only the listed specials count.
        assert!(check("Zq7*mwvxyz", "alice").is_err());
    }

    #[test]
    fn common_and_decorated_common_passwords_are_refused() {
        for p in [
            "Password1!",
            "P@ssw0rd1!",
            "Summer2026!",
            "Welcome123#",
            "Qwerty123!",
            "!Dragon99",
        ] {
            let unmet = check(p, "alice").unwrap_err();
            assert!(
                unmet.iter().any(|m| m.contains("less common")),
                "{p}: {unmet:?}"
            );
        }
        let unmet = check("Alice2026!", "alice").unwrap_err();
        assert!(unmet.iter().any(|m| m.contains("less common")));
    }

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("Correct-Horse7").unwrap();
        let b = hash("Correct-Horse7").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("Correct-Horse7", &a));
        assert!(!verify("Correct-Horse8", &a));
        assert!(!verify("Correct-Horse7", "not a hash"));
        assert!(!verify("anything", decoy_hash()));
    }

    #[test]
    fn generated_passwords_meet_the_policy() {
        for _ in 0..20 {
            let p = generate();
            assert!(check(&p, "alice").is_ok(), "{p}");
        }
    }
}
