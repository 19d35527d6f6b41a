//! The hot spot of the `crowd` and `migrate` scenarios: where the swarm gathers, as a function of
//! the run's time.
//!
//! A load test of a balancer needs a hot zone it can point at: `crowd` keeps every bot within
//! `radius_m` of one point for the whole run, `migrate` moves that point in a straight line across
//! the world so the hot zone travels and the cluster has to follow it. Both are pure functions of
//! the swarm's clock (microseconds since it started) and a seed, like every other choice a bot
//! makes, so two runs with the same seed ask the shards for the same crowd at the same moments.

use glam::Vec3;
use zonescaler_shared::rng::Rng;

/// Default radius (metres) of the crowd: 600 bots within 100 m is one bot per ~50 m², a crowd in
/// every bot's area of interest, yet spread over more than one cell of the smallest size a
/// balancer may split down to (twice the interest radius, 64 m with the default world).
pub const HOTSPOT_RADIUS_DEFAULT_M: f32 = 100.0;
/// How fast a migrating hot spot moves, as a share of the avatars' top speed. Bots walk at 90%
/// of it; at half of it every bot catches up with the crowd and then keeps moving inside it.
pub const MIGRATE_SPEED_SHARE: f32 = 0.5;
/// Salt of the migrating hot spot's heading, so it does not repeat any bot's own choices.
const HEADING_SALT: u64 = 0x004d_4947_5241_5445;

/// Where the crowd is at every moment of a run: `from` at time 0, `to` at `travel_us`, in a
/// straight line at constant speed in between, and `to` afterwards. A `crowd` hot spot has
/// `from == to`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hotspot {
    pub from: Vec3,
    pub to: Vec3,
    pub radius_m: f32,
    /// Microseconds of the swarm's clock the trip from `from` to `to` takes (0: it stays put).
    pub travel_us: u64,
}

/// Why a hot spot cannot be used, in words that name the flag.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HotspotError {
    #[error("--radius must be a positive number of metres (got {0})")]
    Radius(String),
    #[error("--hotspot {x},{z} is outside the world ({min_x}..{max_x} × {min_z}..{max_z} in x, z)")]
    Outside {
        x: f32,
        z: f32,
        min_x: f32,
        min_z: f32,
        max_x: f32,
        max_z: f32,
    },
}

/// The world rectangle `[min_x, min_z, max_x, max_z]`, as `Welcome` gives it.
pub type Bounds = [f32; 4];

impl Hotspot {
    /// A hot spot that stays at `centre` (the world's centre when `None`). Refuses a centre
    /// outside the world and a radius that is not positive.
    pub fn crowd(
        centre: Option<(f32, f32)>,
        radius_m: f32,
        world: Bounds,
    ) -> Result<Self, HotspotError> {
        let c = checked_centre(centre, radius_m, world)?;
        Ok(Self {
            from: c,
            to: c,
            radius_m,
            travel_us: 0,
        })
    }

