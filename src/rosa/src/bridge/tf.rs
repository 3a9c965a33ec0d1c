//! A small TF tree for `lookup_transform`: the latest transform of each child frame (from
//! `tf2_msgs/msg/TFMessage` JSON), composed along the tree between two frames. No r2r here.

use serde_json::Value as Json;
use std::collections::HashMap;

/// A rigid transform: translation (m) and rotation (unit quaternion x, y, z, w).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub t: [f64; 3],
    pub q: [f64; 4],
}

impl Transform {
    pub const IDENTITY: Self = Self { t: [0.0; 3], q: [0.0, 0.0, 0.0, 1.0] };

    fn rotate(&self, v: [f64; 3]) -> [f64; 3] {
        let [x, y, z, w] = self.q;
        // v' = v + 2w(q×v) + 2 q×(q×v)
        let c1 = [y * v[2] - z * v[1], z * v[0] - x * v[2], x * v[1] - y * v[0]];
        let c2 = [y * c1[2] - z * c1[1], z * c1[0] - x * c1[2], x * c1[1] - y * c1[0]];
        [v[0] + 2.0 * (w * c1[0] + c2[0]), v[1] + 2.0 * (w * c1[1] + c2[1]), v[2] + 2.0 * (w * c1[2] + c2[2])]
    }

    /// self ∘ other (apply `other`, then `self`).
    pub fn then(&self, other: &Transform) -> Transform {
        let r = self.rotate(other.t);
        let [ax, ay, az, aw] = self.q;
        let [bx, by, bz, bw] = other.q;
        Transform {
            t: [self.t[0] + r[0], self.t[1] + r[1], self.t[2] + r[2]],
            q: [
                aw * bx + ax * bw + ay * bz - az * by,
                aw * by - ax * bz + ay * bw + az * bx,
                aw * bz + ax * by - ay * bx + az * bw,
                aw * bw - ax * bx - ay * by - az * bz,
            ],
        }
    }

    pub fn inverse(&self) -> Transform {
        let qi = [-self.q[0], -self.q[1], -self.q[2], self.q[3]];
        let inv_rot = Transform { t: [0.0; 3], q: qi };
        let t = inv_rot.rotate(self.t);
        Transform { t: [-t[0], -t[1], -t[2]], q: qi }
    }

    pub fn rpy(&self) -> [f64; 3] {
        let [x, y, z, w] = self.q;
        let roll = (2.0 * (w * x + y * z)).atan2(1.0 - 2.0 * (x * x + y * y));
        let pitch = (2.0 * (w * y - z * x)).clamp(-1.0, 1.0).asin();
        let yaw = (2.0 * (w * z + x * y)).atan2(1.0 - 2.0 * (y * y + z * z));
        [roll, pitch, yaw]
    }

    pub fn describe(&self) -> String {
        let [r, p, y] = self.rpy();
        format!(
            "translation [{:.4}, {:.4}, {:.4}] m, rotation (x, y, z, w) [{:.4}, {:.4}, {:.4}, {:.4}], roll {:.4} pitch {:.4} yaw {:.4} rad",
            self.t[0], self.t[1], self.t[2], self.q[0], self.q[1], self.q[2], self.q[3], r, p, y
        )
    }
}

/// child frame → (parent frame, transform of the child in the parent).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    parents: HashMap<String, (String, Transform)>,
}

fn num(v: &Json, k: &str) -> f64 {
    v.get(k).and_then(Json::as_f64).unwrap_or(0.0)
}

fn frame(s: &str) -> &str {
    s.trim().trim_start_matches('/')
}

impl Tree {
    pub fn add(&mut self, parent: &str, child: &str, t: Transform) {
        let n = (t.q.iter().map(|x| x * x).sum::<f64>()).sqrt();
        let q = if n.is_finite() && n > 1e-9 { t.q.map(|x| x / n) } else { [0.0, 0.0, 0.0, 1.0] };
        if t.t.iter().all(|x| x.is_finite()) && !child.is_empty() && parent != child {
            self.parents.insert(frame(child).to_string(), (frame(parent).to_string(), Transform { t: t.t, q }));
        }
    }

