//! The allocator's largest blocks ([`crate::huge_pages`]): each its own mapping from the OS,
//! and the mappings freed kept for reuse only while they and the live ones together stay
//! within the most that was ever live at once.
//!
//! A heap gives nothing back from its middle, and it keeps what is freed
//! ([`crate::memory::keep_freed_memory_for_reuse`]): an SDXL VAE decode at 1024x1024 frees and
//! allocates images of 32 MiB to 1 GiB, and each freed one left a hole that the next, larger
//! one could not use, 1.2 GiB resident beyond what was live at the peak. Unmapping each freed
//! one instead costs the kernel's faulting and zeroing of every new one, on this kind of VM
//! often with a compaction stall for its huge pages (0.04-0.5 s per 256 MiB, a tenth of the
//! SD-Turbo decode once per image). Kept for reuse, the next image's blocks are the last
//! one's (the same sizes come round again), and the resident size of these blocks never
//! exceeds the most that was live at once.

use std::sync::Mutex;

/// Freed mappings kept at most (more than one image's worth of distinct large blocks).
const KEPT: usize = 8;
/// Blocks handed out on a longer kept mapping, tracked at most; past that a kept mapping is
/// cut to the size asked.
const LONG: usize = 8;

struct Pool {
    /// Bytes of the blocks handed out and not yet freed, as asked.
    live: usize,
    /// The most `live` has been.
    peak: usize,
    /// Freed mappings, `(address, length)`; `None` where a slot is empty.
    kept: [Option<(usize, usize)>; KEPT],
    /// Blocks handed out whole on a longer kept mapping, `(address, mapped, asked)`: cutting
    /// the mapping to the size asked gave its tail back, to be faulted in again when the next
    /// larger block grew a mapping (an SDXL decode at 1024x1024 takes 256 MiB blocks between
    /// its 1 GiB ones: a second of page faults per image). The tails count against the peak
    /// and are cut only before new memory is mapped.
    long: [Option<(usize, usize, usize)>; LONG],
}

/// The process's pool, which the allocator draws on.
static POOL: Mutex<Pool> = Mutex::new(Pool::EMPTY);

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    // The pool's state is consistent between statements: a panic elsewhere leaves it usable.
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    const EMPTY: Pool = Pool {
        live: 0,
        peak: 0,
        kept: [None; KEPT],
        long: [None; LONG],
    };

    fn kept_bytes(&self) -> usize {
        self.kept.iter().flatten().map(|&(_, len)| len).sum()
    }

    /// Mapped bytes beyond what the blocks on longer mappings asked for.
    fn tail_bytes(&self) -> usize {
        self.long
            .iter()
            .flatten()
            .map(|&(_, mapped, asked)| mapped - asked)
            .sum()
    }

    /// Everything mapped: the live blocks with their tails, and the kept mappings.
    fn mapped_bytes(&self) -> usize {
        self.live + self.tail_bytes() + self.kept_bytes()
    }

    /// Take the block at `at` out of `long`: the length of its mapping, if it was there.
    fn untrack(&mut self, at: usize) -> Option<usize> {
        let slot = self
            .long
            .iter_mut()
            .find(|slot| slot.is_some_and(|(a, _, _)| a == at))?;
        slot.take().map(|(_, mapped, _)| mapped)
    }

    /// Before new memory is mapped for a block already counted in `live`: tails cut, then
    /// kept mappings given back largest first, until everything mapped stays within the peak.
    fn make_room(&mut self) {
        for i in 0..LONG {
            if self.mapped_bytes() <= self.peak {
                return;
            }
            if let Some((at, mapped, asked)) = self.long[i] {
                // Cut in place: the holder uses only the first `asked` bytes.
                if remap(at, mapped, asked).is_some() {
                    self.long[i] = None;
                }
            }
        }
        while self.mapped_bytes() > self.peak {
            let largest = (0..KEPT).max_by_key(|&i| self.kept[i].map_or(0, |(_, l)| l));
            match largest.and_then(|i| self.kept[i].take()) {
                Some((at, l)) => unmap(at, l),
                None => break,
            }
        }
    }
}

/// A block of `len` bytes, `zeroed` or as the last holder left it; null on failure.
pub fn take(len: usize, zeroed: bool) -> *mut u8 {
    take_from(&POOL, len, zeroed)
}

