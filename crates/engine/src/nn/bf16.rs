//! Products with bf16 weights computed in bf16, on CPUs with AVX512-BF16.
//!
//! The activations are rounded to bf16 (nearest even) for the product and the sums stay f32,
//! as PyTorch computes a bf16 model through oneDNN: 32x32 blocks of sums of [`super::tiles`],
//! on AMX tiles where the CPU has them, else in AVX-512 registers (`vdpbf16ps`: 32
//! multiply-adds an instruction against 16 for an f32 FMA). Without AVX512-BF16 the weights
//! are widened to f32 instead ([`super::layers`]).
//!
//! The weight is packed in panels of 32 output columns: for each pair of inner values
//! (`(k, k+1)` side by side, the order the instructions read), the panel's 32 columns'
//! pairs, one 32-bit word each.

use half::bf16;
use rayon::prelude::*;

use super::buffers::Lines;
use super::rounded::Rounded;
use super::tiles::Unit;

/// Output columns a panel holds: a block of sums wide.
const PANEL: usize = 32;

/// Whether this CPU runs the bf16 kernel (AVX-512F, AVX-512BW and AVX512-BF16), unless the
/// environment says `SEEDBED_BF16_KERNEL=off` (to measure the widening path on such a CPU) or
/// candle's ops were asked for ([`super::candle_ops_only`]).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        !super::candle_ops_only()
            && *AVAILABLE.get_or_init(|| {
                std::env::var("SEEDBED_BF16_KERNEL").map_or(true, |v| v != "off")
                    && super::math::has_avx512()
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` (`rows x inner`, f32) times `weight` (`inner x out`, bf16), both row-major, as f32
/// `rows x out`; `None` when this CPU has no bf16 kernel.
pub fn matmul(
    x: &[f32],
    weight: &[bf16],
    rows: usize,
    inner: usize,
    out: usize,
) -> Option<Vec<f32>> {
    assert_eq!(weight.len(), inner * out, "weight size");
    let x = Lhs::F32(x, rows);
    product(Unit::detect()?, x, inner, out, None, |first_col, cols| {
        pack_panel(weight, inner, out, first_col, cols)
    })
}

/// `x w^T` with `x` `rows x inner` (f32) and `weight` `out x inner` (bf16), a linear layer's
/// weight as stored (read in place from the file, [`super::mapped`]), as f32 `rows x out`;
/// `None` when this CPU has no bf16 kernel. The same panels as [`matmul`] on the transposed
/// weight, so the same sums: each panel's pairs of a row are one 32-bit word in the stored
/// layout, and packing them is a 32-bit transpose.
pub fn matmul_stored(
    x: &[f32],
    weight: &[bf16],
    rows: usize,
    inner: usize,
    out: usize,
) -> Option<Vec<f32>> {
    matmul_stored_on(Unit::detect()?, x, weight, rows, inner, out)
}

/// [`matmul_stored`] on the given unit (to compare them); `None` where this CPU lacks it.
pub fn matmul_stored_on(
    unit: Unit,
    x: &[f32],
    weight: &[bf16],
    rows: usize,
    inner: usize,
    out: usize,
) -> Option<Vec<f32>> {
    assert_eq!(weight.len(), out * inner, "weight size");
    stored_product(unit, Lhs::F32(x, rows), weight, inner, out, None)
}

/// A linear layer's product with its weight as stored (`out x inner`, bf16), `bias` added to
/// each row as the sums are stored: `x w^T + bias` as f32 `rows x out`; `None` when this CPU
/// has no bf16 kernel.
pub fn linear_stored(
    x: Lhs,
    weight: &[bf16],
    out: usize,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let inner = weight.len().checked_div(out).unwrap_or(0);
    stored_product(Unit::detect()?, x, weight, inner, out, bias)
}

fn stored_product(
    unit: Unit,
    x: Lhs,
    weight: &[bf16],
    inner: usize,
    out: usize,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    product(unit, x, inner, out, bias, |first_col, cols| {
        pack_stored_panel(
            &weight[first_col * inner..(first_col + cols) * inner],
            inner,
        )
    })
}

/// A bf16 linear weight packed once, at load, into the panels the products read: a layer
/// holding it in memory skips the packing every product of [`matmul`] and [`matmul_stored`]
/// does (for a text encoder at 77 tokens, as long as the products themselves).
pub struct Packed {
    words: Lines<u32>,
    inner: usize,
    out: usize,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({}x{} bf16)", self.out, self.inner)
    }
}

impl Packed {
    /// `weight` (`out x inner`, as a file stores a linear layer's), each panel in parallel.
    pub fn from_stored(weight: &[bf16], out: usize, inner: usize) -> Self {
        assert_eq!(weight.len(), out * inner, "weight size");
        let len = panel_pairs(inner) * PANEL;
        let mut words = Lines::zeroed(out.div_ceil(PANEL) * len);
        words
            .par_chunks_mut(len.max(1))
            .enumerate()
            .for_each(|(panel, dst)| {
                let first = panel * PANEL;
                let rows = &weight[first * inner..(first + PANEL).min(out) * inner];
                pack_stored_panel_into(rows, inner, dst);
            });
        Self { words, inner, out }
    }

    /// `(out, inner)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inner)
    }

    /// The weight as stored, `out x inner`, unpacked (for a LoRA merge or another device).
    pub fn stored(&self) -> Vec<bf16> {
        let mut weight = vec![bf16::ZERO; self.out * self.inner];
        for (o, row) in weight.chunks_exact_mut(self.inner.max(1)).enumerate() {
            let panel = self.panel_words(o / PANEL);
            for (k, value) in row.iter_mut().enumerate() {
                let word = panel[(k / 2) * PANEL + o % PANEL];
                *value = bf16::from_bits((word >> (16 * (k % 2))) as u16);
            }
        }
        weight
    }

    fn panel_words(&self, panel: usize) -> &[u32] {
        let len = panel_pairs(self.inner) * PANEL;
        &self.words[panel * len..][..len]
    }
}

