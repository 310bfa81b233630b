//! A 32x32 block of f32 sums of bf16 products, the unit the bf16 kernels ([`super::bf16`]'s
//! products, [`super::tiled_conv`], [`super::tiled_attention`]) compute in: on AMX tiles
//! ([`super::amx`]) where the CPU has them, else in AVX-512 registers with AVX512-BF16's
//! `vdpbf16ps` (AMD Zen 4 and later, Intel Cooper Lake), so that one layout of operands
//! and one walk over them serve both.
//!
//! The operands are the tiles': the left as bf16 rows, 32 values a step, any row stride; the
//! right as 16 rows of 32 words a step, each word a pair of bf16 values along the inner
//! dimension. In registers, the block's sums live in memory between calls and each call
//! takes the block's rows 12 at a time: 24 accumulators (12 rows of two 16-lane halves), the
//! two halves of a right operand's row, and each left row's pair broadcast, so that every
//! value loaded feeds 12 or 2 multiply-adds. The sums are those of `vdpbf16ps` taken
//! in order along the inner dimension: the same bits for the same operands, whatever the
//! kernel around them.

use super::buffers::Block;

/// Rows (and columns) of the block of sums a [`Tiles`] session computes at a time.
pub const BLOCK: usize = 32;
/// Inner values a step takes: one tile row of bf16.
pub const STEP: usize = 32;
/// Steps ahead [`Tiles::accumulate_streaming`] asks for its right operand (4 to 8 did best).
const PREFETCH_STEPS: usize = 8;

/// Where the bf16 kernels' blocks are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// AMX tiles.
    Amx,
    /// AVX-512 registers, AVX512-BF16 dot products.
    Registers,
}

impl Unit {
    /// Whether this CPU has it.
    pub fn runs(self) -> bool {
        match self {
            Self::Amx => super::amx::available(),
            Self::Registers => super::bf16::available(),
        }
    }

    /// The fastest this CPU has; `None` without AVX512-BF16.
    pub fn detect() -> Option<Self> {
        if super::amx::available() {
            Some(Self::Amx)
        } else {
            super::bf16::available().then_some(Self::Registers)
        }
    }
}

/// Whether this CPU computes [`Tiles`] at all: it has AVX512-BF16 (which AMX's operands are
/// packed with too, [`super::amx::available`]).
pub fn available() -> bool {
    Unit::Registers.runs()
}

/// A session computing a 32x32 block of sums on this thread; AMX's state is per thread, so
/// a task configures its own.
pub struct Tiles {
    on: On,
    /// Rows of the block [`Tiles::accumulate`] computes (see [`Tiles::set_rows`]).
    rows: usize,
}

enum On {
    Amx(super::amx::Session),
    /// The block's sums between calls.
    Registers(Box<Block>),
}

impl Tiles {
    /// A session on the fastest unit this CPU has; `None` where [`available`] is false.
    pub fn configure() -> Option<Self> {
        Self::configure_on(Unit::detect()?)
    }

    /// A session on `unit` (to compare them); `None` where this CPU lacks it.
    pub fn configure_on(unit: Unit) -> Option<Self> {
        let on = match unit {
            Unit::Amx => On::Amx(super::amx::Session::configure()?),
            Unit::Registers if unit.runs() => On::Registers(Box::new(Block::ZERO)),
            Unit::Registers => return None,
        };
        Some(Self { on, rows: BLOCK })
    }

    /// The unit the session computes on.
    pub fn unit(&self) -> Unit {
        match self.on {
            On::Amx(_) => Unit::Amx,
            On::Registers(_) => Unit::Registers,
        }
    }

    /// Sets the 32x32 sums to zero.
    pub fn zero(&mut self) {
        match &mut self.on {
            On::Amx(session) => session.zero(),
            On::Registers(sums) => sums.0.fill(0.0),
        }
    }

    /// Rows of the block the next [`Tiles::accumulate`]s need (1 to 32; all 32 at first): in
    /// registers the other rows' sums are left as they are, and mean nothing once stored;
    /// AMX computes every row regardless. A block past the last of its rows (77 tokens of a
    /// text encoder are two blocks and 13 rows) computes no padding rows in registers.
    pub fn set_rows(&mut self, rows: usize) {
        assert!(
            (1..=BLOCK).contains(&rows),
            "a block has 1 to {BLOCK} rows, not {rows}"
        );
        self.rows = rows;
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
        let at = Operands::new(a, a_stride, b, b_stride, b_step);
        // SAFETY: as the caller promises.
        unsafe { self.run(at, steps) }
    }

