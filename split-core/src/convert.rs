//! Conversions between the generated `splitinfer.v1` types and split-core's domain types (the
//! tensor conversions live with the wire types, in `splitinfer_link::convert`). Generated types
//! stop at the service boundary; everything past it works with checked values.

use splitinfer_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::sampling::SamplingConfig;
use crate::split::{Epoch, Split};

impl From<Split> for pb::Split {
    fn from(s: Split) -> Self {
        pb::Split { k: s.k as u32, epoch: s.epoch.0 }
    }
}

impl From<pb::Split> for Split {
    fn from(s: pb::Split) -> Self {
        Split { k: s.k as usize, epoch: Epoch(s.epoch) }
    }
}

impl From<SamplingConfig> for pb::Sampling {
    fn from(s: SamplingConfig) -> Self {
        pb::Sampling {
            temperature: s.temperature,
            top_k: s.top_k.unwrap_or(0) as u32,
            top_p: s.top_p.unwrap_or(0.0),
            seed: s.seed,
        }
    }
}

impl TryFrom<pb::Sampling> for SamplingConfig {
    type Error = Error;

    fn try_from(s: pb::Sampling) -> Result<Self> {
        let c = SamplingConfig {
            temperature: s.temperature,
            top_k: (s.top_k > 0).then_some(s.top_k as usize),
            top_p: (s.top_p > 0.0 && s.top_p < 1.0).then_some(s.top_p),
            seed: s.seed,
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_zero_means_no_cut() {
        let s = SamplingConfig::try_from(pb::Sampling { temperature: 0.7, top_k: 0, top_p: 1.0, seed: 3 }).unwrap();
        assert_eq!(s, SamplingConfig { temperature: 0.7, top_k: None, top_p: None, seed: 3 });
        assert!(SamplingConfig::try_from(pb::Sampling { temperature: -1.0, ..Default::default() }).is_err());
    }

    #[test]
    fn a_split_round_trips_through_the_wire() {
        let s = Split::new(17, u64::MAX - 1);
        assert_eq!(Split::from(pb::Split::from(s)), s);
        assert!(Split::new(3, 2).supersedes(Split::new(9, 1)));
        assert!(!Split::new(3, 2).supersedes(Split::new(3, 2)));
    }
}
