//! Weights computed on in place, from the memory-mapped weights file.
//!
//! candle's CPU tensors own their memory, so a tensor read from a file is copied into fresh
//! anonymous memory, which the kernel must zero page by page before the copy; on a VM each of
//! those pages may also be a fault to the host. For a 5 GB model that was most of a one-shot
//! `seedbed generate`'s system time (7-15 s). A layer whose CPU kernel is our own can read its
//! weight where the file's mapping already has it, in the page cache, instead: no copy, no
//! fresh memory, and pages that other processes reading the same file share.
//!
//! While a component is built from safetensors files ([`crate::weights::build_quantizable`]),
//! [`building`] makes them available here; a layer asks [`lookup`] for its weight before
//! reading it through the `VarBuilder`, and gets it only when it can be used as stored: f32 in
//! the file and in the computation (bf16 for linear layers on a CPU with the bf16 kernel,
//! [`super::bf16`]), on the CPU, aligned, of the shape the layer expects.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use memmap2::Mmap;

/// An f32 or bf16 tensor inside a mapped file.
#[derive(Clone)]
pub struct MappedTensor {
    map: Arc<Mmap>,
    /// Byte offset of the first value in the mapping, aligned for `dtype`.
    start: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for MappedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MappedTensor({:?} {:?} at byte {})",
            self.dtype, self.shape, self.start
        )
    }
}

impl MappedTensor {
    /// The f32 or bf16 values `shape` needs at byte `start` of `map`; `None` for another
    /// dtype, or when they are not aligned for it or run past the end (the loader then reads
    /// the tensor the usual way).
    pub(crate) fn new(
        map: Arc<Mmap>,
        start: usize,
        shape: Vec<usize>,
        dtype: DType,
    ) -> Option<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return None;
        }
        let size = dtype.size_in_bytes();
        let bytes = shape.iter().product::<usize>().checked_mul(size)?;
        let in_file = start.checked_add(bytes).is_some_and(|end| end <= map.len());
        let aligned = (map.as_ptr() as usize + start).is_multiple_of(size);
        (in_file && aligned && cfg!(target_endian = "little")).then_some(Self {
            map,
            start,
            shape,
            dtype,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn bytes(&self) -> &[u8] {
        let len = self.dtype.size_in_bytes() * self.shape.iter().product::<usize>();
        &self.map[self.start..self.start + len]
    }

    /// The values of an f32 tensor, row-major.
    pub fn values(&self) -> &[f32] {
        assert_eq!(
            self.dtype,
            DType::F32,
            "the mapped tensor's values are not f32"
        );
        // `new` checked the range and the alignment.
        bytemuck::cast_slice(self.bytes())
    }

    /// The values of a bf16 tensor, row-major.
    pub fn bf16_values(&self) -> &[bf16] {
        assert_eq!(
            self.dtype,
            DType::BF16,
            "the mapped tensor's values are not bf16"
        );
        // `new` checked the range and the alignment.
        bytemuck::cast_slice(self.bytes())
    }

    /// Drop the pages of these values from this process's memory (not from the page cache)
    /// once nothing will read them again: a later read faults them back in.
    pub fn release(&self) {
        let bytes = self.bytes().len();
        let page = page_size();
        // Whole pages only: a page at either end may hold a neighbour's values.
        let from = self.start.next_multiple_of(page);
        let to = (self.start + bytes) / page * page;
        if to > from {
            // SAFETY: `Mmap` is a read-only private mapping nothing writes to, so dropping its
            // pages loses nothing: a later access reads the file's contents again.
            #[allow(unsafe_code)]
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }

    /// A copy as an ordinary tensor, for the paths that need one (a LoRA merge, candle's
    /// kernels).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let shape = self.shape.as_slice();
        match self.dtype {
            DType::BF16 => Tensor::from_slice(self.bf16_values(), shape, &Device::Cpu),
            _ => Tensor::from_slice(self.values(), shape, &Device::Cpu),
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Where [`lookup`] finds tensors while a component is built.
pub trait MappedSource {
    /// The tensor the model calls `name`, when it is stored as f32 or bf16 and can be read in
    /// place.
    fn mapped(&self, name: &str) -> Option<MappedTensor>;
}

thread_local! {
    static SOURCE: RefCell<Option<Arc<dyn MappedSource>>> = const { RefCell::new(None) };
}

/// Run `build` with `source`'s tensors available to [`lookup`] on this thread.
pub(crate) fn building<T>(source: Option<Arc<dyn MappedSource>>, build: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<dyn MappedSource>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.replace(source)));
    build()
}

/// Whether layers read weights in place: unless the environment says
/// `SEEDBED_MAP_WEIGHTS=off` (to measure the copying path against it).
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("SEEDBED_MAP_WEIGHTS").map_or(true, |v| v != "off"))
}

