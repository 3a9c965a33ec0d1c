//! Forward kinematics of the daemon's URDF, for `/joint_states` and `/tf` (no r2r here).
//!
//! The Reachy Mini's head sits on a Stewart platform: a closed chain that URDF can only describe
//! as a tree with "passive" joints. The daemon streams the 7 actuated joints (`yaw_body`,
//! `stewart_1…6`), the antennas and the head pose, not the passive joints. So the
//! transforms are computed from the URDF tree with the joints we know, and the head (`xl_330`, the
//! link everything on the head hangs from) is placed from the streamed head pose instead of the
//! passive chain. The body, head, camera and antennas are therefore exact; the linkage rods (drawn with
//! their passive joints at 0) are only indicative.

use std::collections::HashMap;

pub type Mat = [[f64; 4]; 4];

pub const IDENTITY: Mat = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];

/// The daemon's head pose is that of the URDF `head` frame relative to the foot, lowered by this
/// height (reachy-mini `kinematics`: `head_z_offset = 0.177`).
pub const HEAD_Z_OFFSET: f64 = 0.177;

#[derive(Debug, Clone, PartialEq)]
pub struct Joint {
    pub name: String,
    pub kind: String,
    pub parent: String,
    pub child: String,
    pub origin: Mat,
    pub axis: [f64; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Urdf {
    pub root: String,
    /// In tree order (every joint after its parent's joint).
    pub joints: Vec<Joint>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrdfError {
    #[error("URDF is not valid XML: {0}")]
    Xml(String),
    #[error("URDF joint `{0}`: {1}")]
    Joint(String, String),
    #[error("URDF has no root link")]
    NoRoot,
}

fn triple(s: Option<&str>, default: [f64; 3]) -> Result<[f64; 3], String> {
    let Some(s) = s else { return Ok(default) };
    let v: Vec<f64> = s.split_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(|e| format!("{e}: `{s}`"))?;
    if v.len() != 3 || v.iter().any(|x| !x.is_finite()) {
        return Err(format!("expected 3 numbers, got `{s}`"));
    }
    Ok([v[0], v[1], v[2]])
}

/// Rotation Rz(y)·Ry(p)·Rx(r) and translation t.
pub fn from_xyz_rpy(t: [f64; 3], rpy: [f64; 3]) -> Mat {
    let (sr, cr) = rpy[0].sin_cos();
    let (sp, cp) = rpy[1].sin_cos();
    let (sy, cy) = rpy[2].sin_cos();
    [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr, t[0]],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr, t[1]],
        [-sp, cp * sr, cp * cr, t[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

pub fn mul(a: &Mat, b: &Mat) -> Mat {
    let mut m = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            m[i][j] = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// Inverse of a rigid transform.
pub fn inverse(a: &Mat) -> Mat {
    let mut m = IDENTITY;
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = a[j][i];
        }
    }
    for i in 0..3 {
        m[i][3] = -(0..3).map(|k| m[i][k] * a[k][3]).sum::<f64>();
    }
    m
}

/// Rotation of `angle` about the unit `axis` (Rodrigues).
fn axis_angle(axis: [f64; 3], angle: f64) -> Mat {
    let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
    if n < 1e-12 {
        return IDENTITY;
    }
    let [x, y, z] = [axis[0] / n, axis[1] / n, axis[2] / n];
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y, 0.0],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x, 0.0],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// A rotation matrix as a quaternion (x, y, z, w).
pub fn quaternion(m: &Mat) -> [f64; 4] {
    let tr = m[0][0] + m[1][1] + m[2][2];
    let q = if tr > 0.0 {
        let s = (tr + 1.0).sqrt() * 2.0;
        [(m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s, 0.25 * s]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt() * 2.0;
        [0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s, (m[2][1] - m[1][2]) / s]
    } else if m[1][1] > m[2][2] {
        let s = (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt() * 2.0;
        [(m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s, (m[0][2] - m[2][0]) / s]
    } else {
        let s = (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt() * 2.0;
        [(m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s, (m[1][0] - m[0][1]) / s]
    };
    let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 1e-12 && n.is_finite() {
        [q[0] / n, q[1] / n, q[2] / n, q[3] / n]
    } else {
        [0.0, 0.0, 0.0, 1.0]
    }
}

impl Urdf {
    pub fn parse(text: &str) -> Result<Self, UrdfError> {
        let doc = roxmltree::Document::parse(text).map_err(|e| UrdfError::Xml(e.to_string()))?;
        let mut joints = Vec::new();
        for j in doc.root_element().children().filter(|n| n.has_tag_name("joint")) {
            let name = j.attribute("name").unwrap_or_default().to_string();
            let child_attr = |tag: &str| {
                j.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.attribute("link")).map(str::to_string)
            };
            let (Some(parent), Some(child)) = (child_attr("parent"), child_attr("child")) else {
                return Err(UrdfError::Joint(name, "no parent or child link".into()));
            };
            let origin = j.children().find(|n| n.has_tag_name("origin"));
            let xyz = triple(origin.and_then(|o| o.attribute("xyz")), [0.0; 3]).map_err(|e| UrdfError::Joint(name.clone(), e))?;
            let rpy = triple(origin.and_then(|o| o.attribute("rpy")), [0.0; 3]).map_err(|e| UrdfError::Joint(name.clone(), e))?;
            let axis = triple(j.children().find(|n| n.has_tag_name("axis")).and_then(|a| a.attribute("xyz")), [1.0, 0.0, 0.0])
                .map_err(|e| UrdfError::Joint(name.clone(), e))?;
            joints.push(Joint {
                name,
                kind: j.attribute("type").unwrap_or("fixed").to_string(),
                parent,
                child,
                origin: from_xyz_rpy(xyz, rpy),
                axis,
            });
        }
        let children: std::collections::HashSet<&str> = joints.iter().map(|j| j.child.as_str()).collect();
        let root = joints
            .iter()
            .map(|j| j.parent.as_str())
            .find(|p| !children.contains(p))
            .ok_or(UrdfError::NoRoot)?
            .to_string();
        // Order the joints from the root down.
        let mut ordered = Vec::with_capacity(joints.len());
        let mut frontier = vec![root.clone()];
        let mut left = joints;
        while let Some(link) = frontier.pop() {
            let (take, keep): (Vec<Joint>, Vec<Joint>) = left.into_iter().partition(|j| j.parent == link);
            left = keep;
            for j in take {
                frontier.push(j.child.clone());
                ordered.push(j);
            }
        }
        Ok(Self { root, joints: ordered })
    }

    /// The movable joints (what `/joint_states` names).
    pub fn movable(&self) -> Vec<&str> {
        self.joints.iter().filter(|j| j.kind != "fixed").map(|j| j.name.as_str()).collect()
    }

    /// Every joint's parent→child transform for the given joint positions (missing ones are 0).
    /// With `head` (the head pose as the daemon streams it), the joint whose child is the link that
    /// carries the `head` frame is re-solved so the head lands on it.
    pub fn transforms(&self, positions: &HashMap<String, f64>, head: Option<&Mat>) -> Vec<(String, String, Mat)> {
        let mut world: HashMap<&str, Mat> = HashMap::new();
        world.insert(self.root.as_str(), IDENTITY);
        // The link the head frame hangs from (`xl_330`) and the fixed head offset.
        let head_link = head.and_then(|_| {
            let hj = self.joints.iter().find(|j| j.child == "head" && j.kind == "fixed")?;
            Some((hj.parent.as_str(), hj.origin))
        });
        let mut out = Vec::with_capacity(self.joints.len());
        for j in &self.joints {
            let parent_world = world.get(j.parent.as_str()).copied().unwrap_or(IDENTITY);
            let mut local = j.origin;
            if j.kind != "fixed" {
                let q = positions.get(&j.name).copied().filter(|v| v.is_finite()).unwrap_or(0.0);
                let motion = if j.kind == "prismatic" {
                    let mut m = IDENTITY;
                    for (i, a) in j.axis.iter().enumerate() {
                        m[i][3] = a * q;
                    }
                    m
                } else {
                    axis_angle(j.axis, q)
                };
                local = mul(&j.origin, &motion);
            }
            if let (Some((link, head_offset)), Some(h)) = (head_link, head) {
                if j.child == link {
                    // world(head) = h lifted by the offset; world(link) = world(head)·offset⁻¹.
                    let mut foot_head = *h;
                    foot_head[2][3] += HEAD_Z_OFFSET;
                    let link_world = mul(&foot_head, &inverse(&head_offset));
                    local = mul(&inverse(&parent_world), &link_world);
                }
            }
            world.insert(j.child.as_str(), mul(&parent_world, &local));
            out.push((j.parent.clone(), j.child.clone(), local));
        }
        out
    }

    /// World (root) transform of a link, from [`Self::transforms`]' output.
    pub fn world_of(&self, transforms: &[(String, String, Mat)], link: &str) -> Option<Mat> {
        let by_child: HashMap<&str, (&str, &Mat)> = transforms.iter().map(|(p, c, m)| (c.as_str(), (p.as_str(), m))).collect();
        let mut chain = Vec::new();
        let mut cur = link;
        while cur != self.root {
            let (p, m) = by_child.get(cur)?;
            chain.push(**m);
            cur = p;
        }
        Some(chain.iter().rev().fold(IDENTITY, |acc, m| mul(&acc, m)))
    }
}

/// The URDF as published on `/robot_description`: its meshes (`package://assets/<file>.stl`, a
/// package no ROS install has) point at the daemon, which serves them at
/// `/api/kinematics/stl/<file>` (rviz's resource retriever fetches http URLs).
pub fn with_daemon_meshes(urdf: &str, daemon_url: &str) -> String {
    urdf.replace("package://assets/", &format!("{}/api/kinematics/stl/", daemon_url.trim_end_matches('/')))
}

/// The joint names and positions for `/joint_states`: the 7 actuated head joints and the antennas
/// (names as in the daemon's URDF). The passive joints are not streamed by the daemon.
pub fn joint_positions(head_joints: &[f64], antennas: [f64; 2]) -> Vec<(String, f64)> {
    let names = ["yaw_body", "stewart_1", "stewart_2", "stewart_3", "stewart_4", "stewart_5", "stewart_6"];
    let mut out: Vec<(String, f64)> = names.iter().zip(head_joints).map(|(n, v)| (n.to_string(), *v)).collect();
    out.push(("right_antenna".into(), antennas[0]));
    out.push(("left_antenna".into(), antennas[1]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URDF: &str = r#"<robot name="t">
      <link name="foot"/><link name="body"/><link name="xl_330"/><link name="head"/><link name="ant"/>
      <joint name="yaw_body" type="revolute"><origin xyz="0 0 0.1" rpy="0 0 0"/><parent link="foot"/><child link="body"/><axis xyz="0 0 1"/></joint>
      <joint name="passive" type="revolute"><origin xyz="0 0 0.05"/><parent link="body"/><child link="xl_330"/><axis xyz="1 0 0"/></joint>
      <joint name="head_frame" type="fixed"><origin xyz="0 0 0.027" rpy="0 0 1.5707963267948966"/><parent link="xl_330"/><child link="head"/></joint>
      <joint name="right_antenna" type="revolute"><origin xyz="0.01 0 0"/><parent link="xl_330"/><child link="ant"/><axis xyz="0 0 1"/></joint>
    </robot>"#;

    fn close(a: &Mat, b: &Mat) -> bool {
        a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn parses_the_tree_in_order() {
        let u = Urdf::parse(URDF).unwrap();
        assert_eq!(u.root, "foot");
        assert_eq!(u.joints[0].name, "yaw_body");
        assert_eq!(u.movable(), vec!["yaw_body", "passive", "right_antenna"]);
    }

    #[test]
    fn joint_positions_rotate_their_children() {
        let u = Urdf::parse(URDF).unwrap();
        let pos = HashMap::from([("yaw_body".to_string(), std::f64::consts::FRAC_PI_2)]);
        let t = u.transforms(&pos, None);
        let body = u.world_of(&t, "body").unwrap();
        assert!(close(&body, &from_xyz_rpy([0.0, 0.0, 0.1], [0.0, 0.0, std::f64::consts::FRAC_PI_2])));
    }

    #[test]
    fn the_head_lands_on_the_streamed_pose() {
        let u = Urdf::parse(URDF).unwrap();
        let pose = from_xyz_rpy([0.01, -0.02, 0.005], [0.1, 0.2, 0.3]);
        let pos = HashMap::from([("yaw_body".to_string(), 0.7)]);
        let t = u.transforms(&pos, Some(&pose));
        let head = u.world_of(&t, "head").unwrap();
        let mut want = pose;
        want[2][3] += HEAD_Z_OFFSET;
        assert!(close(&head, &want), "{head:?}");
    }

    #[test]
    fn rigid_math_round_trips() {
        let a = from_xyz_rpy([0.1, 0.2, 0.3], [0.4, -0.5, 0.6]);
        assert!(close(&mul(&a, &inverse(&a)), &IDENTITY));
        let q = quaternion(&from_xyz_rpy([0.0; 3], [0.0, 0.0, std::f64::consts::FRAC_PI_2]));
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((q[2] - s).abs() < 1e-9 && (q[3] - s).abs() < 1e-9, "{q:?}");
    }

    #[test]
    fn bad_urdf_is_an_error_not_a_panic() {
        assert!(Urdf::parse("<robot").is_err());
        assert!(Urdf::parse(r#"<robot><joint name="j"><parent link="a"/></joint></robot>"#).is_err());
        assert!(Urdf::parse(r#"<robot><joint name="j"><origin xyz="1 2"/><parent link="a"/><child link="b"/></joint></robot>"#).is_err());
    }

    #[test]
    fn meshes_point_at_the_daemon() {
        let u = r#"<mesh filename="package://assets/head.stl"/>"#;
        assert_eq!(with_daemon_meshes(u, "http://127.0.0.1:8000/"), r#"<mesh filename="http://127.0.0.1:8000/api/kinematics/stl/head.stl"/>"#);
    }

    #[test]
    fn joint_state_names_follow_the_urdf() {
        let j = joint_positions(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.1, 0.2]);
        assert_eq!(j.len(), 9);
        assert_eq!(j[0].0, "yaw_body");
        assert_eq!(j[6], ("stewart_6".to_string(), 6.0));
        assert_eq!(j[8], ("left_antenna".to_string(), 0.2));
    }
}
