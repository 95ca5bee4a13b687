//! The built-in prompt library: short announcements ("please enter the
//! extension…", digits, "this call is being recorded") a plugin can play
//! by name. Spoken offline by flite and converted by sox
//! (`tools/prompts/generate.sh`), committed as one G.711 µ-law file with a
//! manifest of names, texts, offsets, SHA-256 digests and tool versions
//! (`host/prompts/`), and embedded in the binary: nothing is generated at
//! build or run time. Clips are whole 20 ms frames.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

static LIBRARY: &[u8] = include_bytes!("../../prompts/library.ulaw");
static MANIFEST: &str = include_str!("../../prompts/manifest.json");

#[derive(Deserialize)]
struct Manifest {
    prompts: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    offset: usize,
    bytes: usize,
    #[cfg_attr(not(test), allow(dead_code))]
    sha256: String,
    #[cfg_attr(not(test), allow(dead_code))]
    text: String,
}

fn index() -> &'static HashMap<String, (usize, usize)> {
    static INDEX: OnceLock<HashMap<String, (usize, usize)>> = OnceLock::new();
    INDEX.get_or_init(|| {
        // The manifest is checked by this module's tests; one that did
        // not read would leave the library empty, never panic.
        let manifest: Manifest = serde_json::from_str(MANIFEST).unwrap_or(Manifest {
            prompts: Vec::new(),
        });
        manifest
            .prompts
            .into_iter()
            .filter(|e| e.offset + e.bytes <= LIBRARY.len())
            .map(|e| (e.name, (e.offset, e.bytes)))
            .collect()
    })
}

/// The µ-law samples of prompt `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    index()
        .get(name)
        .map(|(offset, bytes)| &LIBRARY[*offset..*offset + *bytes])
}

/// Every prompt's name, sorted.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = index().keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn every_prompt_matches_its_manifest_entry() {
        let manifest: Manifest = serde_json::from_str(MANIFEST).unwrap();
        let full: serde_json::Value = serde_json::from_str(MANIFEST).unwrap();
        assert_eq!(
            full["library_sha256"],
            hex::encode(Sha256::digest(LIBRARY)),
            "library.ulaw is the one the manifest describes"
        );
        let mut end = 0;
        for e in &manifest.prompts {
            assert_eq!(e.offset, end, "{}: clips follow each other", e.name);
            assert_eq!(e.bytes % 160, 0, "{}: whole 20 ms frames", e.name);
            assert!(e.bytes >= 160 && !e.text.is_empty(), "{}", e.name);
            let clip = get(&e.name).unwrap();
            assert_eq!(hex::encode(Sha256::digest(clip)), e.sha256, "{}", e.name);
            end += e.bytes;
        }
        assert_eq!(end, LIBRARY.len());
        assert_eq!(names().len(), manifest.prompts.len(), "names are unique");
        for n in ["enter-extension", "recording-on", "digit-0", "pound"] {
            assert!(get(n).is_some(), "{n}");
        }
        assert!(get("nope").is_none());
    }

    #[test]
    fn prompts_are_speech_not_silence() {
        for n in names() {
            let clip = get(n).unwrap();
            let loud = clip
                .iter()
                .filter(|c| crate::media::g711::ulaw_to_linear(**c).unsigned_abs() > 2000)
                .count();
            assert!(
                loud * 20 > clip.len(),
                "{n}: {loud} of {} samples",
                clip.len()
            );
        }
    }
}