    /// A hot spot whose path has its midpoint at `centre` (the world's centre when `None`) and a
    /// heading chosen by `seed`: it starts on one side, crosses the centre and ends on the other,
    /// over `run_us`. The path is as long as the world allows along that heading (keeping the
    /// crowd's circle inside where it can), but no longer than [`MIGRATE_SPEED_SHARE`] of
    /// `max_speed_mps` for `run_us`, so bots can keep up with it.
    pub fn migrate(
        centre: Option<(f32, f32)>,
        radius_m: f32,
        world: Bounds,
        seed: u64,
        run_us: u64,
        max_speed_mps: f32,
    ) -> Result<Self, HotspotError> {
        let c = checked_centre(centre, radius_m, world)?;
        let angle = Rng::new(seed ^ HEADING_SALT).range_f32(0.0, std::f32::consts::TAU);
        let dir = Vec3::new(angle.cos(), 0.0, angle.sin());
        // How far the centre may go along `d` keeping the crowd's circle inside the world: to
        // the edge of the world shrunk by the radius (to its middle line where it is narrower).
        let [min_x, min_z, max_x, max_z] = world;
        let shrink = |lo: f32, hi: f32| {
            if hi - lo > 2.0 * radius_m {
                (lo + radius_m, hi - radius_m)
            } else {
                ((lo + hi) / 2.0, (lo + hi) / 2.0)
            }
        };
        let (lx, hx) = shrink(min_x, max_x);
        let (lz, hz) = shrink(min_z, max_z);
        let along = |c: f32, d: f32, lo: f32, hi: f32| {
            if d > 1e-6 {
                (hi - c) / d
            } else if d < -1e-6 {
                (lo - c) / d
            } else {
                f32::INFINITY
            }
        };
        let reach = |d: Vec3| {
            along(c.x, d.x, lx, hx)
                .min(along(c.z, d.z, lz, hz))
                .max(0.0)
        };
        let run_s = run_us as f32 / 1e6;
        let by_speed = MIGRATE_SPEED_SHARE * max_speed_mps.max(0.0) * run_s / 2.0;
        let back = reach(-dir).min(by_speed);
        let ahead = reach(dir).min(by_speed);
        Ok(Self {
            from: c - dir * back,
            to: c + dir * ahead,
            radius_m,
            travel_us: run_us,
        })
    }

    /// The hot spot's centre at `now_us` of the swarm's clock.
    pub fn at(&self, now_us: u64) -> Vec3 {
        if self.travel_us == 0 {
            return self.to;
        }
        let t = (now_us as f64 / self.travel_us as f64).clamp(0.0, 1.0) as f32;
        self.from.lerp(self.to, t)
    }

    /// Whether the hot spot moves during the run.
    pub fn moves(&self) -> bool {
        self.travel_us > 0 && self.from != self.to
    }

    /// A point uniformly distributed over the crowd's disc, relative to its centre.
    pub fn offset(&self, rng: &mut Rng) -> Vec3 {
        let r = self.radius_m * rng.next_f32().sqrt();
        let a = rng.range_f32(0.0, std::f32::consts::TAU);
        Vec3::new(r * a.cos(), 0.0, r * a.sin())
    }
}

/// `centre` (or the world's centre) as a point, if it is inside the world and `radius_m` is a
/// radius.
fn checked_centre(
    centre: Option<(f32, f32)>,
    radius_m: f32,
    world: Bounds,
) -> Result<Vec3, HotspotError> {
    if !(radius_m.is_finite() && radius_m > 0.0) {
        return Err(HotspotError::Radius(radius_m.to_string()));
    }
    let [min_x, min_z, max_x, max_z] = world;
    let (x, z) = centre.unwrap_or(((min_x + max_x) / 2.0, (min_z + max_z) / 2.0));
    let inside = x.is_finite()
        && z.is_finite()
        && (min_x..=max_x).contains(&x)
        && (min_z..=max_z).contains(&z);
    if !inside {
        return Err(HotspotError::Outside {
            x,
            z,
            min_x,
            min_z,
            max_x,
            max_z,
        });
    }
    Ok(Vec3::new(x, 0.0, z))
}

