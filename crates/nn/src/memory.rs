//! How much memory training a model needs, estimated from its spec before anything is
//! allocated, and the refusal when that cannot fit.
//!
//! A size flag with one digit too many (`--width 100000`, `--hidden 100000000`) used to end
//! in an abort from the allocator ("memory allocation of … bytes failed") or a "capacity
//! overflow" panic, after the data had been loaded. Everything a model allocates follows
//! from its blocks, so the estimate is computed from the block list alone, in `f64` (it never
//! overflows, however absurd the sizes), and [`ModelSpec::check_memory`] refuses a model that
//! cannot fit with a message naming the size flags, the bytes needed and the bytes available.
//!
//! Two sizes are refused even earlier, while the block list is built, because building it
//! would itself overflow or exhaust memory: a layer wider than [`MAX_LAYER_WIDTH`] and a
//! model of more than [`MAX_BLOCKS`] blocks ([`too_wide`], [`too_deep`]).
//!
//! The estimate is deliberately a *lower* bound of what a run holds (see [`MemoryEstimate`]):
//! refusing a run that would have fitted is worse than letting a borderline one fail later.

use crate::block::{TensorInfo, product};
use crate::{Block, ModelSpec, NnError};

/// Bytes of one stored value (every tensor is `f32`).
const BYTES_PER_VALUE: f64 = 4.0;

/// The widest layer (channels, hidden features, embedding width) a model may have: 2⁴⁰.
/// One sample's output of such a layer alone takes 4 TiB, so no machine trains it; refusing
/// it while the model is built keeps every later size computation far from integer overflow.
pub const MAX_LAYER_WIDTH: usize = 1 << 40;

/// The most blocks a model may have: 2²⁰. The block list is materialised (and partitioned,
/// profiled and checkpointed block by block), so `--depth 1000000000000` would exhaust memory
/// before any size check could run; a million blocks is far beyond any model this trains.
pub const MAX_BLOCKS: usize = 1 << 20;

/// The memory a machine offers when the operating system does not say: 2⁴⁸ bytes (256 TiB),
/// the virtual address space of today's 64-bit CPUs. Only models no machine could hold are
/// refused then.
const ADDRESS_SPACE_BYTES: f64 = (1u64 << 48) as f64;

/// What a run does with the model besides storing it: the sizes that scale activation and
/// optimizer memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Samples per micro-batch (M/N).
    pub microbatch_size: usize,
    /// Micro-batches whose activations are held at the same time.
    pub microbatches_in_flight: usize,
    /// How many of those hold every block's activations; the others hold only their input
    /// (`--recompute-activations`). Equal to `microbatches_in_flight` when activations are kept.
    pub microbatches_with_activations: usize,
    /// Optimizer values kept per parameter: 0 for SGD without momentum, 1 with momentum, 2
    /// for Adam.
    pub optimizer_state_sets: usize,
}

/// Bytes a training run needs, estimated from the model spec before anything is allocated.
///
/// It counts one weight set (parameters and batch-norm buffers), one gradient per parameter,
/// the optimizer state, and the activations the forward keeps for the backward: a per-sample
/// count of every block's intermediate outputs (for a residual block its convolutions and
/// batch norms, for a decoder layer its projections, MLP and attention matrices) times the
/// micro-batch size times the micro-batches in flight (with recomputed activations: the input
/// of each, and every activation of those one backward covers). It leaves out what depends on the
/// policy and the split (extra stored weight versions, a stage's several mini-batches in
/// flight), evaluation batches, the data set (already in memory when this is computed) and
/// allocator overhead, so it is a lower bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// Trainable parameters of the model.
    pub parameters: f64,
    /// One weight set: parameters and buffers.
    pub weight_bytes: f64,
    /// One gradient per parameter.
    pub gradient_bytes: f64,
    /// The optimizer state.
    pub optimizer_bytes: f64,
    /// The activations held for backwards.
    pub activation_bytes: f64,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> f64 {
        self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes
    }
}