/// Free a block from [`take`] of `len` bytes (or resized to it by [`resize`]).
pub fn give(block: *mut u8, len: usize) {
    give_to(&POOL, block, len)
}

/// A block from [`take`] resized from `len` to `new_len` bytes, moved if it must be; null on
/// failure (the block untouched).
pub fn resize(block: *mut u8, len: usize, new_len: usize) -> *mut u8 {
    resize_in(&POOL, block, len, new_len)
}

/// [`take`] from `pool`: the process's, or a test's own (the allocator hands the process's
/// to every thread, so a test of it would see other tests' blocks come and go).
fn take_from(pool: &Mutex<Pool>, len: usize, zeroed: bool) -> *mut u8 {
    let mut pool = lock(pool);
    pool.live += len;
    pool.peak = pool.peak.max(pool.live);
    // The smallest kept mapping that holds `len`, handed out whole where it can be tracked;
    // else the largest, grown (its pages stay, only the rest is new).
    let fitting = (0..KEPT)
        .filter_map(|i| pool.kept[i].map(|(_, l)| (i, l)))
        .filter(|&(_, l)| l >= len)
        .min_by_key(|&(_, l)| l);
    let block = match fitting.and_then(|(i, _)| pool.kept[i].take()) {
        Some((at, l)) => match pool.long.iter().position(Option::is_none) {
            Some(free) if l > len => {
                pool.long[free] = Some((at, l, len));
                Some(at as *mut u8)
            }
            // Cut to size; where even that fails, given back and a new one mapped below.
            _ => remap(at, l, len).or_else(|| {
                unmap(at, l);
                None
            }),
        },
        None => None,
    };
    if let Some(block) = block {
        drop(pool);
        return handed_out(block, len, zeroed);
    }
    let largest = (0..KEPT)
        .filter_map(|i| pool.kept[i].map(|(_, l)| (i, l)))
        .max_by_key(|&(_, l)| l)
        .and_then(|(i, _)| pool.kept[i].take());
    pool.make_room();
    if let Some((at, l)) = largest {
        match remap(at, l, len) {
            Some(grown) => {
                drop(pool);
                // The grown part reads as zeros already.
                return handed_out(grown, l, zeroed);
            }
            None => unmap(at, l),
        }
    }
    // A new mapping reads as zeros.
    let block = map(len);
    if block.is_null() {
        pool.live -= len;
    }
    block
}

/// `block` with its first `used` bytes, those a last holder may have written, zeroed where
/// `zeroed` is asked.
fn handed_out(block: *mut u8, used: usize, zeroed: bool) -> *mut u8 {
    if zeroed {
        // SAFETY: the block holds at least `used` bytes, the caller's alone from here on.
        #[allow(unsafe_code)]
        unsafe {
            block.write_bytes(0, used)
        };
    }
    block
}

fn give_to(pool: &Mutex<Pool>, block: *mut u8, len: usize) {
    let mut pool = lock(pool);
    pool.live -= len;
    let mapped = pool.untrack(block as usize).unwrap_or(len);
    match pool.kept.iter_mut().find(|slot| slot.is_none()) {
        Some(slot) => *slot = Some((block as usize, mapped)),
        None => unmap(block as usize, mapped),
    }
}

fn resize_in(pool: &Mutex<Pool>, block: *mut u8, len: usize, new_len: usize) -> *mut u8 {
    let mut pool = lock(pool);
    let mapped = pool.untrack(block as usize);
    let from = mapped.unwrap_or(len);
    pool.live = pool.live - len + new_len;
    pool.peak = pool.peak.max(pool.live);
    if new_len > from {
        pool.make_room();
    }
    match remap(block as usize, from, new_len) {
        Some(moved) => moved,
        None => {
            pool.live = pool.live + len - new_len;
            if let Some(mapped) = mapped {
                let free = pool.long.iter().position(Option::is_none);
                pool.long[free.expect("its own slot")] = Some((block as usize, mapped, len));
            }
            std::ptr::null_mut()
        }
    }
}