    /// Add every transform of a `tf2_msgs/msg/TFMessage` (JSON).
    pub fn add_message(&mut self, m: &Json) {
        for ts in m.get("transforms").and_then(Json::as_array).into_iter().flatten() {
            let parent = ts.pointer("/header/frame_id").and_then(Json::as_str).unwrap_or_default();
            let child = ts.get("child_frame_id").and_then(Json::as_str).unwrap_or_default();
            let (Some(tr), Some(rot)) = (ts.pointer("/transform/translation"), ts.pointer("/transform/rotation")) else { continue };
            self.add(parent, child, Transform { t: [num(tr, "x"), num(tr, "y"), num(tr, "z")], q: [num(rot, "x"), num(rot, "y"), num(rot, "z"), num(rot, "w")] });
        }
    }

    /// The frame's pose in its tree's root, and the root.
    fn to_root(&self, f: &str) -> (String, Transform) {
        let mut cur = f.to_string();
        let mut acc = Transform::IDENTITY;
        for _ in 0..10_000 {
            match self.parents.get(&cur) {
                Some((p, t)) => {
                    acc = t.then(&acc);
                    cur = p.clone();
                }
                None => break,
            }
        }
        (cur, acc)
    }

    fn known(&self, f: &str) -> bool {
        self.parents.contains_key(f) || self.parents.values().any(|(p, _)| p == f)
    }

    /// The transform of `source` in `target` (maps points in `source` to `target`).
    pub fn lookup(&self, target: &str, source: &str) -> Result<Transform, String> {
        let (t, s) = (frame(target), frame(source));
        if t == s && !t.is_empty() {
            return Ok(Transform::IDENTITY);
        }
        for f in [t, s] {
            if !self.known(f) {
                return Err(format!("frame `{f}` is unknown"));
            }
        }
        let (rt, tt) = self.to_root(t);
        let (rs, ts) = self.to_root(s);
        if rt != rs {
            return Err(format!("frames `{t}` and `{s}` are not connected (their roots: `{rt}`, `{rs}`)"));
        }
        Ok(tt.inverse().then(&ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: [f64; 3], b: [f64; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn chains_compose_and_invert() {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let mut tree = Tree::default();
        // odom -> base_link: 1 m forward, turned 90° left; base_link -> laser: 0.2 m forward.
        tree.add_message(&json!({"transforms": [
            {"header": {"frame_id": "odom"}, "child_frame_id": "base_link",
             "transform": {"translation": {"x": 1.0, "y": 0.0, "z": 0.0}, "rotation": {"x": 0.0, "y": 0.0, "z": s, "w": s}}},
            {"header": {"frame_id": "base_link"}, "child_frame_id": "laser",
             "transform": {"translation": {"x": 0.2, "y": 0.0, "z": 0.1}, "rotation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}}
        ]}));
        let t = tree.lookup("odom", "laser").unwrap();
        assert!(close(t.t, [1.0, 0.2, 0.1]), "{:?}", t.t);
        assert!((t.rpy()[2] - std::f64::consts::FRAC_PI_2).abs() < 1e-9);
        let back = tree.lookup("laser", "odom").unwrap();
        assert!(close(back.then(&t).t, [0.0; 3]));
        assert_eq!(tree.lookup("odom", "odom").unwrap(), Transform::IDENTITY);
        assert!(tree.lookup("odom", "camera").unwrap_err().contains("unknown"));
        tree.add("map2", "other", Transform::IDENTITY);
        assert!(tree.lookup("odom", "other").unwrap_err().contains("not connected"));
        // A leading slash is ignored (tf2 frames have none).
        assert!(tree.lookup("/odom", "laser").is_ok());
    }
}
