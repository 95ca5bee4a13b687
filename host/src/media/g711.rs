//! G.711 (ITU-T, 1988): 8-bit µ-law (North America, Japan) and A-law
//! (elsewhere) companding of 16-bit linear PCM, as ITU-T G.191's reference
//! encoder does it: µ-law on 14-bit magnitudes with a bias of 33 (132 in
//! 16-bit units), A-law on 13-bit magnitudes, each code's bits inverted
//! (µ-law) or XORed with 0x55 (A-law) on the wire.
//!
//! Decoding is a table lookup; encoding is a segment search. Transcoding
//! goes through linear, so µ → A → µ keeps every code but the few that
//! the two laws quantise differently (bounded by one step; tested).

/// µ-law bias in 14-bit units (G.191).
const ULAW_BIAS: i32 = 33;
/// Largest 14-bit magnitude µ-law encodes before clipping.
const ULAW_CLIP: i32 = 8159;

/// The linear value (16-bit) of a µ-law code.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// The linear value (16-bit) of an A-law code.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// The µ-law code of a 16-bit linear sample (G.191: on the sample's
/// 14-bit value; a negative one's magnitude is its one's complement, so
/// -1..-4 encode as the negative zero).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let s = i32::from(sample) >> 2;
    let (mask, magnitude) = if s < 0 { (0x7f, !s) } else { (0xff, s) };
    let m = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // m is 33..=8192, so m >> 5 is 1..=256 and the segment 0..=8.
    let segment = (m >> 5).ilog2() as i32;
    if segment > 7 {
        return (0x7f ^ mask) as u8;
    }
    // Fits a byte: segment (3 bits), mantissa (4); the mask adds the sign.
    (((segment << 4) | ((m >> (segment + 1)) & 0x0f)) ^ mask) as u8
}

/// The A-law code of a 16-bit linear sample (G.191, on its 13-bit value).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3;
    let (mask, magnitude) = if s >= 0 { (0xd5, s) } else { (0x55, !s) };
    // magnitude is 0..=4095, so magnitude >> 5 is 0..=127.
    let code = match (magnitude >> 5).checked_ilog2() {
        None => magnitude >> 1,
        Some(log) => {
            let segment = log as i32 + 1;
            (segment << 4) | ((magnitude >> segment) & 0x0f)
        }
    };
    (code ^ mask) as u8
}

/// µ-law to A-law, code by code.
pub fn ulaw_to_alaw(code: u8) -> u8 {
    ULAW_TO_ALAW[usize::from(code)]
}

/// A-law to µ-law, code by code.
pub fn alaw_to_ulaw(code: u8) -> u8 {
    ALAW_TO_ULAW[usize::from(code)]
}

/// Transcodes a µ-law payload to A-law in place.
pub fn ulaw_to_alaw_in_place(payload: &mut [u8]) {
    for b in payload {
        *b = ulaw_to_alaw(*b);
    }
}

/// Transcodes an A-law payload to µ-law in place.
pub fn alaw_to_ulaw_in_place(payload: &mut [u8]) {
    for b in payload {
        *b = alaw_to_ulaw(*b);
    }
}

const fn ulaw_decode(code: u8) -> i16 {
    // In 16-bit units the bias is 4 × 33.
    let u = !code;
    let t = (((u & 0x0f) as i32) << 3) + 4 * ULAW_BIAS;
    let t = t << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        4 * ULAW_BIAS - t
    } else {
        t - 4 * ULAW_BIAS
    }) as i16
}