/// `x` (`rows x inner`, f32) times the packed weight's transpose, as f32 `rows x out`; `None`
/// when this CPU has no bf16 kernel.
pub fn matmul_packed(x: &[f32], weight: &Packed, rows: usize) -> Option<Vec<f32>> {
    linear_packed(Lhs::F32(x, rows), weight, None)
}

/// A linear layer's product with its packed weight, `bias` added to each row as the sums are
/// stored: `x w^T + bias` as f32 `rows x out`; `None` when this CPU has no bf16 kernel.
pub fn linear_packed(x: Lhs, weight: &Packed, bias: Option<&[f32]>) -> Option<Vec<f32>> {
    let (out, inner) = weight.dims();
    product(Unit::detect()?, x, inner, out, bias, |first_col, _| {
        bytemuck::cast_slice::<u32, u16>(weight.panel_words(first_col / PANEL))
    })
}

/// The activations of a product: f32 (`rows` of them), which it rounds to bf16, or rows
/// rounded before ([`Rounded`]).
#[derive(Clone, Copy, Debug)]
pub enum Lhs<'a> {
    F32(&'a [f32], usize),
    Rounded(&'a Rounded),
}

impl Lhs<'_> {
    pub fn rows(&self) -> usize {
        match self {
            Self::F32(_, rows) => *rows,
            Self::Rounded(x) => x.rows(),
        }
    }
}

/// `x` times the weight whose panel of `cols` columns from `first_col` `pack` returns (as
/// [`pack_panel`] lays it out), on `unit`; `None` where this CPU lacks it.
fn product<P: AsRef<[u16]> + Send + Sync>(
    unit: Unit,
    x: Lhs,
    inner: usize,
    out: usize,
    bias: Option<&[f32]>,
    pack: impl Fn(usize, usize) -> P + Sync,
) -> Option<Vec<f32>> {
    if !unit.runs() {
        return None;
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), out, "bias size");
    }
    Some(match x {
        Lhs::F32(x, rows) => {
            assert_eq!(x.len(), rows * inner, "activations size");
            tiles_product(unit, &Rounded::round(x, rows, inner), out, bias, pack)
        }
        Lhs::Rounded(x) if x.inner() != inner => {
            panic!("rounded rows {x:?} for a product with {inner} inner values")
        }
        Lhs::Rounded(x) => tiles_product(unit, x, out, bias, pack),
    })
}

/// The product on [`super::tiles::Tiles`]: the activations rounded to bf16 rows once and every panel packed
/// (or borrowed) once, then the product of few rows in registers by [`few_rows_product`], and
/// any other by [`blocks_product`]. A weight packed per call (read in place from its file) is
/// packed whole first: a transient copy of its size in bf16.
fn tiles_product<P: AsRef<[u16]> + Send + Sync>(
    unit: Unit,
    x: &Rounded,
    out: usize,
    bias: Option<&[f32]>,
    pack: impl Fn(usize, usize) -> P + Sync,
) -> Vec<f32> {
    let panels: Vec<P> = (0..out.div_ceil(PANEL))
        .into_par_iter()
        .map(|panel| pack(panel * PANEL, PANEL.min(out - panel * PANEL)))
        .collect();
    match unit == Unit::Registers && x.rows() <= STREAMING_ROWS {
        true => few_rows_product(x, out, bias, &panels),
        false => blocks_product(unit, x, out, bias, &panels),
    }
}