    /// [`Tiles::accumulate`] for a right operand read once from memory (a weight multiplied
    /// by few rows), each step asking for the one [`PREFETCH_STEPS`] on into L2 meanwhile:
    /// the hardware's prefetch alone left a CLIP text encoder's products waiting on memory
    /// (CLIP-G, 77 tokens, 2 threads, AMX: 177 -> 164-166 ms); for a panel read from L2
    /// already, the requests only cost.
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
        let at = Operands {
            ahead: PREFETCH_STEPS,
            ..Operands::new(a, a_stride, b, b_stride, b_step)
        };
        // SAFETY: as the caller promises (prefetching past the operand reads nothing).
        unsafe { self.run(at, steps) }
    }

    /// `steps` steps of products at `at` added to the sums.
    ///
    /// # Safety
    /// As [`Tiles::accumulate`].
    #[allow(unsafe_code)]
    unsafe fn run(&mut self, at: Operands, steps: usize) {
        // SAFETY: as the caller promises; each AMX step alone reads what the caller's whole
        // call may.
        unsafe {
            match &mut self.on {
                On::Registers(sums) => {
                    registers::accumulate(sums.0.as_mut_ptr(), at, steps, self.rows, false)
                }
                On::Amx(session) if at.ahead == 0 => {
                    session.accumulate(at.a, at.a_stride, at.b, at.b_stride, at.b_step, steps)
                }
                On::Amx(session) => {
                    for s in 0..steps {
                        let ahead = at.b.wrapping_add((s + at.ahead) * at.b_step);
                        super::amx::prefetch_l2(ahead, at.b_step);
                        let b = at.b.wrapping_add(s * at.b_step);
                        let a = at.a.wrapping_add(64 * s);
                        session.accumulate(a, at.a_stride, b, at.b_stride, at.b_step, 1);
                    }
                }
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
        match &mut self.on {
            // SAFETY: as the caller promises.
            On::Amx(session) => unsafe { session.load(src, src_stride) },
            On::Registers(sums) => {
                for (r, row) in sums.0.chunks_exact_mut(BLOCK).enumerate() {
                    // SAFETY: as the caller promises; `row` is a fresh borrow of the box.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.add(r * src_stride),
                            row.as_mut_ptr(),
                            BLOCK,
                        )
                    };
                }
            }
        }
    }

    /// Writes the 32x32 sums to `dst`, rows `dst_stride` values apart.
    ///
    /// # Safety
    /// `dst` has room for 32 rows of 32 values `dst_stride` apart.
    #[allow(unsafe_code)]
    pub unsafe fn store(&self, dst: *mut f32, dst_stride: usize) {
        // SAFETY: as the caller promises.
        unsafe { self.store_part(dst, dst_stride, BLOCK, BLOCK) }
    }

    /// The sums, written into `dst` rows `dst_stride` apart, `rows` by `cols` of them (up to
    /// 32 each): on AMX straight from the tiles when the block is whole, through a buffer
    /// otherwise.
    ///
    /// # Safety
    /// `dst` has room for `rows` rows of `cols` values `dst_stride` apart.
    #[allow(unsafe_code)]
    pub unsafe fn store_part(&self, dst: *mut f32, dst_stride: usize, rows: usize, cols: usize) {
        let mut buffer;
        let sums = match &self.on {
            On::Amx(session) if rows == BLOCK && cols == BLOCK => {
                // SAFETY: as the caller promises.
                return unsafe { session.store(dst, dst_stride) };
            }
            On::Amx(session) => {
                buffer = Block::ZERO;
                // SAFETY: `buffer` holds the block.
                unsafe { session.store(buffer.0.as_mut_ptr(), BLOCK) };
                &buffer
            }
            On::Registers(sums) => &**sums,
        };
        for (r, row) in sums.0.chunks_exact(BLOCK).take(rows).enumerate() {
            // SAFETY: as the caller promises.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(r * dst_stride), cols) };
        }
    }
}

/// Adds `steps` steps of products to the sums of the first `rows` rows of `sums` (rows of 32
/// values), in AVX-512 registers whatever the CPU's fastest unit: the left operand's rows at
/// `a`, `a_stride` bytes apart, the right one as [`Tiles::accumulate`] reads it, each step
/// asking for the right operand's step `ahead` steps on (none where it is 0). A product of
/// few rows (a text encoder's 77 tokens) takes them all at once, where blocks of 32 split
/// them unevenly.
///
/// # Safety
/// The left operand has `rows` rows of `64 steps` readable bytes from `a`; the right one
/// `steps` blocks of 16 rows of 128 bytes.
#[allow(unsafe_code, clippy::too_many_arguments)]
pub unsafe fn accumulate_rows(
    sums: &mut [f32],
    rows: usize,
    a: *const u8,
    a_stride: usize,
    b: *const u8,
    b_stride: usize,
    b_step: usize,
    steps: usize,
    ahead: usize,
) {
    assert!(Unit::Registers.runs(), "AVX512-BF16 runs");
    assert!(sums.len() >= rows * BLOCK, "sums for {rows} rows");
    let at = Operands {
        ahead,
        ..Operands::new(a, a_stride, b, b_stride, b_step)
    };
    // SAFETY: checked above (the instructions, the sums) and as the caller promises.
    unsafe { registers::accumulate(sums.as_mut_ptr(), at, steps, rows, true) }
}

