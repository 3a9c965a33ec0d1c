//! Safety: the Reachy Mini's motion limits, in one place, and the clamp every motion goes through.
//!
//! Every motion the driver sends to the daemon (goto_target, move_head_left/right, move_to_audio…)
//! is a [`Motion`] passed through [`Limits::clamp`]; nothing else builds a move request. Internal
//! units are SI: metres, radians, seconds. Where the numbers come from (reachy-mini 1.12.0):
//!
//! | limit | value | source |
//! |---|---|---|
//! | body yaw | ±160° (±2.7925 rad) | URDF joint `yaw_body` `<limit lower=-2.79253 upper=2.79253>`; the analytical IK's `max_body_yaw=deg2rad(160)` (`kinematics/analytical_kinematics.py`) |
//! | head yaw relative to the body | ±55° | the IK's hard `rel_yaw` constraint between `dummy_torso_yaw` and `head` (`kinematics/placo_kinematics.py`; the analytical IK allows 65°) |
//! | head yaw absolute | ±179° | the IK's hard `abs_yaw` constraint (`placo_kinematics.py`) |
//! | head tilt (roll, pitch, and their combination) | 35° cone | the IK's hard `cone` constraint between `body_foot_3dprint` and `head` (`placo_kinematics.py`) |
//! | head x, y | ±30 mm | inside the analytical IK's single-axis workspace (x −46…+50 mm, y ±47 mm, measured with `AnalyticalKinematics.ik` against the URDF's stewart joint limits) with margin for combined poses |
//! | head z | −30…+20 mm | same measurement: z −50…+23 mm |
//! | antennas | ±3.05 rad | the SDK's own sleep pose `SLEEP_ANTENNAS_JOINT_POSITIONS = [-3.05, 3.05]` (`reachy_mini.py`); URDF allows ±π |
//! | duration | 0.2 … 30 s | the SDK rejects duration ≤ 0 (`ReachyMini.goto_target`); 0.2 s keeps moves from being violent; 30 s bounds how long a tool waits |
//!
//! Values that are not finite are refused (never guessed).

use serde::{Deserialize, Serialize};

/// A head pose in the daemon's frame: position in metres, orientation in radians (roll about x,
/// pitch about y, yaw about z).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HeadPose {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub roll: f64,
    pub pitch: f64,
    pub yaw: f64,
}

/// Interpolation of a move (the daemon's `InterpolationTechnique`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Linear,
    #[default]
    Minjerk,
    /// Ease in and out (`ease_in_out` on the daemon).
    #[serde(alias = "ease_in_out")]
    Ease,
    Cartoon,
}

impl Interpolation {
    pub fn daemon_name(self) -> &'static str {
        match self {
            Interpolation::Linear => "linear",
            Interpolation::Minjerk => "minjerk",
            Interpolation::Ease => "ease_in_out",
            Interpolation::Cartoon => "cartoon",
        }
    }
}

/// One motion request: any of head, antennas (right, left), body yaw; a duration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Motion {
    pub head: Option<HeadPose>,
    /// [right, left], radians.
    pub antennas: Option<[f64; 2]>,
    pub body_yaw: Option<f64>,
    pub duration: f64,
    pub interpolation: Interpolation,
}

/// The robot's limits (see the module doc for their sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub z: (f64, f64),
    /// Largest tilt of the head (roll and pitch, and their combination), radians.
    pub tilt: f64,
    /// Largest head yaw relative to the body yaw, radians.
    pub head_yaw_relative: f64,
    /// Largest absolute head yaw, radians.
    pub head_yaw_absolute: f64,
    pub body_yaw: f64,
    pub antenna: f64,
    pub min_duration: f64,
    pub max_duration: f64,
}

pub const REACHY_MINI: Limits = Limits {
    x: (-0.030, 0.030),
    y: (-0.030, 0.030),
    z: (-0.030, 0.020),
    tilt: 35.0 * std::f64::consts::PI / 180.0,
    head_yaw_relative: 55.0 * std::f64::consts::PI / 180.0,
    head_yaw_absolute: 179.0 * std::f64::consts::PI / 180.0,
    body_yaw: 2.79253,
    antenna: 3.05,
    min_duration: 0.2,
    max_duration: 30.0,
};

