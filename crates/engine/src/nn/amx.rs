//! bf16 products on Intel AMX tiles (Sapphire Rapids and later), what oneDNN gives PyTorch's
//! bf16 on those CPUs.
//!
//! One `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one into 16x16 f32 sums: 16384
//! multiply-adds, against 32 for an AVX512-BF16 instruction. A [`Tiles`] session holds a 32x32
//! block of sums in four tiles (`tmm0..3`), two 16-row tiles of the left operand (`tmm4`,
//! `tmm5`) and two 16-column tiles of the right (`tmm6`, `tmm7`): every tile loaded is used
//! twice.
//!
//! The left operand is read as bf16 rows, 32 values (64 bytes) a step, any row stride; the
//! right as rows of 16 32-bit words, each a pair of bf16 values along the inner dimension (the
//! layout [`super::bf16`]'s panels already have): 16 such rows a step. The instructions are
//! written in `asm!` (Rust's AMX intrinsics are unstable); Linux hands a process the tiles'
//! 8 KiB of register state only once it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! [`available`] does.

/// Rows (and columns) of the block of sums a [`Tiles`] session computes at a time.
pub const BLOCK: usize = 32;
/// Inner values a step takes: one tile row of bf16.
pub const STEP: usize = 32;
/// Steps ahead [`Tiles::accumulate_streaming`] asks for its right operand (4 to 8 did best).
const PREFETCH_STEPS: usize = 8;

/// Whether this CPU and OS run the AMX kernels: AMX-TILE and AMX-BF16, the AVX-512 the
/// operands are packed with ([`super::bf16::available`]), and the tiles' state granted to this
/// process; unless the environment says `SEEDBED_AMX=off` (to measure the AVX512-BF16 path).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("SEEDBED_AMX").map_or(true, |v| v != "off")
            && super::bf16::available()
            && x86::supported()
    })
}

/// The four tiles of a 32x32 block of sums configured on this thread, released when dropped.
/// Tile state is per thread: a task configures its own session.
pub struct Tiles {
    /// Sessions stay on the thread that configured them.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Configures the tiles on this thread; `None` where [`available`] is false.
    pub fn configure() -> Option<Self> {
        if !available() {
            return None;
        }
        // SAFETY: `available` checked the instructions and the OS's grant.
        #[allow(unsafe_code)]
        unsafe {
            x86::configure()
        };
        Some(Self {
            _not_send: std::marker::PhantomData,
        })
    }

    /// Sets the 32x32 sums to zero.
    pub fn zero(&mut self) {
        // SAFETY: the session configured the tiles on this thread.
        #[allow(unsafe_code)]
        unsafe {
            x86::zero()
        }
    }

    /// Adds `steps` steps of products to the sums: step `s` multiplies the left operand's
    /// 32 rows of 32 bf16 values at `a + 64 s` (rows `a_stride` bytes apart) by the right's
    /// 16 rows of 32 words at `b + s b_step` (rows `b_stride` bytes apart).
    ///
    /// # Safety
    /// Every byte those reads touch is readable: 32 rows of the left operand, each
    /// `64 steps` bytes from `a`; `steps` blocks of 16 rows of 128 bytes of the right.
    #[allow(unsafe_code)]
    pub unsafe fn accumulate(
        &mut self,
        a: *const u8,
        a_stride: usize,
        b: *const u8,
        b_stride: usize,
        b_step: usize,
        steps: usize,
    ) {
        // SAFETY: the session configured the tiles; the caller keeps the reads in bounds.
        unsafe { x86::accumulate(a, a_stride, b, b_stride, b_step, steps) }
    }

