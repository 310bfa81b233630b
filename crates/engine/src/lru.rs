//! A small least-recently-used map, for caches of a few entries (encoded prompts), where a
//! linear scan is cheaper than any bookkeeping.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

pub struct Lru<K, V> {
    entries: VecDeque<(K, V)>,
    capacity: usize,
}

impl<K: PartialEq, V: Clone> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let value = entry.1.clone();
        self.entries.push_back(entry);
        Some(value)
    }

    /// Keep `value` for `key`, dropping the least recently used entry when full.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(at) = self.entries.iter().position(|(k, _)| *k == key) {
            self.entries.remove(at);
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((key, value));
    }

    /// The values kept, least recently used first.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// Encoded prompts by (prompt, token length), shared by a pipeline's jobs: a batch, a retry or
/// a user iterating on settings sends the same prompt again, and a T5-XXL or Qwen3 encoder is
/// seconds of work per prompt.
pub struct PromptCache<P> {
    entries: Mutex<Lru<(String, usize), P>>,
}

/// Encoded prompts kept per pipeline.
const PROMPTS: usize = 8;

impl<P: Clone> PromptCache<P> {
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Lru::new(PROMPTS)),
        }
    }

    /// The cached encoding of `prompt` at `length` tokens, or `encode`'s, then kept.
    pub fn get_or_encode<E>(
        &self,
        prompt: &str,
        length: usize,
        encode: impl FnOnce() -> Result<P, E>,
    ) -> Result<P, E> {
        let key = (prompt.to_string(), length);
        if let Some(cached) = self.lock().get(&key) {
            return Ok(cached);
        }
        // Not locked while encoding: another job may encode the same prompt meanwhile, which
        // costs time once, where holding the lock would stall every other prompt.
        let encoded = encode()?;
        self.lock().insert(key, encoded.clone());
        Ok(encoded)
    }

    fn lock(&self) -> MutexGuard<'_, Lru<(String, usize), P>> {
        // A panic while holding it cannot leave the map inconsistent: take it back.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<P: Clone> Default for PromptCache<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get(&"a"), Some(1), "a is now the most recent");
        lru.insert("c", 3);
        assert_eq!(lru.get(&"b"), None, "b was the least recent");
        assert_eq!((lru.get(&"a"), lru.get(&"c")), (Some(1), Some(3)));
        lru.insert("c", 4);
        // Kept twice, c would have pushed a out.
        assert_eq!(
            (lru.get(&"a"), lru.get(&"c")),
            (Some(1), Some(4)),
            "a key is kept once"
        );
    }
}