impl Default for Limits {
    fn default() -> Self {
        REACHY_MINI
    }
}

/// A motion after clamping, with a note for every value that was changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Clamped {
    pub motion: Motion,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    #[error("{0} is not a finite number")]
    NotFinite(&'static str),
}

fn finite(name: &'static str, v: f64) -> Result<f64, LimitError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(LimitError::NotFinite(name))
    }
}

fn clip(name: &str, v: f64, (lo, hi): (f64, f64), unit: Unit, notes: &mut Vec<String>) -> f64 {
    let c = v.clamp(lo, hi);
    if c != v {
        notes.push(format!("{name} {} clamped to {}", unit.show(v), unit.show(c)));
    }
    c
}

#[derive(Clone, Copy)]
enum Unit {
    Metre,
    Radian,
    Second,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Metre => format!("{:.1} mm", v * 1000.0),
            Unit::Radian => format!("{:.1}°", v.to_degrees()),
            Unit::Second => format!("{v:.2} s"),
        }
    }
}

impl Limits {
    /// Clamp `m` into the limits. `current_body_yaw` is used for the head's relative yaw limit when
    /// the motion does not set the body yaw itself.
    pub fn clamp(&self, m: &Motion, current_body_yaw: f64) -> Result<Clamped, LimitError> {
        let mut notes = Vec::new();
        let mut out = *m;

        let body = match m.body_yaw {
            Some(b) => {
                let b = clip("body_yaw", finite("body_yaw", b)?, (-self.body_yaw, self.body_yaw), Unit::Radian, &mut notes);
                out.body_yaw = Some(b);
                b
            }
            None => {
                let b = if current_body_yaw.is_finite() { current_body_yaw } else { 0.0 };
                b.clamp(-self.body_yaw, self.body_yaw)
            }
        };

        if let Some(h) = m.head {
            let mut c = HeadPose {
                x: clip("x", finite("x", h.x)?, self.x, Unit::Metre, &mut notes),
                y: clip("y", finite("y", h.y)?, self.y, Unit::Metre, &mut notes),
                z: clip("z", finite("z", h.z)?, self.z, Unit::Metre, &mut notes),
                roll: clip("roll", finite("roll", h.roll)?, (-self.tilt, self.tilt), Unit::Radian, &mut notes),
                pitch: clip("pitch", finite("pitch", h.pitch)?, (-self.tilt, self.tilt), Unit::Radian, &mut notes),
                yaw: finite("yaw", h.yaw)?,
            };
            // Roll and pitch together tilt the head further than either alone: keep the
            // combination inside the cone, keeping its direction.
            let tilt = c.roll.hypot(c.pitch);
            if tilt > self.tilt {
                let k = self.tilt / tilt;
                notes.push(format!(
                    "combined tilt {:.1}° scaled to {:.1}° (roll {:.1}°, pitch {:.1}°)",
                    tilt.to_degrees(),
                    self.tilt.to_degrees(),
                    (c.roll * k).to_degrees(),
                    (c.pitch * k).to_degrees()
                ));
                c.roll *= k;
                c.pitch *= k;
            }
            let lo = (body - self.head_yaw_relative).max(-self.head_yaw_absolute);
            let hi = (body + self.head_yaw_relative).min(self.head_yaw_absolute);
            c.yaw = clip("yaw", c.yaw, (lo, hi), Unit::Radian, &mut notes);
            out.head = Some(c);
        }

        if let Some([r, l]) = m.antennas {
            let range = (-self.antenna, self.antenna);
            out.antennas = Some([
                clip("right antenna", finite("antennas", r)?, range, Unit::Radian, &mut notes),
                clip("left antenna", finite("antennas", l)?, range, Unit::Radian, &mut notes),
            ]);
        }

        let d = if m.duration.is_finite() { m.duration } else { self.min_duration };
        out.duration = clip("duration", d, (self.min_duration, self.max_duration), Unit::Second, &mut notes);
        Ok(Clamped { motion: out, notes })
    }