    /// [`Tiles::accumulate`] for a right operand read once from memory (a weight multiplied
    /// by few rows), each step asking for the one [`PREFETCH_STEPS`] on into L2 meanwhile:
    /// the hardware's prefetch alone left a CLIP text encoder's products waiting on memory
    /// (CLIP-G, 77 tokens, 2 threads: 177 -> 164-166 ms); for a panel read from L2 already,
    /// the requests only cost.
    ///
    /// # Safety
    /// As [`Tiles::accumulate`] (prefetching past the operand's end reads nothing).
    #[allow(unsafe_code)]
    pub unsafe fn accumulate_streaming(
        &mut self,
        a: *const u8,
        a_stride: usize,
        b: *const u8,
        b_stride: usize,
        b_step: usize,
        steps: usize,
    ) {
        for s in 0..steps {
            x86::prefetch_l2(b.wrapping_add((s + PREFETCH_STEPS) * b_step), b_step);
            // SAFETY: as the caller promises, for step `s` alone.
            unsafe {
                x86::accumulate(
                    a.wrapping_add(64 * s),
                    a_stride,
                    b.wrapping_add(s * b_step),
                    b_stride,
                    b_step,
                    1,
                )
            }
        }
    }

    /// Sets the 32x32 sums to the ones at `src`, rows `src_stride` values apart: a block
    /// [`Tiles::store`]d before goes on summing; with a stride of 0, every row starts from
    /// the same 32 values (a bias).
    ///
    /// # Safety
    /// `src` holds 32 rows of 32 values `src_stride` apart.
    #[allow(unsafe_code)]
    pub unsafe fn load(&mut self, src: *const f32, src_stride: usize) {
        // SAFETY: the session configured the tiles; the caller keeps the reads in bounds.
        unsafe { x86::load(src, src_stride * 4) }
    }

    /// Writes the 32x32 sums to `dst`, rows `dst_stride` values apart.
    ///
    /// # Safety
    /// `dst` has room for 32 rows of 32 values `dst_stride` apart.
    #[allow(unsafe_code)]
    pub unsafe fn store(&self, dst: *mut f32, dst_stride: usize) {
        // SAFETY: the session configured the tiles; the caller keeps the writes in bounds.
        unsafe { x86::store(dst, dst_stride * 4) }
    }