/// The product by 32x32 blocks of sums: each task takes a chunk of rows and a group of
/// panels, walking its row blocks outside and its panels inside. A group's panels fit in
/// half an L2 cache, so the group stays there while a block of rows (in L1) meets each panel
/// in turn, where one panel at a time against every row read the rows from L3 once per panel
/// (4096x320 -> 2560 on the Xeon of bench/RESULTS.md: 10.0 ms before, 4.5 ms after). Where a block of rows is larger
/// than half an L1 cache (inner sizes over 384), it meets each panel a chunk of the inner
/// dimension at a time, the panels' partial sums kept aside, so that the chunk is read from
/// L1 by every panel (1024x1280 -> 1280: 2.2 -> 1.8 ms; the sums are the same, in the same
/// order). A linear layer's bias is where each block's sums start (a tile load of one row,
/// stride 0): added after the store, in a pass of its own or block by block, it cost 3-5% of
/// an SDXL bf16 UNet call.
fn blocks_product<P: AsRef<[u16]> + Sync>(
    unit: Unit,
    x: &Rounded,
    out: usize,
    bias: Option<&[f32]>,
    panels: &[P],
) -> Vec<f32> {
    use super::tiles::{BLOCK, STEP, Tiles};
    const _: () = assert!(PANEL == BLOCK, "a panel is one block of tiles wide");
    let (rows, depth, lhs) = (x.rows(), x.depth(), x.bits());
    let plan = TilePlan::new(rows.div_ceil(BLOCK), panels.len(), depth);
    let mut dst = Vec::with_capacity(rows * out);
    let dst_ptr = SharedOut(dst.spare_capacity_mut().as_mut_ptr().cast());
    let (steps, chunk) = (depth / STEP, plan.chunk_steps(depth, unit));
    // Few rows: each panel comes from memory for a block or two, so ask for it ahead.
    let accumulate = match rows <= STREAMING_ROWS {
        true => Tiles::accumulate_streaming,
        false => Tiles::accumulate,
    };
    // The bias as one row of whole panels, zeros past `out`.
    let bias = bias.map(|bias| {
        Lines::par_filled(
            panels.len() * PANEL,
            panels.len() * PANEL,
            |_, row: &mut [f32]| row[..out].copy_from_slice(bias),
        )
    });
    (0..plan.tasks()).into_par_iter().for_each(|task| {
        let (row_blocks, group) = plan.task(task);
        let mut tiles = Tiles::configure_on(unit).expect("the unit was chosen where it runs");
        // Each panel's sums between chunks of the inner dimension.
        let mut partial =
            vec![super::buffers::Block::ZERO; if chunk < steps { group.len() } else { 0 }];
        for block in row_blocks {
            let first_row = block * BLOCK;
            for first_step in (0..steps).step_by(chunk) {
                let last = first_step + chunk >= steps;
                for (slot, panel) in group.clone().enumerate() {
                    let packed = panels[panel].as_ref();
                    assert_eq!(packed.len(), depth * PANEL, "packed panel size");
                    let first_col = panel * PANEL;
                    // SAFETY: `lhs` holds whole blocks of `BLOCK` rows of `depth` values and
                    // the panel `depth / 2` rows of `PANEL` words, which the steps read; this
                    // task alone writes columns `first_col..` of rows `first_row..` (the plan
                    // gives each block and panel to one task), inside `dst`'s capacity
                    // (`rows x out`), which outlives the parallel loop; `bias` holds a whole
                    // panel's 32 values from `first_col`, read for each row.
                    tiles.set_rows(BLOCK.min(rows - first_row));
                    #[allow(unsafe_code)]
                    unsafe {
                        match (first_step, &bias) {
                            // Every row of the block starts from the bias.
                            (0, Some(bias)) => tiles.load(bias[first_col..].as_ptr(), 0),
                            (0, None) => tiles.zero(),
                            _ => tiles.load(partial[slot].0.as_ptr(), BLOCK),
                        }
                        accumulate(
                            &mut tiles,
                            lhs[first_row * depth + first_step * STEP..].as_ptr().cast(),
                            depth * 2,
                            packed[first_step * STEP * PANEL..].as_ptr().cast(),
                            PANEL * 4,
                            STEP / 2 * PANEL * 4,
                            chunk.min(steps - first_step),
                        );
                        if !last {
                            tiles.store(partial[slot].0.as_mut_ptr(), BLOCK);
                            continue;
                        }
                        let at = dst_ptr.at(first_row * out + first_col);
                        let (block_rows, cols) =
                            (BLOCK.min(rows - first_row), PANEL.min(out - first_col));
                        tiles.store_part(at, out, block_rows, cols);
                    }
                }
            }
        }
    });
    // SAFETY: the plan's tasks cover every block of rows with every panel, so each of the
    // `rows x out` elements was stored once.
    #[allow(unsafe_code)]
    unsafe {
        dst.set_len(rows * out)
    };
    dst
}

