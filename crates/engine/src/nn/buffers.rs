//! Large buffers: zeroed on every core at once ([`zeros`]), starting a 64-byte cache line for
//! the operands AMX tiles read ([`Lines`]), and taken back from a tensor that is done with
//! ([`take_f32`]), to be written over.
//!
//! A zeroed output of a few megabytes written by one thread left the other core idle
//! meanwhile: the memsets of a bf16 UNet step's outputs were a quarter of the serial time it
//! spends on the device thread.
//!
//! A tile load reads 16 rows of 64 bytes; a row that straddles two cache lines costs two. The
//! allocator hands large blocks out 16 bytes past a page boundary, so a weight packed into a
//! plain `Vec` had every row of every tile split: a 960 -> 320 channel 3x3 convolution at 64x64
//! took 26 ms with its packed weight 16 or 32 bytes off a line and 15 ms on one (the Xeon of
//! bench/RESULTS.md).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

/// Buffers up to this many bytes are zeroed by the calling thread alone.
const SERIAL_BYTES: usize = 256 * 1024;
/// Bytes each parallel task zeroes.
const TASK_BYTES: usize = 64 * 1024;

/// `len` zeros, written in parallel when the buffer is large.
pub fn zeros<T: Zeroable + Send>(len: usize) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    let size = std::mem::size_of::<T>().max(1);
    let zero = |chunk: &mut [std::mem::MaybeUninit<T>]| {
        // SAFETY: the chunk is `chunk.len()` values of the vector's capacity; all-zero bytes
        // are a valid `T` (`Zeroable`).
        #[allow(unsafe_code)]
        unsafe {
            chunk.as_mut_ptr().write_bytes(0, chunk.len())
        }
    };
    let spare = &mut values.spare_capacity_mut()[..len];
    if len * size <= SERIAL_BYTES {
        zero(spare);
    } else {
        spare.par_chunks_mut(TASK_BYTES / size).for_each(zero);
    }
    // SAFETY: every value up to `len` was written above.
    #[allow(unsafe_code)]
    unsafe {
        values.set_len(len)
    };
    values
}

/// `len` values written by `fill` in parallel, `chunk` at a time (the chunk's index and its
/// values, zeros as given). Each task zeroes its own chunk just before filling it, where a
/// pass of its own beforehand ([`zeros`]) read every line in from memory and wrote it back
/// before the kernel's writes did the same (a twentieth of an SDXL bf16 UNet call).
pub fn par_filled<T: Zeroable + Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    fill_spare(&mut values.spare_capacity_mut()[..len], chunk, fill);
    // SAFETY: `fill_spare` zeroed every value up to `len` (and `fill` may have written them).
    #[allow(unsafe_code)]
    unsafe {
        values.set_len(len)
    };
    values
}

/// Every value of `spare` zeroed and then given to `fill`, `chunk` at a time, in parallel.
fn fill_spare<T: Zeroable + Send>(
    spare: &mut [std::mem::MaybeUninit<T>],
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) {
    spare
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(index, values)| fill(index, zeroed(values)));
}

/// `values` set to zero, as the initialised values they now are.
fn zeroed<T: Zeroable>(values: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the slice's own values are written; all-zero bytes are a valid `T`
    // (`Zeroable`), so every value is initialised when it is reinterpreted as `[T]`.
    #[allow(unsafe_code)]
    unsafe {
        values.as_mut_ptr().write_bytes(0, values.len());
        &mut *(values as *mut [std::mem::MaybeUninit<T>] as *mut [T])
    }
}

/// Initialised `values` seen as memory to be written over, for kernels that write fresh
/// buffers (`Vec::spare_capacity_mut`) and initialised ones through one path.
///
/// # Safety
/// Only initialised values may be written through the result (never
/// `MaybeUninit::uninit()`), so that `values` stays initialised once it is dropped.
#[allow(unsafe_code)]
pub unsafe fn as_uninit_mut<T>(values: &mut [T]) -> &mut [std::mem::MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the caller keeps the values
    // initialised.
    unsafe { &mut *(values as *mut [T] as *mut [std::mem::MaybeUninit<T>]) }
}

