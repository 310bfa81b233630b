//! A small least-recently-used map, for caches of a few entries (encoded prompts), where a
//! linear scan is cheaper than any bookkeeping.

use std::collections::VecDeque;

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