/// The tensor `name` under `vb`'s prefix, read in place, when the layer being built computes
/// in f32 on the CPU and the file stores it as f32 in `shape`; otherwise `None`, and the
/// layer reads it through `vb` (which also reports a wrong shape by name).
pub fn lookup(vb: &VarBuilder, name: &str, shape: &[usize]) -> Option<MappedTensor> {
    lookup_as(vb, name, shape, DType::F32)
}

/// [`lookup`] for a linear layer's weight, which may also be bf16 in the file and in the
/// layer's dtype where the CPU multiplies bf16 as stored ([`super::bf16::available`]).
pub fn lookup_linear(vb: &VarBuilder, name: &str, shape: &[usize]) -> Option<MappedTensor> {
    match vb.dtype() {
        DType::BF16 if super::bf16::available() => lookup_as(vb, name, shape, DType::BF16),
        _ => lookup(vb, name, shape),
    }
}

/// The tensor `name` under `vb`'s prefix as the file stores it (f32 or bf16), in place,
/// whatever dtype the layer computes in: for a layer that converts the few values it reads
/// itself (a token table, [`super::embeddings::TokenTable`]).
pub fn lookup_stored(vb: &VarBuilder, name: &str, shape: &[usize]) -> Option<MappedTensor> {
    [DType::F32, DType::BF16]
        .into_iter()
        .find_map(|stored| find(vb, name, shape, stored))
}

fn lookup_as(vb: &VarBuilder, name: &str, shape: &[usize], dtype: DType) -> Option<MappedTensor> {
    if vb.dtype() != dtype {
        return None;
    }
    find(vb, name, shape, dtype)
}

/// `name` under `vb`'s prefix, mapped, when it is stored as `dtype` in `shape` and the layer
/// is built where our own kernels run ([`super::own_kernels`]).
fn find(vb: &VarBuilder, name: &str, shape: &[usize], dtype: DType) -> Option<MappedTensor> {
    if !super::own_kernels(vb.device()) || !enabled() {
        return None;
    }
    let full = match vb.prefix() {
        prefix if prefix.is_empty() => name.to_string(),
        prefix => format!("{prefix}.{name}"),
    };
    let found = SOURCE.with(|s| s.borrow().as_ref().and_then(|s| s.mapped(&full)))?;
    (found.shape() == shape && found.dtype() == dtype).then_some(found)
}

/// Safetensors files written byte by byte, for tests that need a layout the `safetensors`
/// writer never produces (a tensor misaligned for f32).
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// A tensor to write: name, dtype as the header spells it, shape, little-endian bytes.
    pub struct Stored<'a>(pub &'a str, pub &'a str, pub Vec<usize>, pub Vec<u8>);

    pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn bf16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect()
    }

    /// `tensors` in this order, with no padding between them, at `path`.
    pub fn write(path: &Path, tensors: &[Stored]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for Stored(name, dtype, shape, bytes) in tensors {
            let entry = serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, offset + bytes.len()],
            });
            header.insert(name.to_string(), entry);
            offset += bytes.len();
        }
        let mut header = serde_json::to_vec(&header).unwrap();
        // The header's length is padded to 8 bytes, as writers do, so that the data starts
        // aligned and any misalignment is the tensors' own.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        for Stored(.., bytes) in tensors {
            file.extend(bytes);
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, file).unwrap();
    }
}
