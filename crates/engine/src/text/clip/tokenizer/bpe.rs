//! Byte-level BPE as CLIP uses it: every UTF-8 byte of a word is first mapped to one printable
//! character (GPT-2's reversible byte alphabet), the last character carries the `</w>`
//! end-of-word suffix, and merges are applied lowest rank first.
//!
//! A word can be as long as the prompt (a pasted blob of letters is one word), so merging must
//! not rescan the word after every merge, which is quadratic: 100,000 letters took over a
//! minute. [`Bpe::encode_word`] keeps the symbols in a linked list and the candidate merges in
//! a heap, O(n log n) in the word's length.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

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
    /// `(left id, right id) -> (rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The id each byte starts as: `[inside the word, last of the word (with </w>)]`, the
    /// unknown token where the vocabulary lacks it, `None` (the byte is dropped, as the
    /// reference does) where there is no unknown token either. Looked up once here rather
    /// than hashing a string per byte of every word.
    initial: [[Option<u32>; 256]; 2],
    /// Kept for the straightforward implementation the tests compare against.
    #[cfg(test)]
    vocab: HashMap<String, u32>,
    #[cfg(test)]
    alphabet: [char; 256],
    #[cfg(test)]
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
        let alphabet = byte_alphabet();
        let mut initial = [[None; 256]; 2];
        let mut buf = String::new();
        for (byte, c) in alphabet.iter().enumerate() {
            for (last, slot) in initial.iter_mut().enumerate() {
                buf.clear();
                buf.push(*c);
                if last == 1 {
                    buf.push_str(END_OF_WORD);
                }
                slot[byte] = vocab.get(&buf).copied().or(unk);
            }
        }
        Ok(Self {
            merges: table,
            initial,
            #[cfg(test)]
            vocab,
            #[cfg(test)]
            alphabet,
            #[cfg(test)]
            unk,
        })
    }

    /// Append the ids of one pre-tokenized word.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        self.encode_bytes(word.as_bytes(), out);
    }

    /// [`Self::encode_word`] on raw bytes; returns the merge work done (see [`merge`]).
    pub(super) fn encode_bytes(&self, word: &[u8], out: &mut Vec<u32>) -> usize {
        let start = out.len();
        out.extend(word.iter().enumerate().filter_map(|(i, &byte)| {
            let last = usize::from(i + 1 == word.len());
            self.initial[last][usize::from(byte)]
        }));
        let symbols = &mut out[start..];
        // Indices as u32 halve the memory of a long word; only a word of 4 GiB needs usize.
        let (len, work) = if symbols.len() < u32::MAX as usize {
            merge::<u32>(&self.merges, symbols)
        } else {
            merge::<usize>(&self.merges, symbols)
        };
        out.truncate(start + len);
        work
    }

    /// The first implementation, kept as the specification that [`merge`] must match: find the
    /// adjacent pair of lowest rank (leftmost among equals) by scanning the whole word, merge
    /// it, repeat. Quadratic in the word's length.
    #[cfg(test)]
    pub(super) fn encode_bytes_naive(&self, word: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = Vec::with_capacity(word.len());
        let mut buf = String::new();
        for (i, &byte) in word.iter().enumerate() {
            buf.clear();
            buf.push(self.alphabet[usize::from(byte)]);
            if i + 1 == word.len() {
                buf.push_str(END_OF_WORD);
            }
            if let Some(id) = self.vocab.get(&buf).copied().or(self.unk) {
                symbols.push(id);
            }
        }
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

    /// [`merge`] with wide indices, so the tests can check the path only 4 GiB words take.
    #[cfg(test)]
    pub(super) fn encode_bytes_wide(&self, word: &[u8], out: &mut Vec<u32>) {
        let start = out.len();
        out.extend(word.iter().enumerate().filter_map(|(i, &byte)| {
            let last = usize::from(i + 1 == word.len());
            self.initial[last][usize::from(byte)]
        }));
        let (len, _) = merge::<usize>(&self.merges, &mut out[start..]);
        out.truncate(start + len);
    }
}

/// A symbol position: `u32` for every real word, `usize` beyond 4 Gi symbols.
trait Index: Copy + Ord {
    /// Marks a symbol merged into its left neighbour, and the first symbol's missing left
    /// neighbour. Never a position: positions stay below `len < NONE`.
    const NONE: Self;
    fn new(i: usize) -> Self;
    fn get(self) -> usize;
}

