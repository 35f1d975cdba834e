//! Text of generated tokens for every family: decoding, and how much of it may be streamed
//! without ending inside a character or a possible stop string.

use tokenizers::Tokenizer;

/// Text of `ids` with special tokens skipped; empty without a tokenizer.
pub fn decode(tokenizer: Option<&Tokenizer>, ids: &[u32]) -> String {
    decode_with(tokenizer, ids, true)
}

/// Text of `ids`, special tokens skipped or written out; empty without a tokenizer.
pub fn decode_with(tokenizer: Option<&Tokenizer>, ids: &[u32], skip_special: bool) -> String {
    tokenizer
        .and_then(|t| t.decode(ids, skip_special).ok())
        .unwrap_or_default()
}

/// How much of `text` can be streamed now: not a trailing partial character, and not a tail
/// that might still grow into a stop string.
pub fn stream_safe_len(text: &str, stop: &[String]) -> usize {
    let mut safe = text.trim_end_matches('\u{FFFD}').len();
    for s in stop {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                safe = safe.min(safe - k);
                break;
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::stream_safe_len;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stop = vec!["END".to_string()];
        assert_eq!(stream_safe_len("hello EN", &stop), 6);
        assert_eq!(stream_safe_len("hello", &stop), 5);
        assert_eq!(stream_safe_len("ab\u{FFFD}", &[]), 2);
    }
}