/// The product of few rows (up to [`STREAMING_ROWS`]) in AVX-512 registers: each task takes
/// a group of panels and, for each, every row at once ([`super::tiles::accumulate_rows`]), a
/// chunk of the inner dimension at a time, so that the chunk of the panel, read from memory
/// by the first pass of rows, is read from L1 by the others; the rows' sums wait in a buffer
/// between chunks (in the destination, rows 20 KB apart at 5120 columns share L1's sets: a
/// tenth slower). Blocks of 32 rows each read the whole panel again, from L2 or beyond once
/// a group of panels outgrew it, and the loads of the panel held the text encoders'
/// products (CLIP-G at 77 tokens, 2 threads of a Zen 5 EPYC: 500-560 GFLOP/s of the 900
/// the cores' `vdpbf16ps` do). The same sums as the blocks', in the same order.
fn few_rows_product<P: AsRef<[u16]> + Sync>(
    x: &Rounded,
    out: usize,
    bias: Option<&[f32]>,
    panels: &[P],
) -> Vec<f32> {
    use super::tiles::STEP;
    let (rows, depth, lhs) = (x.rows(), x.depth(), x.bits());
    let steps = depth / STEP;
    let chunk = FEW_ROWS_CHUNK_STEPS;
    let tasks = FEW_ROWS_TASKS_PER_THREAD * rayon::current_num_threads();
    let group = panels.len().div_ceil(tasks).max(1);
    let mut dst = Vec::with_capacity(rows * out);
    let dst_ptr = SharedOut(dst.spare_capacity_mut().as_mut_ptr().cast());
    panels
        .par_chunks(group)
        .enumerate()
        .for_each(|(g, group_panels)| {
            let mut sums = vec![0f32; rows * PANEL];
            for (i, packed) in group_panels.iter().enumerate() {
                let packed = packed.as_ref();
                assert_eq!(packed.len(), depth * PANEL, "packed panel size");
                let first_col = (g * group + i) * PANEL;
                let cols = PANEL.min(out - first_col);
                for row in sums.chunks_exact_mut(PANEL) {
                    match bias {
                        Some(bias) => row[..cols].copy_from_slice(&bias[first_col..][..cols]),
                        None => row.fill(0.0),
                    }
                }
                for first_step in (0..steps).step_by(chunk) {
                    // SAFETY: `lhs` holds `rows` rows of `depth` values and the panel
                    // `depth / 2` rows of `PANEL` words, which the steps from `first_step`
                    // read.
                    #[allow(unsafe_code)]
                    unsafe {
                        super::tiles::accumulate_rows(
                            &mut sums,
                            rows,
                            lhs[first_step * STEP..].as_ptr().cast(),
                            depth * 2,
                            packed[first_step * STEP * PANEL..].as_ptr().cast(),
                            PANEL * 4,
                            STEP / 2 * PANEL * 4,
                            chunk.min(steps - first_step),
                            chunk,
                        )
                    };
                }
                for (r, row) in sums.chunks_exact(PANEL).enumerate() {
                    // SAFETY: this task alone writes columns `first_col..first_col + cols`
                    // (its panels'), inside `dst`'s capacity, `rows x out`.
                    #[allow(unsafe_code)]
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            row.as_ptr(),
                            dst_ptr.at(r * out + first_col),
                            cols,
                        )
                    };
                }
            }
        });
    // SAFETY: the groups cover every panel, each of whose rows was stored.
    #[allow(unsafe_code)]
    unsafe {
        dst.set_len(rows * out)
    };
    dst
}

/// Steps of the inner dimension [`few_rows_product`] takes with every row before the next:
/// 16 KB of a panel, in L1 beside a pass's rows. Each step of the passes asks for its share
/// of a step of the next chunk, so that the chunk is in L2 when its first pass comes; asked
/// for by the first pass alone, it came late (CLIP-G's products at 77 tokens, 2 threads of a
/// Zen 5 EPYC: 594 against 635 GFLOP/s). Chunks of 12, 16 or 32 steps did as well as 8, and
/// of 4 a tenth worse.
const FEW_ROWS_CHUNK_STEPS: usize = 8;

/// Tasks per thread [`few_rows_product`] splits its panels into: the tasks are short (a CLIP-G
/// product at 77 tokens takes half a millisecond), and the last ones leave a thread idle.
const FEW_ROWS_TASKS_PER_THREAD: usize = 8;