const fn alaw_decode(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (segment - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// The decode table of one law (`alaw`: A-law, else µ-law).
const fn decode_table(alaw: bool) -> [i16; 256] {
    let mut out = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = if alaw {
            alaw_decode(i as u8)
        } else {
            ulaw_decode(i as u8)
        };
        i += 1;
    }
    out
}

static ULAW_TABLE: [i16; 256] = decode_table(false);
static ALAW_TABLE: [i16; 256] = decode_table(true);

static ULAW_TO_ALAW: std::sync::LazyLock<[u8; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|i| linear_to_alaw(ulaw_to_linear(i as u8))));
static ALAW_TO_ULAW: std::sync::LazyLock<[u8; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|i| linear_to_ulaw(alaw_to_linear(i as u8))));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_decode_as_g711_defines_them() {
        // µ-law: 0xff and 0x7f are the two zeros, 0x00/0x80 the extremes.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xfe), 8);
        assert_eq!(ulaw_to_linear(0x7e), -8);
        // A-law: 0xd5/0x55 are ±8 (A-law has no zero), 0xaa/0x2a the extremes.
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        // Silence encodes to the codes phones send for silence.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_alaw(0), 0xd5);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            // The negative zero 0x7f re-encodes as the positive one.
            let want = if code == 0x7f { 0xff } else { code };
            assert_eq!(back, want, "µ-law {code:#04x}");
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

    /// Every 16-bit sample encodes to the code whose value is nearest:
    /// G.191 quantises the 14-bit (µ-law) or 13-bit (A-law) value, so the
    /// error is at most half a step of the segment plus what the shift
    /// drops (3 or 7), inside the clipping range. µ-law steps are
    /// 2^(seg+3) in 16-bit units; A-law's 16 in segments 0 and 1, then
    /// 2^(seg+3). Small negatives round to the negative zero (G.191).
    #[test]
    fn every_sample_encodes_within_half_a_step() {
        for s in i16::MIN..=i16::MAX {
            let code = linear_to_ulaw(s);
            let u = i32::from(ulaw_to_linear(code));
            let step = 1i32 << (((!code & 0x70) >> 4) + 3);
            let clipped = i32::from(s).clamp(-32124, 32124);
            assert!(
                2 * (u - clipped).abs() <= step + 2 * 3,
                "µ-law {s} -> {u} (step {step})"
            );
            let code = linear_to_alaw(s);
            let a = i32::from(alaw_to_linear(code));
            let seg = ((code ^ 0x55) & 0x70) >> 4;
            let step = if seg <= 1 { 16 } else { 1i32 << (seg + 3) };
            let clipped = i32::from(s).clamp(-32256, 32256);
            assert!(
                2 * (a - clipped).abs() <= step + 2 * 7,
                "A-law {s} -> {a} (step {step})"
            );
        }
        for s in -4..0 {
            assert_eq!(linear_to_ulaw(s), 0x7f, "{s}");
        }
        assert_eq!(linear_to_ulaw(-113), 0x71);
    }

    #[test]
    fn decoding_is_monotonic_in_the_code_order() {
        // Positive µ-law codes 0xff down to 0x80 rise; A-law's rise in
        // XOR-0x55 order. A swapped segment or mantissa would break it.
        let mut last = -1;
        for code in (0x80..=0xffu8).rev() {
            let v = i32::from(ulaw_to_linear(code));
            assert!(v > last || (code == 0xff && v == 0), "µ-law {code:#04x}");
            last = v;
        }
        let mut last = 0;
        for raw in 0x80..=0xffu8 {
            let v = i32::from(alaw_to_linear(raw ^ 0x55));
            assert!(v > last, "A-law {raw:#04x}");
            last = v;
        }
    }

    #[test]
    fn transcoding_keeps_the_sound_within_one_step() {
        for code in 0..=255u8 {
            let a = ulaw_to_alaw(code);
            let lin = i32::from(ulaw_to_linear(code));
            let via = i32::from(alaw_to_linear(a));
            let seg = ((a ^ 0x55) & 0x70) >> 4;
            let step = if seg == 0 { 16 } else { 1i32 << (seg + 3) };
            assert!((lin - via).abs() <= step, "µ {code:#04x} -> A {a:#04x}");
            let u = alaw_to_ulaw(code);
            let lin = i32::from(alaw_to_linear(code));
            let via = i32::from(ulaw_to_linear(u));
            let seg = (!u & 0x70) >> 4;
            let step = (1i32 << (seg + 3)).max(16);
            assert!((lin - via).abs() <= step, "A {code:#04x} -> µ {u:#04x}");
        }
        let mut payload = vec![0xffu8, 0x00, 0x80, 0x7e];
        ulaw_to_alaw_in_place(&mut payload);
        alaw_to_ulaw_in_place(&mut payload);
        // A-law has no zero: µ-law silence comes back as +8 (one step).
        assert_eq!(payload, vec![0xfe, 0x00, 0x80, 0x7e]);
    }
}