impl Index for u32 {
    const NONE: Self = u32::MAX;
    fn new(i: usize) -> Self {
        // The caller picks u32 only for fewer than u32::MAX symbols.
        i as u32
    }
    fn get(self) -> usize {
        self as usize
    }
}

impl Index for usize {
    const NONE: Self = usize::MAX;
    fn new(i: usize) -> Self {
        i
    }
    fn get(self) -> usize {
        self
    }
}

/// Apply the merges to `symbols` in place and return how many symbols are left (at the front)
/// and the work done: the number of candidates taken from the heap, at most 3 (n - 1) for n
/// symbols (n - 1 initial pairs, and each of the at most n - 1 merges adds two).
///
/// The result is the same as the naive loop's: merge the pair of lowest rank, leftmost
/// among equals, until no pair has a merge. The heap holds every adjacent pair that has a
/// merge, keyed by (rank, position of its left symbol); positions are the symbols' original
/// indices, which keep their order along the list, so the smallest key is exactly the pair
/// the naive loop would pick. Pairs that a merge destroyed stay in the heap and are skipped
/// when they come out: a symbol's span only grows (rightwards, by absorbing its right
/// neighbour), so an entry is current iff its left symbol is alive and its right neighbour
/// still ends where it did, i.e. both spans are unchanged (if the left symbol had absorbed
/// the old right one, its new right neighbour would start at or past that end).
fn merge<I: Index>(
    merges: &HashMap<(u32, u32), (u32, u32)>,
    symbols: &mut [u32],
) -> (usize, usize) {
    let n = symbols.len();
    if n < 2 {
        return (n, 0);
    }
    // next[i]: the next live symbol (n past the last one), NONE once i is merged away.
    let mut next: Vec<I> = (1..=n).map(I::new).collect();
    let mut prev: Vec<I> = (0..n)
        .map(|i| if i == 0 { I::NONE } else { I::new(i - 1) })
        .collect();
    // (rank, left, end of the right symbol, merged id).
    let candidate = |symbols: &[u32], next: &[I], left: usize, right: usize| {
        let (rank, merged) = merges.get(&(symbols[left], symbols[right]))?;
        Some(Reverse((*rank, I::new(left), next[right], *merged)))
    };
    // Built in one go: heapifying is linear, n pushes would not be.
    let mut heap: BinaryHeap<_> = (0..n - 1)
        .filter_map(|left| candidate(symbols, &next, left, left + 1))
        .collect();
    let mut work = 0;
    while let Some(Reverse((_, left, end, merged))) = heap.pop() {
        work += 1;
        let left = left.get();
        let right = next[left];
        if right == I::NONE || right.get() >= n || next[right.get()] != end {
            continue;
        }
        symbols[left] = merged;
        next[left] = end;
        next[right.get()] = I::NONE;
        if end.get() < n {
            prev[end.get()] = I::new(left);
            heap.extend(candidate(symbols, &next, left, end.get()));
        }
        if prev[left] != I::NONE {
            heap.extend(candidate(symbols, &next, prev[left].get(), left));
        }
    }
    // Compact the survivors to the front; the first symbol is never merged away.
    let mut len = 0;
    let mut at = 0;
    while at < n {
        symbols[len] = symbols[at];
        len += 1;
        at = next[at].get();
    }
    (len, work)
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

    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::test_support::fixtures_dir;
    use crate::text::clip::tokenizer::ClipTokenizer;

    fn clip_bpe() -> Bpe {
        ClipTokenizer::from_dir(&fixtures_dir().join("clip-tokenizer"))
            .unwrap()
            .bpe
    }

    /// The fast merge, its wide-index variant and the naive loop agree on `word`.
    fn assert_same_as_naive(bpe: &Bpe, word: &[u8]) {
        let mut naive = vec![7];
        bpe.encode_bytes_naive(word, &mut naive);
        let mut fast = vec![7];
        bpe.encode_bytes(word, &mut fast);
        assert_eq!(fast, naive, "{word:?}");
        let mut wide = vec![7];
        bpe.encode_bytes_wide(word, &mut wide);
        assert_eq!(wide, naive, "{word:?}");
    }

    /// Words made of pieces of the real vocabulary (so that long merge chains happen), runs
    /// over small alphabets (many equal pairs, where the leftmost-first tie-break matters)
    /// and arbitrary bytes.
    #[test]
    fn heap_merge_matches_naive_on_random_words() {
        let bpe = clip_bpe();
        let mut to_byte = HashMap::new();
        for (byte, c) in byte_alphabet().iter().enumerate() {
            to_byte.insert(*c, byte as u8);
        }
        let mut tokens: Vec<Vec<u8>> = bpe
            .vocab
            .keys()
            .filter_map(|token| {
                let token = token.strip_suffix(END_OF_WORD).unwrap_or(token);
                token.chars().map(|c| to_byte.get(&c).copied()).collect()
            })
            .collect();
        // HashMap order differs between runs; the seed alone must fix the words.
        tokens.sort_unstable();
        let mut rng = ChaCha8Rng::seed_from_u64(20);
        let alphabets: [&[u8]; 4] = [b"a", b"ab", b"aeiou", b"abcdefghijklmnopqrstuvwxyz"];
        for _ in 0..1500 {
            let mut word = Vec::new();
            for _ in 0..rng.random_range(1..12) {
                word.extend_from_slice(tokens.choose(&mut rng).unwrap());
            }
            assert_same_as_naive(&bpe, &word);

            let alphabet = alphabets.choose(&mut rng).unwrap();
            let word: Vec<u8> = (0..rng.random_range(1..200))
                .map(|_| *alphabet.choose(&mut rng).unwrap())
                .collect();
            assert_same_as_naive(&bpe, &word);

            let word: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            assert_same_as_naive(&bpe, &word);
        }
    }

    /// Random merge tables over a tiny alphabet, ranked in any order (so a merge can make a
    /// pair that ranks before the one just applied), with pairs listed twice, words with a
    /// byte missing from the vocabulary (dropped, or the unknown token), with and without an
    /// unknown token.
    #[test]
    fn heap_merge_matches_naive_on_random_merge_tables() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let mut strings = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| ["a", "b", "c"].map(|c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        strings.retain(|s| !s.is_empty());
        strings.sort_unstable();
        strings.dedup();
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for s in &strings {
            for token in [s.clone(), format!("{s}{END_OF_WORD}")] {
                let id = vocab.len() as u32;
                vocab.insert(token, id);
            }
        }
        let unk_id = vocab.len() as u32;
        for table in 0..200 {
            let mut merges = Vec::new();
            while merges.len() < 40 {
                let left = strings.choose(&mut rng).unwrap();
                let right = strings.choose(&mut rng).unwrap();
                if left.len() + right.len() > 4 {
                    continue;
                }
                let right = if rng.random_bool(0.3) {
                    format!("{right}{END_OF_WORD}")
                } else {
                    right.clone()
                };
                merges.push((left.clone(), right));
            }
            let unk = (table % 2 == 0).then_some(unk_id);
            let bpe = Bpe::new(vocab.clone(), &merges, unk).unwrap();
            for _ in 0..30 {
                let word: Vec<u8> = (0..rng.random_range(0..60))
                    .map(|_| *b"aaabbbccd".choose(&mut rng).unwrap())
                    .collect();
                assert_same_as_naive(&bpe, &word);
            }
        }
    }

    /// The merge work is linear in the word's length: at most 3 heap entries per symbol. The
    /// naive loop scanned every remaining pair after each merge, about n^2 / 2 lookups for a
    /// word of n letters (over 10^9 here, a minute and more).
    #[test]
    fn merge_work_is_linear_in_the_word_length() {
        let bpe = clip_bpe();
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let len = 100_000;
        let random: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect();
        let mut words = vec![random, vec![b'a'; len], b"ab".repeat(len / 2)];
        words.push(b"photograph".repeat(len / 10));
        for word in words {
            let mut ids = Vec::new();
            let work = bpe.encode_bytes(&word, &mut ids);
            assert!(work <= 3 * len, "{work} heap entries for {len} bytes");
            // A lower bound as well, so that the counter is known to count: every merge is
            // one entry taken, and n bytes became ids.len() symbols.
            assert!(
                work >= len - ids.len(),
                "{work} < {} merges",
                len - ids.len()
            );
        }
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