    /// The sums, written into `dst` rows `dst_stride` apart, `rows` by `cols` of them (up to
    /// 32 each): straight from the tiles when the block is whole, through a buffer otherwise.
    ///
    /// # Safety
    /// `dst` has room for `rows` rows of `cols` values `dst_stride` apart.
    #[allow(unsafe_code)]
    pub unsafe fn store_part(&self, dst: *mut f32, dst_stride: usize, rows: usize, cols: usize) {
        if rows == BLOCK && cols == BLOCK {
            // SAFETY: as the caller promises.
            return unsafe { self.store(dst, dst_stride) };
        }
        let mut sums = super::buffers::Block::ZERO;
        // SAFETY: `sums` holds the block; the caller keeps the copies in bounds.
        unsafe {
            self.store(sums.0.as_mut_ptr(), BLOCK);
            for (r, row) in sums.0.chunks_exact(BLOCK).take(rows).enumerate() {
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(r * dst_stride), cols);
            }
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the session configured the tiles on this thread; releasing returns them to
        // their initial state, so a context switch saves nothing of them.
        #[allow(unsafe_code)]
        unsafe {
            x86::release()
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::asm;

    /// AMX-TILE and AMX-BF16 in CPUID, and the kernel's grant of the tiles' state.
    pub fn supported() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where reported.
        #[allow(unused_unsafe)]
        let cpu = unsafe {
            __cpuid(0).eax >= 7 && {
                let edx = __cpuid_count(7, 0).edx;
                edx & (1 << 22) != 0 && edx & (1 << 24) != 0
            }
        };
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission, no memory passed; it fails where the kernel
        // or the hypervisor does not enable the tiles.
        cpu && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0
    }

    /// Palette 1 with all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Safety: the CPU has AMX and the OS granted it ([`supported`]).
    pub unsafe fn configure() {
        let mut config = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        config.bytes_per_row[..8].fill(64);
        config.rows[..8].fill(16);
        // SAFETY: as the caller promises; the configuration is 64 bytes, as the instruction reads.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    }

    /// Safety: tiles configured on this thread.
    pub unsafe fn zero() {
        // SAFETY: as the caller promises.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }

    /// Safety: see [`super::Tiles::accumulate`].
    pub unsafe fn accumulate(
        a: *const u8,
        a_stride: usize,
        b: *const u8,
        b_stride: usize,
        b_step: usize,
        steps: usize,
    ) {
        let a_low = a.wrapping_add(16 * a_stride);
        for s in 0..steps {
            // SAFETY: as the caller promises: rows 0-15 and 16-31 of the left operand, and
            // the step's two 16-word halves of the right, are readable.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {a_stride}*1]",
                    "tileloadd tmm6, [{b0} + {b_stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {b_stride}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {a_stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(64 * s),
                    a1 = in(reg) a_low.add(64 * s),
                    b0 = in(reg) b.add(s * b_step),
                    b1 = in(reg) b.add(s * b_step + 64),
                    a_stride = in(reg) a_stride,
                    b_stride = in(reg) b_stride,
                    options(nostack, readonly)
                )
            };
        }
    }

    /// Safety: tiles configured; `dst` has room for 32 rows of 128 bytes `stride` bytes apart.
    pub unsafe fn store(dst: *mut f32, stride: usize) {
        let low = dst.cast::<u8>().wrapping_add(16 * stride);
        // SAFETY: as the caller promises.
        unsafe {
            asm!(
                "tilestored [{d0} + {stride}*1], tmm0",
                "tilestored [{d1} + {stride}*1], tmm1",
                "tilestored [{d2} + {stride}*1], tmm2",
                "tilestored [{d3} + {stride}*1], tmm3",
                d0 = in(reg) dst,
                d1 = in(reg) dst.add(16),
                d2 = in(reg) low,
                d3 = in(reg) low.add(64),
                stride = in(reg) stride,
                options(nostack)
            )
        };
    }

    /// Safety: tiles configured; `src` holds 32 rows of 128 bytes `stride` bytes apart.
    pub unsafe fn load(src: *const f32, stride: usize) {
        let low = src.cast::<u8>().wrapping_add(16 * stride);
        // SAFETY: as the caller promises.
        unsafe {
            asm!(
                "tileloadd tmm0, [{s0} + {stride}*1]",
                "tileloadd tmm1, [{s1} + {stride}*1]",
                "tileloadd tmm2, [{s2} + {stride}*1]",
                "tileloadd tmm3, [{s3} + {stride}*1]",
                s0 = in(reg) src,
                s1 = in(reg) src.add(16),
                s2 = in(reg) low,
                s3 = in(reg) low.add(64),
                stride = in(reg) stride,
                options(nostack, readonly)
            )
        };
    }

    /// The `bytes` from `at` asked into L2, a cache line at a time; a hint that reads
    /// nothing, so any address will do.
    pub fn prefetch_l2(at: *const u8, bytes: usize) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(line).cast()) };
        }
    }

    /// Safety: tiles configured on this thread.
    pub unsafe fn release() {
        // SAFETY: as the caller promises.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[allow(unsafe_code, clippy::missing_safety_doc)]
mod x86 {
    pub fn supported() -> bool {
        false
    }
    pub unsafe fn configure() {}
    pub unsafe fn zero() {}
    pub unsafe fn accumulate(_: *const u8, _: usize, _: *const u8, _: usize, _: usize, _: usize) {
        unreachable!("AMX is never available here")
    }
    pub unsafe fn load(_: *const f32, _: usize) {
        unreachable!("AMX is never available here")
    }
    pub fn prefetch_l2(_: *const u8, _: usize) {}
    pub unsafe fn store(_: *mut f32, _: usize) {
        unreachable!("AMX is never available here")
    }
    pub unsafe fn release() {}
}