/// How much memory the machine can give a new allocation, and where that number comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct AvailableMemory {
    /// Bytes.
    pub bytes: f64,
    /// Where the number comes from, for the message (e.g. `MemAvailable in /proc/meminfo`).
    pub source: String,
}

impl AvailableMemory {
    /// What this machine has available now: `MemAvailable` of `/proc/meminfo`, else its
    /// `MemTotal`, else (no `/proc`, as off Linux) the 48-bit address space, so that only
    /// models no machine could hold are refused. With `--device gpu` the tensors live in GPU
    /// memory, which is usually smaller; host memory is still the bound checked here.
    pub fn of_this_machine() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        for key in ["MemAvailable", "MemTotal"] {
            if let Some(kib) = meminfo_kib(&meminfo, key) {
                return Self {
                    bytes: kib * 1024.0,
                    source: format!("{key} in /proc/meminfo"),
                };
            }
        }
        Self {
            bytes: ADDRESS_SPACE_BYTES,
            source: "the 48-bit address space; /proc/meminfo is not readable".into(),
        }
    }
}

/// The value in KiB of `key` in `/proc/meminfo`'s text (`MemAvailable:   22405656 kB`).
fn meminfo_kib(meminfo: &str, key: &str) -> Option<f64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    })
}

/// Bytes for people: `38.4 kB`, `96.0 TB`, `6.4e31 bytes` (decimal units).
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes;
    for unit in UNITS {
        if value < 1000.0 {
            return if unit == "bytes" {
                format!("{value:.0} bytes")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1000.0;
    }
    format!("{bytes:.1e} bytes")
}

/// A size flag's number as people write it: `100000`, `0.25`, `1e30`.
pub(crate) fn flag_number(value: f64) -> String {
    if value.abs() >= 1e7 {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// Sizes as a comma-separated flag value: `128,64`.
pub(crate) fn joined(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A large count for people: exact below ten million, else three significant digits
/// (`6.05e14`).
fn approx_count(value: f64) -> String {
    if value < 1e7 {
        format!("{value:.0}")
    } else {
        format!("{value:.2e}")
    }
}

/// The refusal of a layer of `width` `units` (channels, features), whose one-sample output
/// takes at least `width` values; `flags` names the size flag and its value.
pub(crate) fn too_wide(flags: String, model: &str, units: &str, width: f64) -> NnError {
    NnError::TooLarge {
        flags,
        detail: format!(
            "model {model} would have a layer of {} {units}; one sample's output of it alone \
             needs {}, more than any machine's memory (layers have at most {MAX_LAYER_WIDTH} \
             channels or features)",
            approx_count(width.round()),
            human_bytes(width * BYTES_PER_VALUE)
        ),
    }
}

/// The refusal of a model of `blocks` blocks (more than [`MAX_BLOCKS`]).
pub(crate) fn too_deep(flags: String, model: &str, blocks: f64) -> NnError {
    NnError::TooLarge {
        flags,
        detail: format!(
            "model {model} would have {} blocks; timeprest builds models of at most \
             {MAX_BLOCKS} blocks",
            approx_count(blocks)
        ),
    }
}

impl ModelSpec {
    /// The memory training this model under `workload` needs (see [`MemoryEstimate`] for what
    /// it counts), computed from the block list in `f64` without allocating any tensor.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] or [`NnError::TooLarge`] if the spec itself is unusable.
    pub fn memory_estimate(&self, workload: &Workload) -> Result<MemoryEstimate, NnError> {
        let blocks = self.try_blocks()?;
        let values =
            |infos: Vec<TensorInfo>| -> f64 { infos.into_iter().map(|t| product(t.shape)).sum() };
        let parameters: f64 = blocks.iter().map(|b| values(b.param_infos())).sum();
        let buffers: f64 = blocks.iter().map(|b| values(b.buffer_infos())).sum();
        let inputs = product([workload.microbatch_size, workload.microbatches_in_flight]);
        let full = product([
            workload.microbatch_size,
            workload
                .microbatches_with_activations
                .min(workload.microbatches_in_flight),
        ]);
        let activation_values = product(self.input_shape()) * inputs
            + blocks.iter().map(Block::activation_values).sum::<f64>() * full;
        Ok(MemoryEstimate {
            parameters,
            weight_bytes: (parameters + buffers) * BYTES_PER_VALUE,
            gradient_bytes: parameters * BYTES_PER_VALUE,
            optimizer_bytes: parameters * workload.optimizer_state_sets as f64 * BYTES_PER_VALUE,
            activation_bytes: activation_values * BYTES_PER_VALUE,
        })
    }

    /// The flags that size this model, with their values, as the command line spells them:
    /// `--hidden 128,64`, `--width 0.5`, `--width 1 --depth 2,2,2,2`,
    /// `--embed-dim 64 --depth 2`.
    pub fn size_flags(&self) -> String {
        match self {
            ModelSpec::Mlp(mlp) => format!("--hidden {}", joined(&mlp.hidden)),
            ModelSpec::Net(net) if net.depth.is_empty() => {
                format!("--width {}", flag_number(net.width))
            }
            ModelSpec::Net(net) => format!(
                "--width {} --depth {}",
                flag_number(net.width),
                joined(&net.depth)
            ),
            ModelSpec::Gpt(gpt) => format!("--embed-dim {} --depth {}", gpt.embed_dim, gpt.layers),
        }
    }

    /// The estimate of [`ModelSpec::memory_estimate`] if it fits in `available`.
    ///
    /// # Errors
    /// [`NnError::TooLarge`] naming the size flags, the bytes needed (and of what) and the
    /// bytes available, when it does not fit; the errors of [`ModelSpec::memory_estimate`].
    pub fn check_memory(
        &self,
        workload: &Workload,
        available: &AvailableMemory,
    ) -> Result<MemoryEstimate, NnError> {
        let estimate = self.memory_estimate(workload)?;
        let needed = estimate.total();
        if needed <= available.bytes {
            return Ok(estimate);
        }
        let state = estimate.weight_bytes + estimate.gradient_bytes + estimate.optimizer_bytes;
        let advice = if estimate.activation_bytes > state {
            "choose smaller sizes or a smaller --batch-size"
        } else {
            "choose smaller sizes"
        };
        Err(NnError::TooLarge {
            flags: self.size_flags(),
            detail: format!(
                "model {} needs about {} of memory to train ({} parameters: {} for the weights, \
                 their gradients and optimizer state; {} of activations for {} micro-batches \
                 of {} samples), but {} is available ({}); {advice}",
                self.name(),
                human_bytes(needed),
                approx_count(estimate.parameters),
                human_bytes(state),
                human_bytes(estimate.activation_bytes),
                workload.microbatches_in_flight,
                workload.microbatch_size,
                human_bytes(available.bytes),
                available.source,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GptConfig, MlpConfig, ModelSize};

    const ONE_MINIBATCH: Workload = Workload {
        microbatch_size: 8,
        microbatches_in_flight: 3,
        microbatches_with_activations: 3,
        optimizer_state_sets: 1,
    };

    fn images(name: &str, size: &ModelSize) -> Result<ModelSpec, NnError> {
        ModelSpec::from_name(name, [3, 32, 32], 10, size)
    }

    fn width(width: f64) -> ModelSize {
        ModelSize {
            width,
            ..ModelSize::default()
        }
    }

    fn plenty() -> AvailableMemory {
        AvailableMemory {
            bytes: 1e15,
            source: "a test".into(),
        }
    }

    #[test]
    fn an_mlp_counts_its_weights_gradients_momentum_and_activations_exactly() {
        let spec = ModelSpec::Mlp(MlpConfig {
            input: 64,
            hidden: vec![128, 64],
            classes: 10,
        });
        let estimate = spec.memory_estimate(&ONE_MINIBATCH).unwrap();
        // 64·128 + 128 + 128·64 + 64 + 64·10 + 10 parameters, 4 bytes each.
        let parameters = 17_226.0;
        assert_eq!(estimate.parameters, parameters);
        assert_eq!(estimate.weight_bytes, parameters * 4.0);
        assert_eq!(estimate.gradient_bytes, parameters * 4.0);
        assert_eq!(estimate.optimizer_bytes, parameters * 4.0);
        // Input and every layer's output (64 + 128 + 64 + 10 values) for 3 × 8 samples.
        assert_eq!(estimate.activation_bytes, 266.0 * 24.0 * 4.0);
        assert_eq!(estimate.total(), parameters * 12.0 + 266.0 * 96.0);
    }

    #[test]
    fn parameters_and_buffers_match_the_built_model() {
        let gpt = ModelSpec::from_name("gpt", [1, 1, 16], 30, &ModelSize::default()).unwrap();
        let mut specs = vec![gpt];
        for name in ["lenet5", "alexnet", "vgg11", "resnet18", "resnet50"] {
            specs.push(images(name, &width(0.25)).unwrap());
        }
        for spec in specs {
            let estimate = spec.memory_estimate(&ONE_MINIBATCH).unwrap();
            let params = crate::init_params(&spec, 1).unwrap();
            let stored: u64 = params.iter().map(crate::BlockParams::bytes).sum();
            assert_eq!(
                estimate.parameters,
                spec.param_count() as f64,
                "{}",
                spec.name()
            );
            assert_eq!(estimate.weight_bytes, stored as f64, "{}", spec.name());
        }
    }

    #[test]
    fn the_estimate_grows_with_every_size() {
        for name in ["lenet5", "vgg16", "resnet50"] {
            let totals: Vec<f64> = [0.25, 0.5, 1.0, 2.0, 4.0]
                .into_iter()
                .map(|w| images(name, &width(w)).unwrap())
                .map(|spec| spec.memory_estimate(&ONE_MINIBATCH).unwrap().total())
                .collect();
            assert!(totals.windows(2).all(|w| w[0] < w[1]), "{name}: {totals:?}");
        }
        let gpt = |embed_dim| {
            let size = ModelSize {
                embed_dim,
                ..ModelSize::default()
            };
            let spec = ModelSpec::from_name("gpt", [1, 1, 32], 50, &size).unwrap();
            spec.memory_estimate(&ONE_MINIBATCH).unwrap()
        };
        assert!(gpt(64).total() < gpt(128).total());
        let spec = images("lenet5", &ModelSize::default()).unwrap();
        let more_samples = Workload {
            microbatch_size: 16,
            ..ONE_MINIBATCH
        };
        let adam = Workload {
            optimizer_state_sets: 2,
            ..ONE_MINIBATCH
        };
        let base = spec.memory_estimate(&ONE_MINIBATCH).unwrap();
        let bigger = spec.memory_estimate(&more_samples).unwrap();
        assert_eq!(bigger.activation_bytes, 2.0 * base.activation_bytes);
        let with_adam = spec.memory_estimate(&adam).unwrap();
        assert_eq!(with_adam.optimizer_bytes, 2.0 * base.optimizer_bytes);
        // Recomputing, two of the three micro-batches keep only their input.
        let recomputing = Workload {
            microbatches_with_activations: 1,
            ..ONE_MINIBATCH
        };
        // One micro-batch's input: 3×32×32 values × 8 samples × 4 bytes.
        let input_bytes = 3.0 * 32.0 * 32.0 * 8.0 * 4.0;
        let saved = spec.memory_estimate(&recomputing).unwrap().activation_bytes;
        assert_eq!(
            saved,
            3.0 * input_bytes + (base.activation_bytes - 3.0 * input_bytes) / 3.0
        );
        assert!(saved < base.activation_bytes);
    }

    #[test]
    fn a_model_that_does_not_fit_is_refused_naming_its_flags_and_the_bytes() {
        let spec = images("lenet5", &width(100_000.0)).unwrap();
        let small = AvailableMemory {
            bytes: 16e9,
            source: "MemAvailable in /proc/meminfo".into(),
        };
        let error = spec.check_memory(&ONE_MINIBATCH, &small).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, NnError::TooLarge { .. }), "{message}");
        for needle in [
            "--width 100000:",
            "lenet5",
            "PB",
            "16.0 GB is available",
            "MemAvailable",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        let fits = images("lenet5", &ModelSize::default()).unwrap();
        assert!(fits.check_memory(&ONE_MINIBATCH, &small).is_ok());
        assert!(spec.check_memory(&ONE_MINIBATCH, &plenty()).is_err());
    }

    #[test]
    fn absurd_sizes_are_refused_while_the_model_is_built() {
        let refused = |result: Result<(), NnError>, needle: &str| {
            let error = result.unwrap_err();
            assert!(matches!(error, NnError::TooLarge { .. }), "{error}");
            assert!(error.to_string().starts_with(needle), "{needle}: {error}");
        };
        let net = |name, size: &ModelSize| images(name, size).map(drop);
        refused(net("lenet5", &width(1e30)), "--width 1e30:");
        refused(net("vgg16", &width(1e12)), "--width 1e12:");
        refused(net("resnet50", &width(f64::MAX)), "--width");
        let resnet_depth = ModelSize {
            depth: vec![usize::MAX, 1, 1, 1],
            ..ModelSize::default()
        };
        refused(
            net("resnet18", &resnet_depth),
            "--depth 18446744073709551615,1,1,1:",
        );
        let hidden = ModelSize {
            hidden: vec![usize::MAX],
            ..ModelSize::default()
        };
        refused(net("mlp", &hidden), "--hidden 18446744073709551615:");
        let gpt = |embed_dim, layers| {
            ModelSpec::Gpt(GptConfig {
                seq_len: 8,
                vocab_size: 10,
                embed_dim,
                heads: 1,
                layers,
            })
            .validate()
        };
        refused(gpt(1 << 41, 1), "--embed-dim 2199023255552:");
        refused(gpt(8, 1_000_000_000_000), "--depth 1000000000000:");
    }

    #[test]
    fn sizes_within_the_limits_give_an_estimate_not_an_overflow() {
        // The widest layer allowed, on an input whose flattened features do not fit a usize.
        let spec = ModelSpec::from_name("lenet5", [3, 1 << 20, 1 << 20], 10, &width(1e9)).unwrap();
        let estimate = spec.memory_estimate(&ONE_MINIBATCH).unwrap();
        assert!(estimate.total().is_finite() && estimate.total() > 1e30);
        assert!(spec.check_memory(&ONE_MINIBATCH, &plenty()).is_err());
    }

    #[test]
    fn meminfo_and_byte_counts_read_and_print_as_people_expect() {
        let meminfo = "MemTotal:       24684096 kB\nMemAvailable:   22405656 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(22_405_656.0));
        assert_eq!(meminfo_kib(meminfo, "MemFree"), None);
        assert!(AvailableMemory::of_this_machine().bytes > 0.0);
        assert_eq!(human_bytes(512.0), "512 bytes");
        assert_eq!(human_bytes(38_440.0), "38.4 kB");
        assert_eq!(human_bytes(9.6e13), "96.0 TB");
        assert_eq!(human_bytes(6.4e31), "6.4e31 bytes");
        assert_eq!(flag_number(100_000.0), "100000");
        assert_eq!(flag_number(0.25), "0.25");
        assert_eq!(flag_number(1e30), "1e30");
        assert_eq!(approx_count(17_226.0), "17226");
        assert_eq!(approx_count(6.048_001_516e14), "6.05e14");
    }
}
