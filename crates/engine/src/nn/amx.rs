//! bf16 products on Intel AMX tiles (Sapphire Rapids and later), what oneDNN gives PyTorch's
//! bf16 on those CPUs.
//!
//! One `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one into 16x16 f32 sums: 16384
//! multiply-adds, against 32 for an AVX512-BF16 instruction. A [`Session`] holds a 32x32
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

/// Whether this CPU and OS run the AMX kernels: AMX-TILE and AMX-BF16, the AVX-512 the
/// operands are packed with ([`super::bf16::available`]), and the tiles' state granted to this
/// process; unless the environment says `SEEDBED_AMX=off` (to measure the AVX512-BF16 path) or
/// candle's ops were asked for (asked on every call: a test binary switches after its start,
/// [`super::use_candle_ops_only`]).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !super::candle_ops_only()
        && *AVAILABLE.get_or_init(|| {
            std::env::var("SEEDBED_AMX").map_or(true, |v| v != "off")
                && super::bf16::available()
                && x86::supported()
        })
}

/// The four tiles of a 32x32 block of sums configured on this thread, released when dropped
/// ([`super::tiles::Tiles`] says what each call computes). Tile state is per thread: a task
/// configures its own session.
pub struct Session {
    /// Sessions stay on the thread that configured them.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Session {
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

    /// Sets the 32x32 sums to the ones at `src`, rows `src_stride` values apart: a block
    /// [`Session::store`]d before goes on summing; with a stride of 0, every row starts from
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
}

/// The `bytes` from `at` asked into L2, a cache line at a time; a hint that reads nothing,
/// so any address will do.
pub fn prefetch_l2(at: *const u8, bytes: usize) {
    x86::prefetch_l2(at, bytes)
}

impl Drop for Session {
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

    /// Safety: see [`super::Session::accumulate`].
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

    /// See [`super::prefetch_l2`].
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