/// Memory written earlier seen as its values: the inverse of [`as_uninit_mut`].
///
/// # Safety
/// Every value of `values` is initialised.
#[allow(unsafe_code)]
#[inline(always)]
pub unsafe fn assume_init<T>(values: &[std::mem::MaybeUninit<T>]) -> &[T] {
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the caller promises the values are
    // initialised.
    unsafe { &*(values as *const [std::mem::MaybeUninit<T>] as *const [T]) }
}

/// The data of `x`, an f32 CPU tensor laid out from the start of its storage, moved out for the
/// caller to write over: a VAE's full-resolution images are hundreds of megabytes each, and a
/// ResNet block's output can take its shortcut's place ([`super::resnet`]). `x` itself, as it
/// was, where it is not such a tensor.
///
/// `x` must be the only handle on its storage, no clone or view of it alive anywhere: candle
/// shares storage between them and cannot say, so the callers keep to values they made
/// themselves. What is left behind is an empty storage, which any later read of a clone
/// would find out of bounds (a panic, not a wrong value).
pub fn take_f32(x: Tensor) -> Result<Vec<f32>, Tensor> {
    struct Take(std::cell::RefCell<Option<Vec<f32>>>);
    impl InplaceOp1 for Take {
        fn name(&self) -> &'static str {
            "take-f32"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let whole = layout.contiguous_offsets() == Some((0, layout.shape().elem_count()));
            if let CpuStorage::F32(data) = storage
                && whole
                && data.len() == layout.shape().elem_count()
            {
                *self.0.borrow_mut() = Some(std::mem::take(data));
            }
            Ok(())
        }
    }
    if !super::own_kernels(x.device()) {
        return Err(x);
    }
    let take = Take(std::cell::RefCell::new(None));
    match x.inplace_op1(&take) {
        Ok(()) => take.0.into_inner().ok_or(x),
        Err(_) => Err(x),
    }
}

/// One cache line of bytes, aligned as one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

// SAFETY: 64 bytes with no padding, any bit pattern valid, zero included.
#[allow(unsafe_code)]
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `Copy` and `'static`.
#[allow(unsafe_code)]
unsafe impl bytemuck::Pod for Line {}

/// `len` values of `T`, zeroed at creation, starting on a cache line.
pub struct Lines<T> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> Lines<T> {
    /// No values (nothing allocated).
    pub const fn empty() -> Self {
        Self {
            lines: Vec::new(),
            len: 0,
            _values: PhantomData,
        }
    }
}

impl<T: Pod> Lines<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        const { assert!(64 % std::mem::size_of::<T>() == 0, "values tile a line") };
        let lines = (len * std::mem::size_of::<T>()).div_ceil(64);
        Self {
            lines: zeros(lines),
            len,
            _values: PhantomData,
        }
    }
}

impl<T: Pod + Send> Lines<T> {
    /// `len` values written by `fill` in parallel, `chunk` at a time, as [`par_filled`].
    pub fn par_filled(len: usize, chunk: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        const { assert!(64 % std::mem::size_of::<T>() == 0, "values tile a line") };
        let count = (len * std::mem::size_of::<T>()).div_ceil(64);
        let mut lines = Vec::<Line>::with_capacity(count);
        let spare = lines.spare_capacity_mut();
        let per_line = 64 / std::mem::size_of::<T>();
        // SAFETY: `count` lines hold `count * per_line` values of `T` (a size dividing 64,
        // an alignment dividing the line's), each byte of them uninitialised as before.
        #[allow(unsafe_code)]
        let values = unsafe {
            std::slice::from_raw_parts_mut(
                spare.as_mut_ptr().cast::<std::mem::MaybeUninit<T>>(),
                count * per_line,
            )
        };
        let (used, tail) = values.split_at_mut(len);
        fill_spare(used, chunk, fill);
        zeroed(tail);
        // SAFETY: every byte of the `count` lines was zeroed above, then maybe written.
        #[allow(unsafe_code)]
        unsafe {
            lines.set_len(count)
        };
        Self {
            lines,
            len,
            _values: PhantomData,
        }
    }
}

