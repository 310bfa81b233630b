//! The global allocator: the system's, with large blocks backed by 2 MiB pages, and the
//! largest mapped from the OS on their own.
//!
//! Loading a model copies gigabytes of weights out of the page cache into fresh heap memory,
//! and the kernel faults that memory in one 4 KiB page at a time: on a VM, where each fault
//! is an exit, that was most of a first load's time (`seedbed bench` on the SD-Turbo-shaped
//! model: 13 s, 17 s of it system time). Transparent huge pages are usually enabled only on
//! request (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`), so every block of at
//! least 4 MiB is advised `MADV_HUGEPAGE` before it is first touched: one fault per 2 MiB.
//!
//! Blocks from [`MAPPED_FROM_BYTES`] on are each a mapping of their own ([`crate::big_blocks`]),
//! outside the heap, so that the holes they leave go back to the OS.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks this large or larger are advised; smaller ones could not cover a whole huge page.
const ADVISE_FROM_BYTES: usize = 4 << 20;
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Blocks this large or larger get a mapping of their own: a VAE's images (32 MiB to 1 GiB at
/// 512x512 and 1024x1024), a UNet's largest activations and transformed convolution weights.
/// From 256 MiB, the images of an SDXL-shaped decoder's lower levels (32 and 128 MiB at
/// 1024x1024) stayed in the heap, in holes its 1 GiB ones at the top could not use: its bf16
/// peak was 8.33-8.47 GiB, from 32 MiB 7.97-8.01 (64 MiB: 8.17-8.19, 16 MiB: 7.91, with the
/// second load a quarter slower), the times the same (bench/RESULTS.md).
const MAPPED_FROM_BYTES: usize = 32 << 20;

pub struct HugePageAllocator;

/// Whether blocks of `layout` get a mapping of their own (page-aligned, which covers any
/// alignment Rust asks of such a block in practice).
fn mapped(layout: Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= MAPPED_FROM_BYTES && layout.align() <= 4096
}

// SAFETY: every call goes to `System` unchanged, or for the largest blocks to mmap/munmap
// with their size; the advice only changes how the kernel backs pages inside blocks this
// allocator has just handed out.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for HugePageAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if mapped(layout) {
            return crate::big_blocks::take(layout.size(), false);
        }
        // SAFETY: forwarded with the caller's guarantees.
        let block = unsafe { System.alloc(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if mapped(layout) {
            return crate::big_blocks::take(layout.size(), true);
        }
        // SAFETY: forwarded with the caller's guarantees.
        let block = unsafe { System.alloc_zeroed(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if mapped(layout) {
            // `block` came from `take` with this size (the caller's layout is the one it
            // was allocated or last resized with).
            crate::big_blocks::give(block, layout.size());
            return;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new_layout)) {
            (false, false) => {
                // SAFETY: forwarded with the caller's guarantees.
                let block = unsafe { System.realloc(block, layout, new_size) };
                advise(block, new_size);
                block
            }
            #[cfg(target_os = "linux")]
            (true, true) => crate::big_blocks::resize(block, layout.size(), new_size),
            // Across the line: a new block, the contents copied, the old one freed.
            _ => {
                // SAFETY: `new_layout` has a non-zero size (it is at least the old block's
                // or the line's); the copy stays inside both blocks; the old block is freed
                // with the layout it was allocated with.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// Advise the whole huge pages inside `[block, block + len)`.
pub(crate) fn advise(block: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    if !block.is_null() && len >= ADVISE_FROM_BYTES {
        let start = (block as usize).next_multiple_of(HUGE_PAGE_BYTES);
        let end = (block as usize + len) & !(HUGE_PAGE_BYTES - 1);
        if end > start {
            // SAFETY: the range lies inside a block this process owns; MADV_HUGEPAGE changes
            // no contents, only how untouched pages will be backed. Failure (THP disabled,
            // an old kernel) leaves ordinary pages, so the result is ignored.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (block, len);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// `AnonHugePages` (KiB) of the mappings that overlap `[start, end)`, from `/proc/self/smaps`.
    fn huge_kib_within(start: usize, end: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut overlaps = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((from, to)) = range
                && let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                )
            {
                overlaps = from < end && start < to;
            } else if overlaps && let Some(value) = line.strip_prefix("AnonHugePages:") {
                kib += value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
        kib
    }

    #[test]
    fn large_blocks_are_backed_by_huge_pages_where_the_kernel_offers_them() {
        let policy = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        // The test binary uses the crate's global allocator, as the program does.
        let block = vec![1u8; 64 << 20];
        let start = block.as_ptr() as usize;
        let huge = huge_kib_within(start, start + block.len());
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        if policy.contains("[madvise]") || policy.contains("[always]") {
            // Fragmented memory may leave part of it in small pages; most must be huge.
            assert!(
                huge >= 32 << 10,
                "{huge} KiB of the 64 MiB block in huge pages"
            );
        }
    }
}
