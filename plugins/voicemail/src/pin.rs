//! Mailbox PINs (SPEC V1): the rules a new PIN must meet, its keyed hash,
//! and the lockout after wrong PINs in a row.
//!
//! A PIN is digits only, at least the tenant's `pin-min-length` (default
//! 6) and at most 16. Refused as trivial: one digit repeated, any block
//! repeated (`1212`, `123123`), a run up or down (`123456`, `987654`,
//! `7890`, wrapping through 0), a PIN containing the mailbox number, and
//! one made of the user's phone number's digits. Only HMAC-SHA-256 of
//! `user \0 pin` under a host-held key of this plugin is stored: the
//! stored value does not give the PIN back without the host's key.
//!
//! After `lock-after` wrong PINs in a row (default 5) the mailbox takes no
//! PIN for 5 minutes, doubling with each further lockout up to a day;
//! every lockout is audited. A right PIN, or an admin's unlock, clears it.

use serde_json::json;
use switchboard_sdk::audit::{self, Outcome};
use switchboard_sdk::{Error, config, crypto};

use crate::model::Mailbox;

/// Longest PIN.
pub const MAX_PIN: usize = 16;
/// The first lockout, ms.
const FIRST_LOCK_MS: u64 = 5 * 60 * 1000;
/// The longest lockout, ms.
const MAX_LOCK_MS: u64 = 24 * 60 * 60 * 1000;

/// Why a PIN is refused, as the API's `code` and message.
pub fn refusal(pin: &str, mailbox: &Mailbox) -> Option<(&'static str, String)> {
    let min = config::get::<usize>("pin-min-length").unwrap_or(6);
    if !pin.bytes().all(|b| b.is_ascii_digit()) || pin.len() < min || pin.len() > MAX_PIN {
        return Some(("pin_format", format!("a PIN is {min} to {MAX_PIN} digits")));
    }
    trivial(pin, mailbox).map(|why| {
        (
            "pin_trivial",
            format!("that PIN is too easy to guess: {why}"),
        )
    })
}

/// Why `pin` (digits) is easy to guess, if it is.
fn trivial(pin: &str, mailbox: &Mailbox) -> Option<&'static str> {
    let d: Vec<u8> = pin.bytes().map(|b| b - b'0').collect();
    for block in 1..=d.len() / 2 {
        if d.len().is_multiple_of(block) && d.chunks(block).all(|c| c == &d[..block]) {
            return Some(if block == 1 {
                "one digit repeated"
            } else {
                "a repeated pattern"
            });
        }
    }
    let steps = |step: u8| d.windows(2).all(|w| (w[0] + step) % 10 == w[1]);
    if steps(1) || steps(9) {
        return Some("a run of digits");
    }
    if let Some(n) = mailbox.number.as_deref().filter(|n| !n.is_empty())
        && pin.contains(n)
    {
        return Some("it contains the mailbox number");
    }
    if let Some(phone) = &mailbox.phone {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= pin.len() && digits.contains(pin) {
            return Some("it is part of the phone number");
        }
    }
    None
}

/// The stored form of `user`'s `pin`.
pub fn hash(user: &str, pin: &str) -> Result<String, Error> {
    let mut data = user.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(pin.as_bytes());
    Ok(crypto::hex(&crypto::hmac_sha256("pin", &data)?))
}

/// What a PIN attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Right,
    Wrong,
    /// Locked (now, or by this very attempt).
    Locked,
}

/// Checks `pin` for `user`'s `mailbox` (updated in place: the caller
/// saves it) at `now_ms`; `from` names the caller for the audit trail. A
/// mailbox without a PIN takes none.
pub fn attempt(
    user: &str,
    mailbox: &mut Mailbox,
    pin: &str,
    now_ms: u64,
    from: &str,
) -> Result<Attempt, Error> {
    if mailbox.locked_until_ms > now_ms {
        audit::append(
            "voicemail.pin",
            user,
            Outcome::Denied,
            &json!({ "why": "locked", "from": from }).to_string(),
        )?;
        return Ok(Attempt::Locked);
    }
    let right = match &mailbox.pin {
        Some(stored) => {
            let given = hash(user, pin)?;
            // Equal length hex; compared without an early exit.
            given.len() == stored.len()
                && given
                    .bytes()
                    .zip(stored.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        None => false,
    };
    if right {
        mailbox.failures = 0;
        mailbox.lockouts = 0;
        mailbox.locked_until_ms = 0;
        return Ok(Attempt::Right);
    }
    mailbox.failures += 1;
    let limit = config::get::<u32>("lock-after").unwrap_or(5).max(1);
    if mailbox.failures < limit {
        return Ok(Attempt::Wrong);
    }
    let ms = FIRST_LOCK_MS
        .saturating_mul(1u64 << mailbox.lockouts.min(20))
        .min(MAX_LOCK_MS);
    mailbox.lockouts += 1;
    mailbox.failures = 0;
    mailbox.locked_until_ms = now_ms + ms;
    audit::append(
        "voicemail.lockout",
        user,
        Outcome::Denied,
        &json!({
            "wrong_pins": limit,
            "lockout": mailbox.lockouts,
            "locked_ms": ms,
            "until_ms": mailbox.locked_until_ms,
            "from": from,
        })
        .to_string(),
    )?;
    Ok(Attempt::Locked)
}
