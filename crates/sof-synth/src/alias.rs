//! Walker's alias method: O(1) draws from a fixed discrete distribution.

use rand::Rng;

/// A discrete distribution over `0..n` prepared for constant-time sampling.
#[derive(Debug, Clone)]
pub(crate) struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// `weights` must be finite, non-negative and not all zero.
    pub(crate) fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        assert!(n > 0 && total > 0.0 && total.is_finite(), "alias table needs positive weights");
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Self { prob, alias }
    }

    /// One draw from one 64-bit random number: the high half picks the column (multiply-shift),
    /// the low half decides between the column and its alias.
    pub(crate) fn sample<R: Rng>(&self, rng: &mut R) -> u32 {
        let r: u64 = rng.random();
        let i = (((r >> 32) * self.prob.len() as u64) >> 32) as usize;
        let u = (r & 0xFFFF_FFFF) as f64 * (1.0 / 4_294_967_296.0);
        if u < self.prob[i] { i as u32 } else { self.alias[i] }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn frequencies_follow_weights() {
        let w = [1.0, 0.0, 3.0, 6.0];
        let t = AliasTable::new(&w);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        let mut counts = [0usize; 4];
        let n = 200_000;
        for _ in 0..n {
            counts[t.sample(&mut rng) as usize] += 1;
        }
        for (c, wi) in counts.iter().zip(w) {
            let expected = wi / 10.0;
            assert!((*c as f64 / n as f64 - expected).abs() < 0.005, "{counts:?}");
        }
        assert_eq!(counts[1], 0, "zero weight is never drawn");
    }
}
