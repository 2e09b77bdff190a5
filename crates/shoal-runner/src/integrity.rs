//! What a rank does when its weights produce non-finite numbers (NaN or infinity): the decisions, apart from the
//! hashing and messaging in `runner.rs`, so they are unit-tested.
//!
//! A model file corrupted in place can keep its size, mtime and even its change time (bit rot, a write through a raw
//! device), so the store's verification cache still accepts it and the runner loads it; the first sign is then a
//! forward pass whose logits (last rank) or hidden states (other ranks) are not finite. The rank fails the sequences
//! at once, hashes its file again against the card's sha256 (never from a cache), and says which of two things it
//! was: a corrupt file (the runner fails, naming the file, and the worker stops trusting it) or a genuine numerical
//! problem with sound weights (the runner keeps serving and says so to every sequence it fails).

use std::path::Path;

use shoal_models::SourceError;

/// The bits of an f32 exponent; all set means infinity or NaN.
const EXPONENT: u32 = 0x7f80_0000;

/// `true` when every value is finite. The check costs one pass over values the step just wrote (a vocabulary's
/// logits per sampled sequence, or the activations sent on), next to the matrix products that produced them:
/// 13 µs for SmolLM2's 49,152 logits on one core, against milliseconds for the step.
pub fn all_finite(values: &[f32]) -> bool {
    // A branch-free fold over the exponent bits rather than `all(is_finite)`: no early exit, so the loop vectorizes
    // (finite is the common case), twice as fast as `is_finite` here.
    values
        .iter()
        .fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXPONENT == EXPONENT))
        == 0
}

/// The outcome of re-reading the file after non-finite output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The file is not what the card says (or cannot be read): the runner fails with this reason.
    Corrupt(String),
    /// The file matches its digest, or there is none to compare with: the runner keeps serving and fails only the
    /// sequences whose output was not finite, with this reason.
    NotTheFile(String),
}

impl Verdict {
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Corrupt(r) | Verdict::NotTheFile(r) => r,
        }
    }
}

/// Judges `path` from the result of hashing it again (`None`: the card lists no sha256 for it, nothing was hashed).
pub fn verdict(path: &Path, check: Option<Result<(), SourceError>>) -> Verdict {
    let file = path.display();
    match check {
        Some(Err(SourceError::ShaMismatch { expected, actual, .. })) => Verdict::Corrupt(format!(
            "{file}: digest mismatch: the file is corrupt (its weights produced non-finite numbers; sha256 \
             {actual}, expected {expected})"
        )),
        Some(Err(e)) => Verdict::Corrupt(format!(
            "{file}: the model produced non-finite numbers and the file cannot be verified again: {e}"
        )),
        Some(Ok(())) => Verdict::NotTheFile(format!(
            "{file}: the model produced non-finite numbers although the file matches its sha256: a numerical \
             problem with this input, not a corrupt file"
        )),
        None => Verdict::NotTheFile(format!(
            "{file}: the model produced non-finite numbers; its card lists no sha256 to check the file against"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn finite_values_pass_and_any_nan_or_infinity_fails() {
        assert!(all_finite(&[]));
        assert!(all_finite(&[0.0, -1.5, f32::MAX, f32::MIN_POSITIVE]));
        assert!(!all_finite(&[0.0, f32::NAN]));
        assert!(!all_finite(&[f32::INFINITY, 1.0]));
        assert!(!all_finite(&[1.0, f32::NEG_INFINITY]));
    }

    #[test]
    fn a_mismatch_is_corrupt_and_names_the_file() {
        let path = PathBuf::from("/models/m.gguf");
        let v = verdict(
            &path,
            Some(Err(SourceError::ShaMismatch {
                file: path.clone(),
                expected: "aa".into(),
                actual: "bb".into(),
            })),
        );
        let Verdict::Corrupt(reason) = &v else { panic!("{v:?}") };
        assert!(
            reason.starts_with("/models/m.gguf: digest mismatch: the file is corrupt"),
            "{reason}"
        );
        assert!(reason.contains("expected aa"), "{reason}");
    }

    #[test]
    fn an_unreadable_file_is_corrupt_too() {
        let path = PathBuf::from("/models/m.gguf");
        let v = verdict(&path, Some(Err(SourceError::Missing { path: path.clone() })));
        assert!(
            matches!(&v, Verdict::Corrupt(r) if r.starts_with("/models/m.gguf: ")),
            "{v:?}"
        );
    }

    #[test]
    fn a_matching_or_unlisted_digest_is_a_numerical_problem() {
        let path = PathBuf::from("/models/m.gguf");
        let v = verdict(&path, Some(Ok(())));
        assert!(
            matches!(&v, Verdict::NotTheFile(r) if r.contains("matches its sha256")),
            "{v:?}"
        );
        let v = verdict(&path, None);
        assert!(matches!(&v, Verdict::NotTheFile(r) if r.contains("no sha256")), "{v:?}");
        assert!(v.reason().starts_with("/models/m.gguf: "));
    }
}
