//! Mixing for conferences (three or more legs in a bridge): every leg
//! hears the sum of the others, never itself ("mix minus"), saturated to
//! 16 bits. One pass sums all inputs; each output subtracts its own.

/// Mixes equal-length frames: `out[i]` gets the sum of every input but
/// `inputs[i]`. Missing legs (silent or lost this tick) pass an all-zero
/// frame. Panics never: frames of another length are mixed up to the
/// shortest.
pub fn mix_minus(inputs: &[&[i16]], out: &mut Vec<Vec<i16>>) {
    let len = inputs.iter().map(|f| f.len()).min().unwrap_or(0);
    let mut total = vec![0i32; len];
    for frame in inputs {
        for (t, s) in total.iter_mut().zip(frame.iter()) {
            *t += i32::from(*s);
        }
    }
    out.resize_with(inputs.len(), Vec::new);
    for (own, dst) in inputs.iter().zip(out.iter_mut()) {
        dst.clear();
        dst.extend(total.iter().zip(own.iter()).map(|(t, s)| {
            (t - i32::from(*s)).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_leg_hears_the_others_and_not_itself() {
        let (a, b, c) = ([100i16; 4], [20i16; 4], [3i16; 4]);
        let mut out = Vec::new();
        mix_minus(&[&a, &b, &c], &mut out);
        assert_eq!(out, vec![vec![23; 4], vec![103; 4], vec![120; 4]]);
    }

    #[test]
    fn sums_saturate_and_lengths_may_differ() {
        let loud = [30_000i16; 3];
        let low = [-30_000i16; 2];
        let mut out = Vec::new();
        mix_minus(&[&loud, &loud, &low, &low], &mut out);
        assert_eq!(out[2], vec![30_000; 2], "30k + 30k - 30k");
        let mut out = Vec::new();
        mix_minus(&[&loud, &loud, &loud], &mut out);
        assert_eq!(out[0], vec![i16::MAX; 3]);
        mix_minus(&[], &mut out);
        assert!(out.is_empty());
    }
}