    /// Whether a (clamped) motion is inside every limit; the property the tests check.
    pub fn contains(&self, m: &Motion, current_body_yaw: f64) -> bool {
        const EPS: f64 = 1e-9;
        let inside = |v: f64, (lo, hi): (f64, f64)| v >= lo - EPS && v <= hi + EPS;
        let body = m.body_yaw.unwrap_or(current_body_yaw.clamp(-self.body_yaw, self.body_yaw));
        if !inside(body, (-self.body_yaw, self.body_yaw)) {
            return false;
        }
        if let Some(h) = m.head {
            let yaw_lo = (body - self.head_yaw_relative).max(-self.head_yaw_absolute);
            let yaw_hi = (body + self.head_yaw_relative).min(self.head_yaw_absolute);
            if !(inside(h.x, self.x)
                && inside(h.y, self.y)
                && inside(h.z, self.z)
                && h.roll.hypot(h.pitch) <= self.tilt + EPS
                && inside(h.yaw, (yaw_lo, yaw_hi)))
            {
                return false;
            }
        }
        if let Some(a) = m.antennas {
            if !a.iter().all(|v| inside(*v, (-self.antenna, self.antenna))) {
                return false;
            }
        }
        inside(m.duration, (self.min_duration, self.max_duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = REACHY_MINI;

    fn head(x: f64, y: f64, z: f64, roll: f64, pitch: f64, yaw: f64) -> Motion {
        Motion { head: Some(HeadPose { x, y, z, roll, pitch, yaw }), duration: 1.0, ..Default::default() }
    }

    #[test]
    fn a_motion_inside_the_limits_is_unchanged() {
        let m = Motion {
            head: Some(HeadPose { x: 0.01, y: -0.01, z: 0.005, roll: 0.1, pitch: -0.2, yaw: 0.5 }),
            antennas: Some([0.5, -0.5]),
            body_yaw: Some(0.3),
            duration: 1.5,
            interpolation: Interpolation::Cartoon,
        };
        let c = L.clamp(&m, 0.0).unwrap();
        assert_eq!(c.motion, m);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn every_axis_is_clamped_and_noted() {
        let c = L.clamp(&head(1.0, -1.0, 1.0, 0.0, 0.0, 3.0), 0.0).unwrap();
        let h = c.motion.head.unwrap();
        assert_eq!((h.x, h.y, h.z), (0.030, -0.030, 0.020));
        assert!((h.yaw - L.head_yaw_relative).abs() < 1e-12);
        assert_eq!(c.notes.len(), 4, "{:?}", c.notes);
        assert!(c.notes[0].contains("x 1000.0 mm clamped to 30.0 mm"), "{:?}", c.notes);
    }

    #[test]
    fn roll_and_pitch_together_stay_in_the_cone() {
        let a = 30f64.to_radians(); // each alone is allowed, together 42° is not
        let c = L.clamp(&head(0.0, 0.0, 0.0, a, a, 0.0), 0.0).unwrap();
        let h = c.motion.head.unwrap();
        assert!((h.roll.hypot(h.pitch) - L.tilt).abs() < 1e-12);
        assert!((h.roll - h.pitch).abs() < 1e-12, "direction kept");
        assert!(c.notes.iter().any(|n| n.contains("combined tilt")));
    }

    #[test]
    fn head_yaw_follows_the_body_and_the_absolute_limit() {
        // Body turned to 150°: the head may go to 150+55 = 205°, but never past 179°.
        let m = Motion { body_yaw: Some(150f64.to_radians()), ..head(0.0, 0.0, 0.0, 0.0, 0.0, 4.0) };
        let h = L.clamp(&m, 0.0).unwrap().motion.head.unwrap();
        assert!((h.yaw - L.head_yaw_absolute).abs() < 1e-12);
        // Without body_yaw in the request, the current body yaw is used.
        let h = L.clamp(&head(0.0, 0.0, 0.0, 0.0, 0.0, -2.0), -0.5).unwrap().motion.head.unwrap();
        assert!((h.yaw - (-0.5 - L.head_yaw_relative)).abs() < 1e-12);
    }

    #[test]
    fn body_antennas_and_duration_are_clamped() {
        let m = Motion { antennas: Some([10.0, -10.0]), body_yaw: Some(-7.0), duration: 0.0, ..Default::default() };
        let c = L.clamp(&m, 0.0).unwrap().motion;
        assert_eq!(c.antennas, Some([3.05, -3.05]));
        assert_eq!(c.body_yaw, Some(-L.body_yaw));
        assert_eq!(c.duration, L.min_duration);
        let c = L.clamp(&Motion { duration: 1e9, ..Default::default() }, 0.0).unwrap().motion;
        assert_eq!(c.duration, L.max_duration);
        let c = L.clamp(&Motion { duration: f64::NAN, ..Default::default() }, 0.0).unwrap().motion;
        assert_eq!(c.duration, L.min_duration);
    }

    #[test]
    fn non_finite_values_are_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(L.clamp(&head(bad, 0.0, 0.0, 0.0, 0.0, 0.0), 0.0), Err(LimitError::NotFinite("x")));
            assert!(L.clamp(&head(0.0, 0.0, 0.0, 0.0, 0.0, bad), 0.0).is_err());
            assert!(L.clamp(&Motion { antennas: Some([0.0, bad]), ..Default::default() }, 0.0).is_err());
            assert!(L.clamp(&Motion { body_yaw: Some(bad), ..Default::default() }, 0.0).is_err());
        }
        // A non-finite *current* body yaw (a bad reading) falls back to 0, it never widens a limit.
        let h = L.clamp(&head(0.0, 0.0, 0.0, 0.0, 0.0, 3.0), f64::NAN).unwrap().motion.head.unwrap();
        assert!((h.yaw - L.head_yaw_relative).abs() < 1e-12);
    }

    /// No request, however wild, comes out past a limit: a deterministic sweep over extreme and
    /// random values (a small xorshift generator: no dependency, reproducible).
    #[test]
    fn no_request_can_exceed_a_limit() {
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let extremes = [0.0, -0.0, 1e-12, -1e-12, 0.029, 0.031, 1.0, -1.0, 3.2, -3.2, 1e6, -1e6, f64::MAX, f64::MIN];
        let mut pick = |i: u64| -> f64 {
            let r = next();
            if r % 3 == 0 {
                extremes[(r as usize / 3 + i as usize) % extremes.len()]
            } else {
                // uniform in [-8, 8]
                ((r >> 11) as f64 / (1u64 << 53) as f64) * 16.0 - 8.0
            }
        };
        let mut checked = 0;
        for i in 0..20_000u64 {
            let m = Motion {
                head: if i % 5 == 4 { None } else {
                    Some(HeadPose { x: pick(i), y: pick(i), z: pick(i), roll: pick(i), pitch: pick(i), yaw: pick(i) })
                },
                antennas: if i % 3 == 0 { None } else { Some([pick(i), pick(i)]) },
                body_yaw: if i % 2 == 0 { None } else { Some(pick(i)) },
                duration: pick(i),
                interpolation: Interpolation::Linear,
            };
            let current = pick(i);
            let c = L.clamp(&m, current).expect("finite input is always clamped");
            assert!(L.contains(&c.motion, current), "{m:?} -> {:?}", c.motion);
            checked += 1;
        }
        assert_eq!(checked, 20_000);
    }

    #[test]
    fn interpolation_names_match_the_daemon() {
        let i: Interpolation = serde_json::from_str("\"ease\"").unwrap();
        assert_eq!(i.daemon_name(), "ease_in_out");
        let i: Interpolation = serde_json::from_str("\"ease_in_out\"").unwrap();
        assert_eq!(i, Interpolation::Ease);
        assert!(serde_json::from_str::<Interpolation>("\"warp\"").is_err());
    }
}
