//! Which requests of the experiment workload are followed by a `Track`.
//!
//! Deterministic rather than random, so two runs with the same arguments send the same mix and a
//! short run still tracks exactly its share: request `n` tracks when `floor((n + 1) · ratio)`
//! exceeds `floor(n · ratio)`. Over any `N` consecutive requests that is `N · ratio` tracks, give
//! or take one, spread evenly instead of in bursts.

/// A track ratio that has been checked to lie in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackPlan {
    ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("--track-ratio {0} is not a fraction between 0 and 1")]
pub struct BadTrackRatio(pub f64);

impl TrackPlan {
    pub fn new(ratio: f64) -> Result<TrackPlan, BadTrackRatio> {
        // `contains` is false for NaN, so NaN is refused too.
        if (0.0..=1.0).contains(&ratio) {
            Ok(TrackPlan { ratio })
        } else {
            Err(BadTrackRatio(ratio))
        }
    }

    pub fn ratio(self) -> f64 {
        self.ratio
    }

    /// Whether request number `n` (counted per worker) is followed by a `Track`.
    pub fn tracks(self, n: u64) -> bool {
        let step = |i: u64| (i as f64 * self.ratio).floor();
        step(n.wrapping_add(1)) > step(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: TrackPlan, from: u64, n: u64) -> u64 {
        (from..from + n).filter(|&i| plan.tracks(i)).count() as u64
    }

    #[test]
    fn tracks_exactly_the_ratio_over_any_window() {
        for ratio in [0.1, 0.25, 0.5, 1.0 / 3.0, 0.07] {
            let plan = TrackPlan::new(ratio).unwrap();
            for from in [0, 1, 7, 1_000_003] {
                let n = 10_000;
                let got = count(plan, from, n) as f64;
                assert!(
                    (got - n as f64 * ratio).abs() <= 1.0,
                    "ratio {ratio} from {from}: {got} tracks in {n}"
                );
            }
        }
    }

    #[test]
    fn a_tenth_is_every_tenth_request() {
        let plan = TrackPlan::new(0.1).unwrap();
        let tracked: Vec<u64> = (0..40).filter(|&i| plan.tracks(i)).collect();
        assert_eq!(tracked, [9, 19, 29, 39]);
    }

    #[test]
    fn the_bounds_track_nothing_or_everything() {
        let none = TrackPlan::new(0.0).unwrap();
        let all = TrackPlan::new(1.0).unwrap();
        assert!((0..1_000).all(|i| !none.tracks(i)));
        assert!((0..1_000).all(|i| all.tracks(i)));
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused_by_value() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let e = TrackPlan::new(bad).unwrap_err();
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }
}