/// Up to this many rows (a text encoder's 77 tokens) a product runs as [`few_rows_product`]
/// on the register unit and, on AMX, asks for its panels ahead of their use
/// ([`super::tiles::Tiles::accumulate_streaming`]).
const STREAMING_ROWS: usize = 128;

/// How [`tiles_product`] splits its blocks of rows and panels into tasks: chunks of
/// [`TilePlan::CHUNK`] row blocks times groups of panels that fit [`TilePlan::GROUP_BYTES`],
/// smaller groups where that leaves fewer than four tasks per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TilePlan {
    row_blocks: usize,
    panels: usize,
    chunk: usize,
    group: usize,
}

impl TilePlan {
    /// Row blocks a task takes: 128 rows, 320 KiB of bf16 rows at 1280 inner products.
    const CHUNK: usize = 4;
    /// A group of packed panels' size, half a 2 MiB L2 cache.
    const GROUP_BYTES: usize = 1 << 20;
    /// A block of rows up to this size is read whole against each panel.
    const ROWS_BYTES: usize = 24 << 10;
    /// Otherwise a chunk of this many bytes of it is.
    const CHUNK_BYTES: usize = 16 << 10;

    fn new(row_blocks: usize, panels: usize, depth: usize) -> Self {
        let chunk = Self::CHUNK.min(row_blocks).max(1);
        let fitting = (Self::GROUP_BYTES / (depth * PANEL * 2).max(1)).max(1);
        let wanted_tasks = 4 * rayon::current_num_threads();
        let groups_wanted = wanted_tasks.div_ceil(row_blocks.div_ceil(chunk).max(1));
        let balanced = panels.div_ceil(groups_wanted).max(1);
        Self {
            row_blocks,
            panels,
            chunk,
            group: fitting.min(balanced),
        }
    }

    /// Steps of the inner dimension a block of rows takes against each panel of its group
    /// before the next: on AMX all of them where the block's rows fit half an L1 cache, else
    /// chunks that do, so the rows are read from L1 by every panel. In registers all of them:
    /// there a block is 12 rows at a time, and the partial sums' copies between chunks only
    /// cost (CLIP-G at 77 tokens in bf16, 2 threads of a Zen 4 EPYC: 316-365 -> 290-297 ms).
    fn chunk_steps(&self, depth: usize, unit: Unit) -> usize {
        let steps = depth / super::tiles::STEP;
        if unit == Unit::Registers {
            return steps.max(1);
        }
        let row_step_bytes = super::tiles::BLOCK * super::tiles::STEP * 2;
        match steps * row_step_bytes <= Self::ROWS_BYTES {
            true => steps.max(1),
            false => (Self::CHUNK_BYTES / row_step_bytes).max(1),
        }
    }

    fn groups(&self) -> usize {
        self.panels.div_ceil(self.group)
    }

    fn tasks(&self) -> usize {
        self.row_blocks.div_ceil(self.chunk) * self.groups()
    }

    /// Task `i`'s row blocks and panels; neighbouring tasks share their panels.
    fn task(&self, i: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (chunk, group) = (
            i % self.row_blocks.div_ceil(self.chunk),
            i / self.row_blocks.div_ceil(self.chunk),
        );
        let rows = chunk * self.chunk..((chunk + 1) * self.chunk).min(self.row_blocks);
        let panels = group * self.group..((group + 1) * self.group).min(self.panels);
        (rows, panels)
    }
}

/// `src` rounded to bf16 bits (nearest even) into `dst`, 16 at a time where AVX512-BF16 runs.
pub(super) fn round_into(src: &[f32], dst: &mut [u16]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        done = src.len() / 16 * 16;
        // SAFETY: `available` checked the instructions; both slices hold `done` values.
        #[allow(unsafe_code)]
        unsafe {
            x86::round_16s(src.as_ptr(), dst.as_mut_ptr(), done / 16)
        };
    }
    for (d, &s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = bf16::from_f32(s).to_bits();
    }
}

/// Pair rows a packed panel has: `inner / 2` rounded up to whole AMX steps, so that the tiles
/// read zeros past the end (the dot products stop at `inner / 2`).
fn panel_pairs(inner: usize) -> usize {
    inner.div_ceil(super::tiles::STEP) * (super::tiles::STEP / 2)
}

/// The destination, written by several tasks at disjoint elements (also
/// [`super::tiled_conv`]'s).
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);

