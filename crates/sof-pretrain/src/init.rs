//! Seeded parameter initialisation and renumbering of a fresh model.

use burn::prelude::*;

use crate::masking::rng;

/// Re-draws every randomly initialised parameter from a generator seeded by the run's seed,
/// with burn's default initializers (embeddings N(0, 1); linear weights `[in, out]` and their
/// biases U(-1/sqrt(in), 1/sqrt(in)); constant tensors such as LayerNorm gains and zero biases
/// stay): the initial weights then depend on the seed alone, not on the backend's
/// process-wide generator that every model in the process shares.
pub(crate) struct SeededInit {
    rng: rand_xoshiro::Xoshiro256PlusPlus,
    fan_in: usize,
}

impl SeededInit {
    pub(crate) fn new(seed: u64) -> Self {
        Self { rng: rng(seed), fan_in: 1 }
    }
}

impl burn::module::ModuleMapper for SeededInit {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        use rand::Rng;
        use rand_distr::{Distribution, StandardNormal};
        param.map(|t| {
            let values: Vec<f32> = t.clone().into_data().try_to_vec::<f32>().unwrap_or_default();
            let n = values.len().max(1) as f64;
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
            let dims = t.dims();
            if D == 2 {
                self.fan_in = dims[0].max(1);
            }
            // Constant initialisations (LayerNorm gains 1, offsets 0, zero biases) stay; a
            // one-element random bias has no spread but is not one of them.
            let constant =
                values.windows(2).all(|w| w[0] == w[1]) && values.first().is_some_and(|&v| v == 0.0 || v == 1.0);
            if constant {
                return t;
            }
            let fresh: Vec<f32> = if D == 2 && var > 0.5 {
                (0..values.len()).map(|_| Distribution::<f64>::sample(&StandardNormal, &mut self.rng) as f32).collect()
            } else {
                let a = 1.0 / (self.fan_in as f64).sqrt();
                (0..values.len()).map(|_| self.rng.random_range(-a..a) as f32).collect()
            };
            let require = t.is_require_grad();
            let out = Tensor::<D>::from_data(TensorData::new(fresh, dims), &t.device());
            if require { out.require_grad() } else { out }
        })
    }
}

/// Gives parameters the ids 1, 2, 3... in module order.
pub(crate) struct Renumber {
    pub(crate) next: u64,
}

impl burn::module::ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let (_, tensor, mapper) = param.consume();
        self.next += 1;
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.next - 1), tensor, mapper)
    }
}
