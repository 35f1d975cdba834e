//! How far a tokenizer's normaliser can grow a text: a bound `bytes * per_byte + fixed` read
//! from its definition, so that a prompt it would blow up (a `Replace` of one character by a
//! megabyte, run over a long prompt) is refused before the tokenizer allocates it.

use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// The most bytes a normalised prompt may have; more is refused as the model's defect.
pub const MAX_NORMALISED_BYTES: usize = 64 << 20;

/// The most a normaliser may multiply a text's length by; a tokenizer that can grow text more
/// is refused at attach.
pub const MAX_GROWTH_PER_BYTE: usize = 4096;

/// Output bytes of a normaliser are at most `per_byte` times its input bytes plus `fixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    pub per_byte: usize,
    pub fixed: usize,
}

impl Growth {
    const NONE: Growth = Growth {
        per_byte: 1,
        fixed: 0,
    };

    /// The bound of `tokenizer`'s normaliser (none: no growth).
    pub fn of(tokenizer: &Tokenizer) -> Growth {
        match tokenizer
            .get_normalizer()
            .and_then(|n| serde_json::to_value(n).ok())
        {
            Some(definition) => growth(&definition),
            None => Growth::NONE,
        }
    }

    /// The most bytes a text of `bytes` bytes becomes.
    pub fn apply(self, bytes: usize) -> usize {
        bytes
            .saturating_mul(self.per_byte)
            .saturating_add(self.fixed)
    }

    /// This bound, then `next`'s.
    fn then(self, next: Growth) -> Growth {
        Growth {
            per_byte: self.per_byte.saturating_mul(next.per_byte),
            fixed: next.apply(self.fixed),
        }
    }
}

/// The bound of one normaliser, from its serialised definition.
fn growth(definition: &Json) -> Growth {
    let text_len = |key: &str| {
        definition
            .get(key)
            .and_then(Json::as_str)
            .map_or(0, str::len)
    };
    let per_byte = |per_byte: usize| Growth { per_byte, fixed: 0 };
    match definition.get("type").and_then(Json::as_str).unwrap_or("") {
        "Sequence" => definition
            .get("normalizers")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .fold(Growth::NONE, |acc, n| acc.then(growth(n))),
        "Replace" => {
            let content = text_len("content");
            match definition.pointer("/pattern/String").and_then(Json::as_str) {
                // Each match of a fixed pattern becomes `content`.
                Some(p) if !p.is_empty() => per_byte(content.div_ceil(p.len()).max(1)),
                // A regex may match the empty string between every two bytes.
                _ => Growth {
                    per_byte: content.saturating_add(1),
                    fixed: content,
                },
            }
        }
        "Prepend" => Growth {
            per_byte: 1,
            fixed: text_len("prepend"),
        },
        // Compatibility decomposition: U+FDFA (3 bytes) becomes 18 characters (33 bytes).
        "NFKD" | "NFKC" => per_byte(11),
        "NFD" | "NFC" | "Lowercase" => per_byte(3),
        // Lower case, accents, and spaces around every CJK character.
        "BertNormalizer" => per_byte(6),
        // Each byte becomes one character of at most two bytes.
        "ByteLevel" => per_byte(2),
        // Control characters dropped or made spaces.
        "Strip" | "StripAccents" | "Nmt" => Growth::NONE,
        "Precompiled" => per_byte(precompiled_growth(definition).unwrap_or(MAX_GROWTH_PER_BYTE)),
        // Unknown: as much as is allowed at all.
        _ => per_byte(MAX_GROWTH_PER_BYTE),
    }
}

/// The longest replacement in a SentencePiece charsmap (`[u32 trie length][trie][replacements,
/// each ended by NUL]`, base64): every match of at least one byte becomes at most that.
fn precompiled_growth(definition: &Json) -> Option<usize> {
    let blob = base64(definition.get("precompiled_charsmap")?.as_str()?)?;
    let trie = u32::from_le_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let replacements = blob.get(4usize.checked_add(trie)?..)?;
    let longest = replacements.split(|&b| b == 0).map(<[u8]>::len).max();
    Some(longest.unwrap_or(0).max(1))
}

/// Standard base64 (with or without padding); `None` when it is not.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_compose_and_grow_with_what_a_replace_writes() {
        let llama = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        ]});
        assert_eq!(
            growth(&llama),
            Growth {
                per_byte: 3,
                fixed: 9
            }
        );
        let bomb =
            json!({"type": "Replace", "pattern": {"String": "a"}, "content": "b".repeat(1 << 20)});
        assert_eq!(growth(&bomb).apply(100), 100 << 20);
        let regex = json!({"type": "Replace", "pattern": {"Regex": ""}, "content": "xy"});
        assert_eq!(growth(&regex).apply(10), 32);
        assert_eq!(base64("aGVsbG8="), Some(b"hello".to_vec()));
    }
}
