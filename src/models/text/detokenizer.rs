//! Incremental detokenization: the text each new token adds, in time independent of how many
//! came before. Each step decodes a short window (from the token where the last complete text
//! ended) twice, without and with the newest tokens, and keeps the difference once it no
//! longer ends inside a character; decoding the same window start both times keeps whatever
//! the decoder does at a window's start (a stripped leading space) out of the difference.

use tokenizers::Tokenizer;

use super::generate::decode_with;

/// Where the text of a sequence's generated tokens stands.
pub struct Detokenizer {
    /// First token of the decoded window.
    prefix_offset: usize,
    /// Tokens whose text was given out already.
    read_offset: usize,
    /// Leave special tokens out of the text.
    skip_special: bool,
}

impl Default for Detokenizer {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Detokenizer {
    /// A detokenizer that leaves special tokens out of the text, or writes them.
    pub fn new(skip_special: bool) -> Self {
        Self {
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// The text the tokens after those already read add; empty while they end inside a
    /// character (they are read again with the next token).
    pub fn next(&mut self, tokenizer: Option<&Tokenizer>, tokens: &[u32]) -> String {
        self.added(tokenizer, tokens, false)
    }

    /// The text of every token not read yet, even one ending inside a character.
    pub fn flush(&mut self, tokenizer: Option<&Tokenizer>, tokens: &[u32]) -> String {
        self.added(tokenizer, tokens, true)
    }

    fn added(&mut self, tokenizer: Option<&Tokenizer>, tokens: &[u32], partial: bool) -> String {
        if self.read_offset >= tokens.len() {
            return String::new();
        }
        let skip = self.skip_special;
        let before = decode_with(
            tokenizer,
            &tokens[self.prefix_offset..self.read_offset],
            skip,
        );
        let after = decode_with(tokenizer, &tokens[self.prefix_offset..], skip);
        let complete = !after.ends_with('\u{FFFD}');
        if !(partial || complete) || !after.starts_with(&before) || after.len() <= before.len() {
            return String::new();
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        after[before.len()..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::text::generate::decode;

    fn tokenizer(fixture: &str) -> Tokenizer {
        let path = format!(
            "{}/tests/fixtures/{fixture}/tokenizer.json",
            env!("CARGO_MANIFEST_DIR")
        );
        Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn the_pieces_add_up_to_the_whole_decode_for_every_kind_of_tokenizer() {
        // Byte-level BPE (OPT), and Llama's and Qwen's tokenizers with byte tokens that end
        // inside characters.
        for fixture in ["tiny-opt-prenorm", "tiny-llama", "tiny-qwen2"] {
            let tokenizer = tokenizer(fixture);
            let vocab = tokenizer.get_vocab_size(true) as u64;
            let mut state = 0x9e3779b97f4a7c15u64;
            for _ in 0..20 {
                let mut tokens = Vec::new();
                let mut detokenizer = Detokenizer::default();
                let mut text = String::new();
                for _ in 0..40 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    tokens.push(((state >> 33) % vocab) as u32);
                    text.push_str(&detokenizer.next(Some(&tokenizer), &tokens));
                }
                text.push_str(&detokenizer.flush(Some(&tokenizer), &tokens));
                assert_eq!(
                    text,
                    decode(Some(&tokenizer), &tokens),
                    "{fixture}: {tokens:?}"
                );
            }
        }
    }
}
