//! Position quantisation for the wire.
//!
//! Positions travel as whole centimetres in `i32` per axis ([`QUANTUM_M`] = 0.01 m). Rounding to
//! the nearest centimetre bounds the error of every transmitted coordinate by
//! [`ERROR_BOUND_M`] = 0.005 m, i.e. a reconstructed point is within 0.005·√3 ≈ 8.7 mm of the
//! server's. Worlds are validated to lie within [`crate::limits::WORLD_EXTENT_M_MAX`] (32 km) of
//! the origin, where f32 itself still resolves 3.9 mm, so the bound is not swamped by float
//! rounding. Deltas between ticks are small integers, which `bitcode` packs into a few bits each.

use bitcode::{Decode, Encode};
use glam::Vec3;

/// Metres per quantisation step.
pub const QUANTUM_M: f32 = 0.01;
/// Largest difference between a coordinate and its quantised value.
pub const ERROR_BOUND_M: f32 = QUANTUM_M / 2.0;

/// A quantised position: centimetres on x, y, z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct QPos(pub [i32; 3]);

impl QPos {
    /// Nearest quantised position. Callers keep `p` inside the world, which config validation
    /// keeps far inside `i32` centimetres; out-of-range values saturate instead of wrapping.
    pub fn quantize(p: Vec3) -> Self {
        let q = |v: f32| (v / QUANTUM_M).round() as i32;
        Self([q(p.x), q(p.y), q(p.z)])
    }

    /// The point this quantised position stands for.
    pub fn to_vec3(self) -> Vec3 {
        Vec3::new(self.0[0] as f32, self.0[1] as f32, self.0[2] as f32) * QUANTUM_M
    }

    /// Component-wise `self - base`, if every axis fits an `i16` (≈ ±327 m).
    pub fn delta_from(self, base: QPos) -> Option<[i16; 3]> {
        let d = |i: usize| i16::try_from(i64::from(self.0[i]) - i64::from(base.0[i])).ok();
        Some([d(0)?, d(1)?, d(2)?])
    }

    /// `base + delta`, saturating (a hostile delta cannot overflow).
    pub fn apply_delta(base: QPos, d: [i16; 3]) -> QPos {
        QPos([0, 1, 2].map(|i| base.0[i].saturating_add(i32::from(d[i]))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_error_is_within_the_documented_bound() {
        let mut rng = crate::rng::Rng::new(9);
        for _ in 0..10_000 {
            let p = Vec3::new(
                rng.range_f32(-5000.0, 5000.0),
                rng.range_f32(-50.0, 50.0),
                rng.range_f32(-5000.0, 5000.0),
            );
            let back = QPos::quantize(p).to_vec3();
            let err = (back - p).abs().max_element();
            // f32 itself rounds at 5 km by up to 0.5 mm; allow that on top of the bound.
            assert!(
                err <= ERROR_BOUND_M + 0.0005,
                "error {err} m at {p} exceeds the bound"
            );
        }
    }

    #[test]
    fn deltas_round_trip_and_refuse_large_jumps() {
        let a = QPos([100, 0, -50]);
        let b = QPos([130, 0, -80]);
        let d = b.delta_from(a).expect("small delta fits i16");
        assert_eq!(QPos::apply_delta(a, d), b);
        assert!(
            QPos([1_000_000, 0, 0])
                .delta_from(QPos::default())
                .is_none()
        );
    }
}