/// A `--hotspot X,Z` argument.
pub fn parse_point(s: &str) -> Result<(f32, f32), String> {
    let bad = || format!("`{s}` is not a point: give X,Z in metres, e.g. 0,0 or -300.5,120");
    let (x, z) = s.split_once(',').ok_or_else(bad)?;
    let x: f32 = x.trim().parse().map_err(|_| bad())?;
    let z: f32 = z.trim().parse().map_err(|_| bad())?;
    if !(x.is_finite() && z.is_finite()) {
        return Err(bad());
    }
    Ok((x, z))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORLD: Bounds = [-1024.0, -1024.0, 1024.0, 1024.0];
    const S: u64 = 1_000_000;

    #[test]
    fn a_crowd_stays_put_and_its_points_lie_inside_the_radius() {
        let h = Hotspot::crowd(Some((300.0, -200.0)), 50.0, WORLD).expect("valid");
        assert_eq!(h.at(0), Vec3::new(300.0, 0.0, -200.0));
        assert_eq!(h.at(90 * S), h.at(0), "a crowd does not move");
        assert!(!h.moves());
        let mut rng = Rng::new(7);
        let offsets: Vec<Vec3> = (0..2_000).map(|_| h.offset(&mut rng)).collect();
        assert!(
            offsets
                .iter()
                .all(|o| o.length() <= 50.0 + 1e-3 && o.y == 0.0)
        );
        let outer = offsets.iter().filter(|o| o.length() > 25.0).count();
        // Uniform over the disc: three quarters of the area lies beyond half the radius.
        assert!((1_300..1_700).contains(&outer), "{outer} of 2000 past r/2");
        assert_eq!(
            Hotspot::crowd(None, 10.0, WORLD).expect("default").at(0),
            Vec3::ZERO,
            "the default is the world's centre"
        );
    }

    #[test]
    fn bad_hot_spots_are_refused_with_the_flag_named() {
        for r in [0.0, -5.0, f32::NAN, f32::INFINITY] {
            let e = Hotspot::crowd(None, r, WORLD).expect_err("no radius");
            assert!(e.to_string().contains("--radius"), "{e}");
        }
        let e = Hotspot::crowd(Some((2_000.0, 0.0)), 10.0, WORLD).expect_err("outside");
        assert!(e.to_string().contains("--hotspot 2000,0 is outside"), "{e}");
        assert!(Hotspot::migrate(Some((0.0, -1025.0)), 10.0, WORLD, 1, S, 8.0).is_err());
        assert_eq!(parse_point(" 12.5, -3 "), Ok((12.5, -3.0)));
        for bad in ["12", "a,b", "1,2,3", "inf,0", ""] {
            assert!(parse_point(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_migrating_hot_spot_crosses_its_centre_at_a_speed_bots_can_follow() {
        let run = 120 * S;
        let h = Hotspot::migrate(None, 100.0, WORLD, 3, run, 8.0).expect("valid");
        assert!(h.moves());
        let (start, mid, end) = (h.at(0), h.at(run / 2), h.at(run));
        assert!(start.distance(end) > 400.0, "it travels: {start} → {end}");
        assert!(mid.length() < 1.0, "halfway it crosses the centre: {mid}");
        assert_eq!(h.at(2 * run), end, "it stops at the end of the run");
        let speed = start.distance(end) / 120.0;
        assert!(speed <= MIGRATE_SPEED_SHARE * 8.0 + 1e-3, "{speed} m/s");
        for t in [0, run / 3, run] {
            let p = h.at(t);
            assert!(
                p.x.abs() <= 1024.0 - 100.0 && p.z.abs() <= 1024.0 - 100.0,
                "the crowd's circle stays in the world: {p}"
            );
        }
        // A long run in a small world: the path stops short of the edges instead.
        let small = [0.0, 0.0, 400.0, 400.0];
        let h = Hotspot::migrate(None, 50.0, small, 3, 3_600 * S, 8.0).expect("valid");
        for t in [0, 3_600 * S] {
            let p = h.at(t);
            assert!(
                (50.0..=350.0).contains(&p.x) && (50.0..=350.0).contains(&p.z),
                "{p}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_path_and_another_seed_another() {
        let a = Hotspot::migrate(None, 100.0, WORLD, 9, 60 * S, 8.0).expect("valid");
        let b = Hotspot::migrate(None, 100.0, WORLD, 9, 60 * S, 8.0).expect("valid");
        let c = Hotspot::migrate(None, 100.0, WORLD, 10, 60 * S, 8.0).expect("valid");
        assert_eq!(a, b);
        assert_ne!(a.to, c.to, "the seed picks the heading");
        let (mut r1, mut r2) = (Rng::new(4), Rng::new(4));
        assert_eq!(a.offset(&mut r1), a.offset(&mut r2));
    }
}