// SAFETY: tasks write disjoint elements (see `matmul`); the buffer outlives them.
#[allow(unsafe_code)]
unsafe impl Send for SharedOut {}
#[allow(unsafe_code)]
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Columns `first_col..first_col + cols` of `weight` (`inner x out`), as `inner / 2` rows of
/// [`PANEL`] pairs: for each pair of rows, each column's two values side by side. Columns
/// past `cols` and the row past an odd `inner` are zero.
fn pack_panel(
    weight: &[bf16],
    inner: usize,
    out: usize,
    first_col: usize,
    cols: usize,
) -> Lines<u16> {
    let pairs = inner.div_ceil(2);
    let mut packed = Lines::zeroed(panel_pairs(inner) * PANEL * 2);
    for (pair, dst) in packed.chunks_exact_mut(PANEL * 2).enumerate().take(pairs) {
        let even = &weight[2 * pair * out + first_col..][..cols];
        let odd =
            (2 * pair + 1 < inner).then(|| &weight[(2 * pair + 1) * out + first_col..][..cols]);
        #[cfg(target_arch = "x86_64")]
        if cols == PANEL
            && let Some(odd) = odd
            && available()
        {
            // SAFETY: both source rows hold PANEL values and `dst` 2 * PANEL; AVX-512 (which
            // `available` checked) implies AVX2.
            #[allow(unsafe_code)]
            unsafe {
                x86::interleave_panel(even.as_ptr().cast(), odd.as_ptr().cast(), dst.as_mut_ptr())
            };
            continue;
        }
        for c in 0..cols {
            dst[2 * c] = even[c].to_bits();
            dst[2 * c + 1] = odd.map_or(0, |odd| odd[c].to_bits());
        }
    }
    packed
}

/// A panel packed as 32-bit words, each a pair of bf16 values (the even row's in the low half),
/// read by the kernel as the `u16` values [`pack_panel`] writes.
struct Words(Lines<u32>);

impl AsRef<[u16]> for Words {
    fn as_ref(&self) -> &[u16] {
        bytemuck::cast_slice(&self.0)
    }
}

/// The panel of [`PANEL`] output columns whose weight rows (`cols x inner`, as stored) are
/// `rows`, laid out as [`pack_panel`] does for the transposed weight. Columns past `cols`
/// and the value past an odd `inner` are zero.
fn pack_stored_panel(rows: &[bf16], inner: usize) -> Words {
    let mut packed = Lines::zeroed(panel_pairs(inner) * PANEL);
    pack_stored_panel_into(rows, inner, &mut packed);
    Words(packed)
}