/// A new private anonymous mapping of `len` bytes, advised for huge pages; null on failure.
fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh mapping at an address of the kernel's choosing touches nothing that
    // exists.
    #[allow(unsafe_code)]
    let block = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if block == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    crate::huge_pages::advise(block.cast(), len);
    block.cast()
}

/// The mapping at `at` of `len` bytes resized to `new_len` (moved if it must grow and cannot
/// in place); `None` on failure, the mapping as it was.
fn remap(at: usize, len: usize, new_len: usize) -> Option<*mut u8> {
    // SAFETY: `at` and `len` are a mapping made by `map` (or resized here), which only its
    // one owner, the pool or the block's holder through the allocator, uses.
    #[allow(unsafe_code)]
    let moved = unsafe { libc::mremap(at as *mut _, len, new_len, libc::MREMAP_MAYMOVE) };
    if moved == libc::MAP_FAILED {
        return None;
    }
    crate::huge_pages::advise(moved.cast(), new_len);
    Some(moved.cast())
}

fn unmap(at: usize, len: usize) {
    // SAFETY: `at` and `len` are a mapping made by `map`, which nothing uses any more.
    #[allow(unsafe_code)]
    unsafe {
        libc::munmap(at as *mut _, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block freed is the next one of its size or smaller, whole, and a longer one's tail is
    /// cut only before new memory is mapped; all kept within the peak; writes stay put. On a
    /// pool of the test's own: the process's also serves the blocks of the tests running
    /// beside it (from 32 MiB), whose tails and kept mappings this one's checks would count.
    #[test]
    fn freed_blocks_come_back_and_the_kept_stay_within_the_peak() {
        const MIB: usize = 1 << 20;
        let own = Mutex::new(Pool::EMPTY);
        let take = |len, zeroed| take_from(&own, len, zeroed);
        let give = |block, len| give_to(&own, block, len);
        let resize = |block, len, new_len| resize_in(&own, block, len, new_len);
        let pool = || lock(&own);
        let first = take(8 * MIB, false);
        assert!(!first.is_null());
        // SAFETY: the block holds 8 MiB, written and read within them.
        #[allow(unsafe_code)]
        unsafe {
            first.write_bytes(7, 8 * MIB);
            assert_eq!(*first.add(8 * MIB - 1), 7);
        }
        give(first, 8 * MIB);
        let again = take(4 * MIB, true);
        assert_eq!(again, first, "the kept mapping, handed out whole");
        // SAFETY: the block holds 4 MiB, zeroed as asked.
        #[allow(unsafe_code)]
        unsafe {
            assert_eq!((*again, *again.add(4 * MIB - 1)), (0, 0));
        }
        give(again, 4 * MIB);
        let whole = take(8 * MIB, false);
        assert_eq!(whole, first, "the whole mapping back, its tail never cut");
        // SAFETY: the block holds 8 MiB; the last byte is the one written first.
        #[allow(unsafe_code)]
        unsafe {
            assert_eq!(*whole.add(8 * MIB - 1), 7);
        }
        give(whole, 8 * MIB);

        // A smaller block on the 8 MiB mapping, then a larger one: the first's tail is cut
        // before the second is mapped.
        let small = take(4 * MIB, false);
        assert_eq!(pool().tail_bytes(), 4 * MIB);
        let large = take(8 * MIB, false);
        assert!(!large.is_null());
        {
            let pool = pool();
            assert_eq!(pool.tail_bytes(), 0);
            assert!(pool.mapped_bytes() <= pool.peak);
        }
        give(large, 8 * MIB);
        // SAFETY: the block holds 4 MiB.
        #[allow(unsafe_code)]
        unsafe {
            small.write_bytes(7, 4 * MIB);
        }
        let grown = resize(small, 4 * MIB, 12 * MIB);
        assert!(!grown.is_null());
        // SAFETY: the block now holds 12 MiB; its first 4 MiB kept their contents.
        #[allow(unsafe_code)]
        unsafe {
            assert_eq!(*grown, 7);
            grown.add(12 * MIB - 1).write(1);
        }
        give(grown, 12 * MIB);
        let pool = pool();
        assert!(pool.mapped_bytes() <= pool.peak);
        assert_eq!(pool.live, 0);
        // The test's own mappings given back with its pool.
        for &(at, len) in pool.kept.iter().flatten() {
            unmap(at, len);
        }
    }
}