impl<T: Pod> Deref for Lines<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl<T: Pod> AsRef<[T]> for Lines<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

/// A 32x32 block of f32 sums (what [`super::tiles::Tiles::store`] writes), on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Block(pub [f32; 1024]);

impl Block {
    pub const ZERO: Self = Self([0.0; 1024]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_zeros_at_every_size() {
        for len in [0, 1, 1000, 65_536, 65_537, 1_000_003] {
            let values = zeros::<f32>(len);
            assert_eq!(values.len(), len);
            assert!(values.iter().all(|&v| v == 0.0), "{len}");
        }
    }

    #[test]
    fn buffers_start_on_a_line_hold_their_length_and_start_zeroed() {
        for len in [0, 1, 31, 32, 33, 1000, 100_003] {
            let mut words = Lines::<u32>::zeroed(len);
            assert_eq!(words.len(), len);
            assert_eq!(words.as_ptr() as usize % 64, 0);
            assert!(words.iter().all(|&w| w == 0));
            words
                .iter_mut()
                .enumerate()
                .for_each(|(i, w)| *w = i as u32);
            assert!(words.iter().enumerate().all(|(i, &w)| w == i as u32));
            let halves = Lines::<u16>::zeroed(len);
            assert_eq!((halves.len(), halves.as_ptr() as usize % 64), (len, 0));
        }
        assert_eq!(std::mem::align_of::<Block>(), 64);
    }

    #[test]
    fn filled_buffers_hold_what_each_chunk_wrote_and_zeros_elsewhere() {
        for (len, chunk) in [(0, 4), (1, 4), (1000, 7), (100_003, 4096)] {
            let fill = |index: usize, values: &mut [u32]| {
                assert!(values.iter().all(|&v| v == 0));
                for (i, v) in values.iter_mut().enumerate().step_by(2) {
                    *v = (index * chunk + i) as u32 + 1;
                }
            };
            let expected: Vec<u32> = (0..len as u32)
                .map(|i| {
                    if (i as usize % chunk).is_multiple_of(2) {
                        i + 1
                    } else {
                        0
                    }
                })
                .collect();
            assert_eq!(par_filled(len, chunk, fill), expected);
            let lines = Lines::<u32>::par_filled(len, chunk, fill);
            assert_eq!((&*lines, lines.as_ptr() as usize % 64), (&expected[..], 0));
            assert!(bytemuck::cast_slice::<_, u8>(&lines.lines).len() >= len * 4);
            assert!(
                bytemuck::cast_slice::<_, u32>(&lines.lines)[len..]
                    .iter()
                    .all(|&v| v == 0)
            );
        }
    }

    #[test]
    fn take_moves_out_whole_f32_tensors_only() -> candle_core::Result<()> {
        let device = candle_core::Device::Cpu;
        let values: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let x = Tensor::from_vec(values.clone(), (2, 3, 4), &device)?;
        assert_eq!(take_f32(x).ok(), Some(values.clone()));
        // A view of part of its storage, another dtype: handed back as they were.
        let x = Tensor::from_vec(values.clone(), (2, 3, 4), &device)?;
        let part = take_f32(x.narrow(0, 1, 1)?).expect_err("a part");
        assert_eq!(part.flatten_all()?.to_vec1::<f32>()?, &values[12..]);
        assert!(take_f32(x.transpose(1, 2)?).is_err());
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, values);
        assert!(take_f32(x.to_dtype(candle_core::DType::F64)?).is_err());
        Ok(())
    }
}
