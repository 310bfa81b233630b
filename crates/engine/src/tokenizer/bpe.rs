//! Byte-level BPE as CLIP uses it: every UTF-8 byte of a word is first mapped to one printable
//! character (GPT-2's reversible byte alphabet), the last character carries the `</w>`
//! end-of-word suffix, and merges are applied lowest rank first.

use std::collections::HashMap;

/// Suffix that marks the last symbol of a word in the CLIP vocabulary.
pub const END_OF_WORD: &str = "</w>";

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others
/// are shifted to code points from 256 up, so that every byte sequence becomes visible text
/// without spaces or control characters (which the vocabulary files could not hold).
pub fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_shifted = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let printable = matches!(byte, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            byte as u32
        } else {
            let code = next_shifted;
            next_shifted += 1;
            code
        };
        // Every code below 256 + 256 is a valid scalar value, so this never falls back.
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// Vocabulary and merge table of a BPE model.
pub struct Bpe {
    vocab: HashMap<String, u32>,
    /// `(left id, right id) -> (rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    alphabet: [char; 256],
    unk: Option<u32>,
}

impl Bpe {
    /// Build from the vocabulary and the merges in rank order. A merge whose parts or result
    /// are missing from the vocabulary is reported by its line (1-based rank).
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        unk: Option<u32>,
    ) -> Result<Self, String> {
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let lookup = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| {
                    format!(
                        "merge {} `{left} {right}`: `{token}` is not in the vocabulary",
                        rank + 1
                    )
                })
            };
            let key = (lookup(left)?, lookup(right)?);
            let merged = lookup(&format!("{left}{right}"))?;
            // Like the reference (which collects the merges into a map), a pair listed twice
            // keeps its last rank.
            table.insert(key, (rank as u32, merged));
        }
        Ok(Self {
            vocab,
            merges: table,
            alphabet: byte_alphabet(),
            unk,
        })
    }

    /// Append the ids of one pre-tokenized word.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word
            .bytes()
            .map(|b| self.alphabet[usize::from(b)])
            .collect();
        let mut symbols: Vec<u32> = Vec::with_capacity(chars.len());
        let mut buf = String::new();
        for (i, c) in chars.iter().enumerate() {
            buf.clear();
            buf.push(*c);
            if i + 1 == chars.len() {
                buf.push_str(END_OF_WORD);
            }
            match self.vocab.get(&buf).copied().or(self.unk) {
                Some(id) => symbols.push(id),
                // No unknown token configured: the reference drops the symbol as well.
                None => continue,
            }
        }
        // Merge the adjacent pair of lowest rank (leftmost among equals) until none is left:
        // the same order in which the reference's priority queue applies them.
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(pos, pair)| {
                    let (rank, merged) = self.merges.get(&(pair[0], pair[1]))?;
                    Some((*rank, pos, *merged))
                })
                .min();
            let Some((_, pos, merged)) = best else { break };
            symbols[pos] = merged;
            symbols.remove(pos + 1);
        }
        out.extend_from_slice(&symbols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let table = byte_alphabet();
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b'!' as usize], '!');
        // Space is the 33rd non-printable byte (after 0x00..=0x1f): U+0120 'Ġ'.
        assert_eq!(table[b' ' as usize], '\u{120}');
        assert_eq!(table[0], '\u{100}');
        assert_eq!(table[0xad], '\u{143}');
        let mut all: Vec<char> = table.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256, "the table must be a bijection");
    }

    #[test]
    fn merges_apply_by_rank_not_position() {
        let vocab: HashMap<String, u32> = ["a", "b", "c", "c</w>", "ab", "bc</w>", "abc</w>"]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        // `b c</w>` ranks before `a b`, so "abc" must become a + bc</w>, not ab + c</w>.
        let bpe = Bpe::new(vocab.clone(), &[pair("b", "c</w>"), pair("a", "b")], None).unwrap();
        let mut ids = Vec::new();
        bpe.encode_word("abc", &mut ids);
        assert_eq!(ids, [vocab["a"], vocab["bc</w>"]]);

        let bpe = Bpe::new(vocab.clone(), &[pair("a", "b"), pair("b", "c</w>")], None).unwrap();
        ids.clear();
        bpe.encode_word("abc", &mut ids);
        assert_eq!(ids, [vocab["ab"], vocab["c</w>"]]);
    }

    #[test]
    fn merge_with_unknown_result_is_an_error() {
        let vocab: HashMap<String, u32> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let err = Bpe::new(vocab, &[("a".into(), "b".into())], None)
            .err()
            .unwrap();
        assert!(err.contains("`ab` is not in the vocabulary"), "{err}");
    }
}