/// Where one call's operands are, as [`Tiles::accumulate`] takes them.
#[derive(Clone, Copy)]
struct Operands {
    a: *const u8,
    a_stride: usize,
    b: *const u8,
    b_stride: usize,
    b_step: usize,
    /// Steps on whose right operand each step asks for into L2 (none where 0).
    ahead: usize,
}

impl Operands {
    /// The operands as [`Tiles::accumulate`] names them, asking for nothing ahead.
    fn new(a: *const u8, a_stride: usize, b: *const u8, b_stride: usize, b_step: usize) -> Self {
        Self {
            a,
            a_stride,
            b,
            b_stride,
            b_step,
            ahead: 0,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod registers {
    use std::arch::x86_64::*;

    use super::{BLOCK, Operands, STEP};

    /// Rows of the block one pass takes: 24 accumulators.
    const ROWS: usize = 12;

    /// The first `count` rows of the sums at `sums` (rows of 32), in passes of [`ROWS`] and
    /// a last one of the rest, or, where `even` says so, in as many passes of sizes as even
    /// as they go; each pass asks for its share of the right operand's step `at.ahead` on.
    /// Even passes suit a product's rows taken whole: 77 rows are seven passes of 11 where
    /// twelve at a time leave a last one of five, whose ten accumulators each wait on their
    /// `vdpbf16ps` before (CLIP-G's products, 2 threads of a Zen 5 EPYC: 668 -> 680
    /// GFLOP/s); a block's 32 rows do better as 12, 12 and 8 than as 11, 11 and 10 (1-4 %).
    ///
    /// Safety: AVX-512F/BW and AVX512-BF16 are present; `sums` holds `count` rows of 32; the
    /// operands as [`super::Tiles::accumulate`] asks, for `count` rows of the left one.
    pub unsafe fn accumulate(sums: *mut f32, at: Operands, steps: usize, count: usize, even: bool) {
        let passes = count.div_ceil(ROWS);
        let mut first = 0;
        for pass in 0..passes {
            let size = match even {
                true => (count - first).div_ceil(passes - pass),
                false => ROWS.min(count - first),
            };
            let operands = Operands {
                a: at.a.wrapping_add(first * at.a_stride),
                ..at
            };
            // Each pass asks for its share of the lines of the step ahead.
            let lines = at.b_step / 64;
            let ahead = match at.ahead {
                0 => (0, 0),
                _ => (pass * lines / passes * 64, (pass + 1) * lines / passes * 64),
            };
            let sums = sums.wrapping_add(first * BLOCK);
            macro_rules! dispatch {
                ($($n:literal)*) => {
                    match size {
                        // SAFETY: as the caller promises; each pass reads and writes its
                        // own rows of `sums`.
                        $($n => unsafe { rows::<$n>(sums, operands, steps, ahead) },)*
                        _ => unreachable!("a pass takes 1 to {ROWS} rows"),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
            first += size;
        }
    }

    /// `R` rows of the block, their sums at `sums` (rows of 32), the left operand's rows
    /// from `at.a`; each step asks for bytes `ahead.0..ahead.1` of the right operand's step
    /// `at.ahead` on.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows<const R: usize>(
        sums: *mut f32,
        at: Operands,
        steps: usize,
        ahead: (usize, usize),
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm512_loadu_ps(sums.add(r * BLOCK));
                acc[1] = _mm512_loadu_ps(sums.add(r * BLOCK + 16));
            }
            for s in 0..steps {
                let b = at.b.add(s * at.b_step);
                let a = at.a.add(s * STEP * 2);
                if ahead.1 > ahead.0 {
                    super::super::amx::prefetch_l2(
                        b.wrapping_add(at.ahead * at.b_step + ahead.0),
                        ahead.1 - ahead.0,
                    );
                }
                for pair in 0..STEP / 2 {
                    let row = b.add(pair * at.b_stride);
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.cast()));
                    let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.add(64).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let word = a
                            .add(r * at.a_stride + 4 * pair)
                            .cast::<i32>()
                            .read_unaligned();
                        let word: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
                        acc[0] = _mm512_dpbf16_ps(acc[0], word, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], word, b1);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(sums.add(r * BLOCK), acc[0]);
                _mm512_storeu_ps(sums.add(r * BLOCK + 16), acc[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code, clippy::missing_safety_doc)]
mod registers {
    pub unsafe fn accumulate(_: *mut f32, _: super::Operands, _: usize, _: usize, _: bool) {
        unreachable!("AVX512-BF16 is never available here")
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::nn::testing::random;

    /// On each unit this CPU has: sums started from a bias (a row read with stride 0), steps
    /// added in two calls and one streaming, left rows further apart than a step, the right
    /// operand's rows too; stored whole and in part; the first rows alone. Against the
    /// products of the same bf16 values summed in f64.
    #[test]
    fn a_block_sums_every_step_of_products_onto_its_start() {
        let (steps, a_stride, b_stride) = (3, 4 * STEP + 8, 40);
        let a: Vec<u16> = random(BLOCK * a_stride, 1)
            .iter()
            .map(|v| bf16::from_f32(*v).to_bits())
            .collect();
        // Per step, 16 rows of `b_stride` words, the first 32 of them read.
        let b_step = 16 * b_stride;
        let b: Vec<u32> = random(steps * b_step * 2, 2)
            .chunks_exact(2)
            .map(|p| {
                let (even, odd) = (bf16::from_f32(p[0]), bf16::from_f32(p[1]));
                u32::from(even.to_bits()) | (u32::from(odd.to_bits()) << 16)
            })
            .collect();
        let bias = random(BLOCK, 3);
        let value = |bits: u16| f64::from(bf16::from_bits(bits).to_f32());
        let want = |r: usize, c: usize| -> f64 {
            let mut sum = f64::from(bias[c]);
            for s in 0..steps {
                for pair in 0..STEP / 2 {
                    let word = b[s * b_step + pair * b_stride + c];
                    for half in 0..2 {
                        let left = a[r * a_stride + s * STEP + 2 * pair + half];
                        sum += value(left) * value((word >> (16 * half)) as u16);
                    }
                }
            }
            sum
        };
        let mut ran = 0;
        for unit in [Unit::Amx, Unit::Registers] {
            let Some(mut tiles) = Tiles::configure_on(unit) else {
                continue;
            };
            ran += 1;
            let mut whole = Block::ZERO;
            let mut part = vec![-1f32; 5 * 7];
            // SAFETY: `a` holds 32 rows of `a_stride` values (each step's 32 inside), `b`
            // `steps` blocks of 16 rows of `b_stride` words, the block's and the part's
            // destinations what the stores write.
            #[allow(unsafe_code)]
            unsafe {
                tiles.load(bias.as_ptr(), 0);
                let (a_at, b_at) = (a.as_ptr().cast::<u8>(), b.as_ptr().cast::<u8>());
                tiles.accumulate(a_at, a_stride * 2, b_at, b_stride * 4, b_step * 4, 1);
                tiles.accumulate(
                    a_at.add(64),
                    a_stride * 2,
                    b_at.add(b_step * 4),
                    b_stride * 4,
                    b_step * 4,
                    1,
                );
                tiles.accumulate_streaming(
                    a_at.add(128),
                    a_stride * 2,
                    b_at.add(2 * b_step * 4),
                    b_stride * 4,
                    b_step * 4,
                    1,
                );
                tiles.store(whole.0.as_mut_ptr(), BLOCK);
                tiles.store_part(part.as_mut_ptr(), 7, 5, 7);
            }
            // Only the first 13 rows asked for: theirs are the same sums.
            let mut first_rows = vec![0f32; 13 * BLOCK];
            // SAFETY: as above, all three steps in one call.
            #[allow(unsafe_code)]
            unsafe {
                tiles.set_rows(13);
                tiles.load(bias.as_ptr(), 0);
                let (a_at, b_at) = (a.as_ptr().cast::<u8>(), b.as_ptr().cast::<u8>());
                tiles.accumulate(a_at, a_stride * 2, b_at, b_stride * 4, b_step * 4, steps);
                tiles.store_part(first_rows.as_mut_ptr(), BLOCK, 13, BLOCK);
            }
            assert_eq!(first_rows, whole.0[..13 * BLOCK], "{unit:?}, 13 rows");
            for r in 0..BLOCK {
                for c in 0..BLOCK {
                    let (got, want) = (whole.0[r * BLOCK + c], want(r, c));
                    assert!(
                        (f64::from(got) - want).abs() < 1e-4,
                        "{unit:?} [{r}][{c}]: {got} vs {want}"
                    );
                    if r < 5 && c < 7 {
                        assert_eq!(part[r * 7 + c], got, "{unit:?} part [{r}][{c}]");
                    }
                }
            }
        }
        if ran == 0 {
            eprintln!("skipped: this CPU has no AVX512-BF16");
        }
        assert_eq!(ran > 0, available());
    }
}
