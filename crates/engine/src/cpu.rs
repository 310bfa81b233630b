//! What this CPU offers and which path each of the engine's CPU kernels takes on it. The paths
//! are chosen at run time (one binary runs on AVX2-only and AVX-512 machines alike); this module
//! asks the same questions they do, so that `seedbed bench` can print where its numbers come
//! from and each row of `bench/RESULTS.md` names its machine.

use crate::nn::quantized::Kernel;

/// The CPU and the kernels' paths on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuReport {
    /// `/proc/cpuinfo`'s model name with its family and model numbers, where the system says.
    pub model: String,
    /// The instruction-set extensions a kernel here uses or could use that this CPU has.
    pub features: Vec<&'static str>,
    /// Each kernel and the path it takes on this CPU.
    pub kernels: Vec<(&'static str, &'static str)>,
}

impl CpuReport {
    pub fn detect() -> Self {
        let features = features();
        if crate::nn::candle_ops_only() {
            return Self {
                model: model_name(),
                features,
                kernels: vec![("every op", "candle's own (SEEDBED_KERNELS=candle)")],
            };
        }
        let has = |name: &str| features.contains(&name);
        // The `gemm` crate asks exactly this where it is built with its `x86-v4` kernels.
        let gemm = if cfg!(feature = "avx512") && has("avx512f") {
            "AVX-512F (gemm)"
        } else if has("fma") {
            "AVX2+FMA (gemm)"
        } else {
            "scalar (gemm)"
        };
        let integer = match Kernel::detect() {
            Some(Kernel::Vnni512) => "int8 dot products, AVX-512 VNNI",
            Some(Kernel::Avx2) => "int8 dot products, AVX2",
            None => "dequantized to f32 band by band",
        };
        let half = if has("f16c") {
            "widened to f32 as each layer runs (F16C)"
        } else {
            "widened to f32 as each layer runs (software)"
        };
        let bf16 = match crate::nn::tiles::Unit::detect() {
            Some(crate::nn::tiles::Unit::Amx) => {
                "linear layers, convolutions and attention on AMX tiles in bf16"
            }
            Some(crate::nn::tiles::Unit::Registers) => {
                "linear layers, attention and the smaller convolutions in bf16 dot products \
                 (AVX512-BF16), the larger 3x3 convolutions widened to f32 (Winograd)"
            }
            None => half,
        };
        let stored = match crate::nn::stored::Kernel::detect() {
            Some(crate::nn::stored::Kernel::Avx512) => "8x48 register tiles, AVX-512F",
            Some(crate::nn::stored::Kernel::Avx2) => "6x16 register tiles, AVX2+FMA",
            None => "a transposed copy below 256 rows, gemm as stored above",
        };
        let winograd = match crate::nn::winograd::Products::detect() {
            crate::nn::winograd::Products::Tiles => "6x16 register tiles, AVX2+FMA",
            crate::nn::winograd::Products::Gemm => gemm,
        };
        Self {
            model: model_name(),
            features,
            kernels: vec![
                ("f32 matmul and convolution", gemm),
                ("f32 Winograd products", winograd),
                ("f32 linear weights read in place", stored),
                ("GGUF q8_0 and q4_K linears", integer),
                ("f16 weights", half),
                ("bf16 weights", bf16),
            ],
        }
    }

    /// One line per item, for a person.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("cpu: {}", self.model),
            format!("cpu features: {}", self.features.join(" ")),
        ];
        if !cfg!(feature = "avx512") {
            lines.push("build: without the avx512 feature (the paths of an AVX2-only CPU)".into());
        }
        for (kernel, path) in &self.kernels {
            lines.push(format!("kernel: {kernel}: {path}"));
        }
        lines
    }
}

fn features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($name) {
                    found.push($name);
                })*
            };
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avxvnni",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avx512bf16"
        );
        // AMX is not in std's stable detection; Linux lists it among the CPU's flags.
        let flags = cpuinfo_field("flags").unwrap_or_default();
        for (flag, name) in [("amx_tile", "amx-tile"), ("amx_bf16", "amx-bf16")] {
            if flags.split_whitespace().any(|f| f == flag) {
                found.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
    }
    found
}

/// E.g. `AMD EPYC (family 25, model 17)`: cloud machines often name only the brand.
fn model_name() -> String {
    let name = cpuinfo_field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    match (cpuinfo_field("cpu family"), cpuinfo_field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    }
}

/// The first value of `field` in `/proc/cpuinfo`, where there is one.
fn cpuinfo_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == field).then(|| value.trim().to_string())
    })
}

/// Run `work` on one of rayon's workers, in the caller's tracing span, and wait for it.
///
/// Every kernel splits its work with rayon. Called from a thread outside the pool (the device
/// thread, a CLI's main thread), each parallel op is handed over through a queue and the caller
/// sleeps on a lock until it is done: a wake-up per op, hundreds per image. Called from a worker,
/// the op is split in place and the other workers steal halves of it. SD-Turbo's bf16 text
/// encoder (about 280 ops over 23 layers) on 2 cores of an AMX Xeon: 0.098 s from outside
/// against 0.080 s on a worker (bench/RESULTS.md). The sums are the same either way: kernels
/// split by sizes, never by which thread runs.
pub fn on_workers<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    let span = tracing::Span::current();
    rayon::scope(|_| span.in_scope(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report agrees with the integer kernel the GGUF linears pick, and names a path for
    /// every kernel.
    #[test]
    fn the_report_names_the_paths_the_kernels_take() {
        let report = CpuReport::detect();
        assert!(!report.model.is_empty());
        let integer = report
            .kernels
            .iter()
            .find(|(kernel, _)| kernel.starts_with("GGUF"))
            .unwrap()
            .1;
        match Kernel::detect() {
            Some(Kernel::Vnni512) => assert!(integer.contains("VNNI")),
            Some(Kernel::Avx2) => assert!(integer.ends_with("AVX2")),
            None => assert!(integer.starts_with("dequantized")),
        }
        if Kernel::detect() == Some(Kernel::Vnni512) {
            assert!(report.features.contains(&"avx512vnni"), "{report:?}");
        }
        let lines = report.lines();
        assert_eq!(lines.len(), 2 + report.kernels.len());
        assert!(lines[0].starts_with("cpu: "));
    }

    /// The work runs on a worker of the pool, whether the caller is one or not, and its panic
    /// reaches the caller.
    #[test]
    fn work_runs_on_a_worker_and_its_panic_reaches_the_caller() {
        let outside = std::thread::spawn(|| super::on_workers(rayon::current_thread_index));
        assert!(outside.join().unwrap().is_some());
        let nested = rayon::scope(|_| super::on_workers(rayon::current_thread_index));
        assert!(nested.is_some());
        let panicked = std::panic::catch_unwind(|| super::on_workers(|| panic!("in the pool")));
        assert!(panicked.is_err());
    }
}
