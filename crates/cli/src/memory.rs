//! Peak memory of this process, and the page cache, for reports and benchmarks.

use std::path::Path;

use anyhow::{Context, Result};

/// Make the allocator keep freed memory for the next allocation instead of returning it.
///
/// glibc hands every block over 32 MiB straight back to the OS when it is freed, so each of
/// the engine's large activations (128 MiB at 512x512 in the VAE) is page-faulted and zeroed
/// again by the kernel on every op: a quarter of the UNet's time on a 2-core VM. Serving the
/// large blocks from the heap, and not trimming it, removes that (those of 32 MiB and more
/// now come from mappings kept for reuse, below); the resident size then stays at its
/// high-water mark, as with PyTorch's caching allocator.
///
/// Only the main heap grows without bound: glibc gives each other thread's arena heaps of at
/// most 64 MiB and unmaps a heap as soon as it is empty. The engine runs on rayon's workers
/// ([`seedbed_engine::cpu::on_workers`]), so every thread allocates from the main heap too:
/// with an arena per worker the bf16 VAE decode at 512x512 took 436K page faults and 6.3 s,
/// with one 74K and 5.0 s. Small blocks still come from each thread's own cache first.
///
/// Blocks of 32 MiB and more bypass the heap ([`crate::big_blocks`]), so that the holes
/// they would leave in it go back to the OS; after loading a model, the holes its
/// temporaries left are handed back too (`seedbed_engine::Pipeline::load`).
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it runs first thing in main, before
    // any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The peak resident set size in bytes (`VmHWM`), where the OS reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory the OS could give this process now without swapping (`MemAvailable`, Linux).
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Ask the OS to drop `dir`'s `*.safetensors` files (recursively) from its page cache, so the
/// next read comes from disk. Clean pages only, no privileges needed; best effort by nature.
pub fn evict_from_page_cache(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            evict_from_page_cache(&path)?;
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
                .with_context(|| format!("evicting {} from the page cache", path.display()))?;
        }
    }
    Ok(())
}