/// [`pack_stored_panel`] into `packed` (zeros, `panel_pairs(inner) * PANEL` words).
fn pack_stored_panel_into(rows: &[bf16], inner: usize, packed: &mut [u32]) {
    let pairs = inner.div_ceil(2);
    let cols = rows.len().checked_div(inner).unwrap_or(0);
    // With an even `inner` and the rows 4-byte aligned (as a file's tensors usually are),
    // each row is `pairs` words: transpose them as 32-bit values (bits moved, never changed).
    if inner.is_multiple_of(2)
        && let Ok(words) = bytemuck::try_cast_slice::<bf16, f32>(rows)
    {
        let dst: &mut [f32] = bytemuck::cast_slice_mut(packed);
        super::transpose::transpose_into(words, pairs, cols, pairs, dst, PANEL);
        return;
    }
    for (c, row) in rows.chunks_exact(inner.max(1)).take(cols).enumerate() {
        for (pair, values) in row.chunks(2).enumerate() {
            let even = values[0].to_bits() as u32;
            let odd = values.get(1).map_or(0, |v| v.to_bits()) as u32;
            packed[pair * PANEL + c] = even | (odd << 16);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    /// `blocks` blocks of 16 values at `src` rounded to bf16 (nearest even) at `dst`.
    ///
    /// Safety: AVX-512F/BW and AVX512-BF16 are present; both hold `16 blocks` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_16s(src: *const f32, dst: *mut u16, blocks: usize) {
        // SAFETY: the caller keeps the reads and writes in bounds.
        unsafe {
            for b in 0..blocks {
                let rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(16 * b)));
                _mm256_storeu_si256(
                    dst.add(16 * b).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(rounded),
                );
            }
        }
    }

    /// 32 values of two rows interleaved: `even[0], odd[0], even[1], odd[1], ...`.
    ///
    /// Safety: AVX2 is present; `even` and `odd` hold 32 values, `dst` 64.
    #[target_feature(enable = "avx2")]
    pub unsafe fn interleave_panel(even: *const u16, odd: *const u16, dst: *mut u16) {
        // SAFETY: the caller keeps the reads and writes in bounds.
        unsafe {
            for half in 0..2 {
                let e = _mm256_loadu_si256(even.add(16 * half).cast());
                let o = _mm256_loadu_si256(odd.add(16 * half).cast());
                // Unpacking works within 128-bit lanes: `low` holds columns 0-3 and 8-11,
                // `high` 4-7 and 12-15; the lane swaps put them back in order.
                let low = _mm256_unpacklo_epi16(e, o);
                let high = _mm256_unpackhi_epi16(e, o);
                let out = dst.add(32 * half);
                _mm256_storeu_si256(out.cast(), _mm256_permute2x128_si256::<0x20>(low, high));
                _mm256_storeu_si256(
                    out.add(16).cast(),
                    _mm256_permute2x128_si256::<0x31>(low, high),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::random;

    /// `n` random bf16 values.
    fn random_bf16(n: usize, seed: u32) -> Vec<bf16> {
        random(n, seed).into_iter().map(bf16::from_f32).collect()
    }

    /// `stored` (`out x inner`) transposed, `inner x out`.
    fn transposed(stored: &[bf16], out: usize, inner: usize) -> Vec<bf16> {
        let mut transposed = vec![bf16::ZERO; inner * out];
        for o in 0..out {
            for k in 0..inner {
                transposed[k * out + o] = stored[o * inner + k];
            }
        }
        transposed
    }

    /// The product of the bf16-rounded operands, summed in f64.
    fn reference(x: &[f32], w: &[bf16], rows: usize, inner: usize, out: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for c in 0..out {
                let sum: f64 = (0..inner)
                    .map(|k| {
                        let a = bf16::from_f32(x[r * inner + k]).to_f32() as f64;
                        a * w[k * out + c].to_f32() as f64
                    })
                    .sum();
                y[r * out + c] = sum as f32;
            }
        }
        y
    }

    #[test]
    fn a_tile_plan_gives_every_block_of_rows_every_panel_once() {
        // Few rows (a text encoder), many rows, deep and shallow panels, one of each.
        for (row_blocks, panels, depth) in
            [(3, 128, 1024), (128, 80, 320), (32, 160, 1280), (1, 1, 32)]
        {
            let plan = TilePlan::new(row_blocks, panels, depth);
            let mut seen = vec![0u8; row_blocks * panels];
            for task in 0..plan.tasks() {
                let (rows, group) = plan.task(task);
                assert!(
                    group.len() * depth * PANEL * 2 <= TilePlan::GROUP_BYTES.max(depth * PANEL * 2)
                );
                for block in rows {
                    for panel in group.clone() {
                        seen[block * panels + panel] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{plan:?}");
        }
    }

    #[test]
    fn products_equal_the_rounded_operands_product_for_ragged_shapes() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Odd inner sizes, partial tiles of rows, partial panels of columns, several panels.
        for (rows, inner, out) in [
            (1, 1, 1),
            (13, 37, 17),
            (29, 64, 70),
            (12, 320, 32),
            (5, 3, 100),
            (70, 700, 90),
        ] {
            let x = random(rows * inner, 1);
            let w = random_bf16(inner * out, 2);
            let ours = matmul(&x, &w, rows, inner, out).unwrap();
            let want = reference(&x, &w, rows, inner, out);
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                // Only the order of the f32 sums differs.
                assert!(
                    (a - b).abs() <= 1e-5 * (inner as f32).sqrt() + 1e-6,
                    "{rows}x{inner}x{out} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// The stored layout packs into the panels the transposed one does, so the products are
    /// the same to the bit, for even and odd inner sizes and rows misaligned for 32-bit words.
    #[test]
    fn a_stored_weight_multiplies_as_its_transpose_does() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, inner, out) in [(1, 2, 1), (13, 37, 17), (29, 64, 70), (5, 320, 33)] {
            let x = random(rows * inner, 3);
            let stored = random_bf16(out * inner, 4);
            let transposed = transposed(&stored, out, inner);
            let want = matmul(&x, &transposed, rows, inner, out).unwrap();
            assert_eq!(matmul_stored(&x, &stored, rows, inner, out).unwrap(), want);
            // One value in: the rows start 2 bytes off a word.
            let mut shifted = vec![bf16::ZERO];
            shifted.extend(&stored);
            let got = matmul_stored(&x, &shifted[1..], rows, inner, out).unwrap();
            assert_eq!(got, want, "{rows}x{inner}->{out} misaligned");
        }
    }

    /// AMX tiles and AVX-512 registers both sum the products of the bf16-rounded operands
    /// in f32: whole and partial blocks of rows and columns, inner sizes off a step and odd, few rows (panels asked for ahead) and many.
    #[test]
    fn each_unit_computes_the_rounded_operands_product() {
        if !crate::nn::tiles::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, inner, out) in [
            (1, 1, 1),
            (13, 37, 17),
            (32, 64, 32),
            (33, 64, 70),
            (100, 1000, 40),
            (5, 3, 100),
            // Past `STREAMING_ROWS`, and chunked.
            (200, 1000, 40),
        ] {
            let x = random(rows * inner, 5);
            let stored = random_bf16(out * inner, 6);
            let transposed = transposed(&stored, out, inner);
            let want = reference(&x, &transposed, rows, inner, out);
            for unit in [Unit::Amx, Unit::Registers] {
                let Some(got) = matmul_stored_on(unit, &x, &stored, rows, inner, out) else {
                    continue;
                };
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (inner as f32).sqrt() + 1e-6,
                        "{unit:?} {rows}x{inner}x{out} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Few rows taken whole in registers give the sums that blocks of 32 rows give, to the
    /// bit: rows that fill no pass evenly, inner sizes of one chunk, several and a part, a
    /// last panel in part, with a bias and without.
    #[test]
    fn few_rows_sum_as_blocks_of_rows_do() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, inner, out) in [(1, 64, 32), (13, 300, 50), (77, 1280, 96), (128, 520, 33)] {
            let x = Rounded::round(&random(rows * inner, 17), rows, inner);
            let stored = random_bf16(out * inner, 18);
            let bias = random(out, 19);
            let panels: Vec<Words> = (0..out.div_ceil(PANEL))
                .map(|p| {
                    let cols = PANEL.min(out - p * PANEL);
                    pack_stored_panel(&stored[p * PANEL * inner..][..cols * inner], inner)
                })
                .collect();
            for bias in [None, Some(&bias[..])] {
                let blocks = blocks_product(Unit::Registers, &x, out, bias, &panels);
                let few = few_rows_product(&x, out, bias, &panels);
                assert_eq!(
                    few,
                    blocks,
                    "{rows}x{inner}->{out}, bias {}",
                    bias.is_some()
                );
            }
        }
    }

    /// A weight packed once multiplies as the same weight packed per call, and unpacks to
    /// itself, for even, odd and ragged sizes.
    #[test]
    fn a_packed_weight_multiplies_and_unpacks_as_stored() {
        for (rows, inner, out) in [(1, 2, 1), (13, 37, 17), (77, 64, 70), (5, 320, 33)] {
            let x = random(rows * inner, 8);
            let stored = random_bf16(out * inner, 9);
            let packed = Packed::from_stored(&stored, out, inner);
            assert_eq!(packed.dims(), (out, inner));
            assert_eq!(packed.stored(), stored, "{out}x{inner} unpacked");
            if available() {
                let want = matmul_stored(&x, &stored, rows, inner, out).unwrap();
                assert_eq!(matmul_packed(&x, &packed, rows).unwrap(), want);
            }
        }
    }

    /// The bias a linear layer's product adds as it stores (from the tiles' first sums on
    /// AMX) is the bias added afterwards, up to the order of the f32 sums: ragged panels,
    /// inner sizes chunked and not, rows rounded before or by the product.
    #[test]
    fn a_bias_is_added_to_every_row() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, inner, out) in [(1, 2, 1), (33, 64, 70), (40, 1000, 45)] {
            let x = random(rows * inner, 14);
            let stored = random_bf16(out * inner, 15);
            let bias: Vec<f32> = random(out, 16).iter().map(|b| b * 10.0).collect();
            let packed = Packed::from_stored(&stored, out, inner);
            let mut want = matmul_stored(&x, &stored, rows, inner, out).unwrap();
            super::super::layers::add_to_rows(&mut want, &bias);
            let rounded = Rounded::round(&x, rows, inner);
            for lhs in [Lhs::F32(&x, rows), Lhs::Rounded(&rounded)] {
                let by_packed = linear_packed(lhs, &packed, Some(&bias)).unwrap();
                let by_stored = linear_stored(lhs, &stored, out, Some(&bias)).unwrap();
                assert_eq!(by_packed, by_stored);
                for (i, (a, b)) in by_packed.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{rows}x{inner}x{out} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn panels_put_each_value_where_the_kernel_reads_it() {
        // 3 x 40 weight: the second panel holds 8 columns, the second pair one row.
        let w: Vec<bf16> = (0..120).map(|v| bf16::from_f32(v as f32)).collect();
        for first_col in [0, 32] {
            let cols = PANEL.min(40 - first_col);
            let packed = pack_panel(&w, 3, 40, first_col, cols);
            for pair in 0..2 {
                for c in 0..PANEL {
                    let value = |row: usize| {
                        if c < cols && row < 3 {
                            (row * 40 + first_col + c) as u16
                        } else {
                            0
                        }
                    };
                    let at = pair * PANEL * 2 + 2 * c;
                    assert_eq!(bf16::from_bits(packed[at]).to_f32() as u16, value(2 * pair));
                    assert_eq!(
                        bf16::from_bits(packed[at + 1]).to_f32() as u16,
                        value(2 * pair + 1)
                    );
                }
            }
        }
    }
}
