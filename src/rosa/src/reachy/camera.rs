//! Pictures: frames from a ROS image topic (delivered by the node through a watch channel) or a
//! V4L2 device (the Reachy Mini Lite's camera is a USB camera on the host), saved as JPEG.
//! No r2r here.

use crate::data_dir::DataDir;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CameraError {
    #[error("no camera is configured (set the `camera.source` parameter to an image topic or a V4L2 device such as /dev/video0)")]
    NotConfigured,
    #[error("no image received on {topic} yet (is a camera publishing there?)")]
    NoFrame { topic: String },
    #[error("the last image on {topic} is {age:.1} s old (the camera stopped publishing?)")]
    Stale { topic: String, age: f64 },
    #[error("camera {device}: {message}")]
    Device { device: String, message: String },
    #[error("unsupported image encoding `{0}` (supported: rgb8, bgr8, rgba8, bgra8, mono8, jpeg)")]
    Encoding(String),
    #[error("cannot save the picture: {0}")]
    Save(String),
}

/// One frame: already JPEG (a `CompressedImage`, an MJPEG camera) or raw pixels (`sensor_msgs/Image`).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Jpeg(Vec<u8>),
    Raw { width: u32, height: u32, encoding: String, step: u32, data: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Stamped {
    pub frame: Frame,
    pub received: SystemTime,
}

/// Where pictures come from.
#[derive(Clone)]
pub enum Camera {
    None,
    Topic { topic: String, frames: watch::Receiver<Option<Stamped>>, max_age: Duration },
    Device { path: String },
}

impl Camera {
    pub async fn grab(&self) -> Result<Frame, CameraError> {
        match self {
            Camera::None => Err(CameraError::NotConfigured),
            Camera::Topic { topic, frames, max_age } => {
                let latest = frames.borrow().clone();
                let Some(s) = latest else { return Err(CameraError::NoFrame { topic: topic.clone() }) };
                let age = SystemTime::now().duration_since(s.received).unwrap_or_default();
                if age > *max_age {
                    return Err(CameraError::Stale { topic: topic.clone(), age: age.as_secs_f64() });
                }
                Ok(s.frame)
            }
            Camera::Device { path } => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || grab_v4l2(&p))
                    .await
                    .map_err(|e| CameraError::Device { device: path.clone(), message: e.to_string() })?
            }
        }
    }
}

/// Capture one frame from a V4L2 device, MJPEG if the camera offers it, else YUYV.
fn grab_v4l2(path: &str) -> Result<Frame, CameraError> {
    use v4l::buffer::Type;
    use v4l::io::traits::CaptureStream;
    use v4l::video::Capture;
    let err = |m: String| CameraError::Device { device: path.to_string(), message: m };
    let dev = v4l::Device::with_path(path).map_err(|e| err(e.to_string()))?;
    let mut fmt = dev.format().map_err(|e| err(format!("cannot read its format: {e}")))?;
    fmt.fourcc = v4l::FourCC::new(b"MJPG");
    let fmt = match dev.set_format(&fmt) {
        Ok(f) => f,
        Err(_) => {
            let mut f = dev.format().map_err(|e| err(e.to_string()))?;
            f.fourcc = v4l::FourCC::new(b"YUYV");
            dev.set_format(&f).map_err(|e| err(format!("neither MJPG nor YUYV: {e}")))?
        }
    };
    let mut stream = v4l::prelude::MmapStream::with_buffers(&dev, Type::VideoCapture, 4).map_err(|e| err(e.to_string()))?;
    // The first frames of a USB camera are often dark (auto exposure): keep the fourth.
    let mut last = Vec::new();
    for _ in 0..4 {
        let (buf, meta) = stream.next().map_err(|e| err(format!("capture failed: {e}")))?;
        last = buf[..(meta.bytesused as usize).min(buf.len())].to_vec();
    }
    match &fmt.fourcc.repr {
        b"MJPG" => Ok(Frame::Jpeg(last)),
        b"YUYV" => Ok(Frame::Raw { width: fmt.width, height: fmt.height, encoding: "yuyv".into(), step: fmt.stride, data: last }),
        other => Err(err(format!("unexpected pixel format {}", String::from_utf8_lossy(other)))),
    }
}

/// A raw frame scaled down (nearest neighbour) so that its longer side is at most `max_side`
/// pixels; JPEG frames, smaller frames and frames that do not add up are returned as they are.
pub fn downscale(frame: &Frame, max_side: u32) -> Frame {
    let Frame::Raw { width, height, encoding, step, data } = frame else { return frame.clone() };
    let bpp = match encoding.as_str() {
        "rgb8" | "bgr8" => 3,
        "rgba8" | "bgra8" => 4,
        "mono8" => 1,
        _ => return frame.clone(),
    };
    let (w, h, max_side) = (*width as usize, *height as usize, max_side.max(1) as usize);
    let step = if *step == 0 { w * bpp } else { *step as usize };
    if w.max(h) <= max_side || w == 0 || h == 0 || step < w * bpp || data.len() < step * (h - 1) + w * bpp {
        return frame.clone();
    }
    let (nw, nh) = if w >= h { (max_side, (h * max_side / w).max(1)) } else { ((w * max_side / h).max(1), max_side) };
    let mut out = Vec::with_capacity(nw * nh * bpp);
    for y in 0..nh {
        let sy = y * h / nh;
        for x in 0..nw {
            let sx = x * w / nw;
            let i = sy * step + sx * bpp;
            out.extend_from_slice(&data[i..i + bpp]);
        }
    }
    Frame::Raw { width: nw as u32, height: nh as u32, encoding: encoding.clone(), step: (nw * bpp) as u32, data: out }
}

/// The frame as JPEG bytes.
pub fn to_jpeg(frame: &Frame) -> Result<Vec<u8>, CameraError> {
    let (width, height, encoding, step, data) = match frame {
        Frame::Jpeg(b) => return Ok(b.clone()),
        Frame::Raw { width, height, encoding, step, data } => (*width as usize, *height as usize, encoding.as_str(), *step as usize, data),
    };
    if width == 0 || height == 0 || width > 16_384 || height > 16_384 {
        return Err(CameraError::Encoding(format!("{encoding} {width}x{height}")));
    }
    let (bpp, kind): (usize, Option<jpeg_encoder::ColorType>) = match encoding {
        "rgb8" => (3, Some(jpeg_encoder::ColorType::Rgb)),
        "bgr8" => (3, Some(jpeg_encoder::ColorType::Bgr)),
        "rgba8" => (4, Some(jpeg_encoder::ColorType::Rgba)),
        "bgra8" => (4, Some(jpeg_encoder::ColorType::Bgra)),
        "mono8" => (1, Some(jpeg_encoder::ColorType::Luma)),
        "yuyv" | "yuv422_yuy2" => (2, None),
        other => return Err(CameraError::Encoding(other.to_string())),
    };
    let step = if step == 0 { width * bpp } else { step };
    if step < width * bpp || data.len() < step * (height - 1) + width * bpp {
        return Err(CameraError::Encoding(format!("{encoding} {width}x{height} with {} bytes (step {step})", data.len())));
    }
    // Rows without padding.
    let mut packed = Vec::with_capacity(width * height * 3);
    for row in 0..height {
        let r = &data[row * step..row * step + width * bpp];
        if kind.is_some() {
            packed.extend_from_slice(r);
        } else {
            for px in r.chunks_exact(4) {
                let (y0, u, y1, v) = (px[0] as f32, px[1] as f32 - 128.0, px[2] as f32, px[3] as f32 - 128.0);
                for y in [y0, y1] {
                    packed.push((y + 1.402 * v).clamp(0.0, 255.0) as u8);
                    packed.push((y - 0.344 * u - 0.714 * v).clamp(0.0, 255.0) as u8);
                    packed.push((y + 1.772 * u).clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.encode(&packed, width as u16, height as u16, kind.unwrap_or(jpeg_encoder::ColorType::Rgb))
        .map_err(|e| CameraError::Encoding(e.to_string()))?;
    Ok(out)
}

/// The largest picture saved (a JPEG of the 16384×16384 [`to_jpeg`] accepts is far below it).
pub const MAX_PICTURE_BYTES: u64 = 64 << 20;

/// Encode `frame` as JPEG (off the async threads) and save it as
/// `<data_dir>/pictures/picture-<time>.jpg`; returns the path.
pub async fn save(data: &DataDir, frame: Frame) -> Result<PathBuf, CameraError> {
    let jpeg = tokio::task::spawn_blocking(move || to_jpeg(&frame))
        .await
        .map_err(|e| CameraError::Encoding(format!("the encoder failed: {e}")))??;
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let name = format!("picture-{}-{:03}.jpg", t.as_secs(), t.subsec_millis());
    data.write("pictures", &name, jpeg, MAX_PICTURE_BYTES).await.map_err(|e| CameraError::Save(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_become_jpeg() {
        for (enc, bpp) in [("rgb8", 3), ("bgr8", 3), ("mono8", 1), ("rgba8", 4), ("yuyv", 2)] {
            let f = Frame::Raw { width: 8, height: 4, encoding: enc.into(), step: 8 * bpp + 2, data: vec![128; (8 * bpp as usize + 2) * 4] };
            let j = to_jpeg(&f).unwrap();
            assert_eq!(&j[..2], &[0xFF, 0xD8], "{enc}");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let short = Frame::Raw { width: 8, height: 4, encoding: "rgb8".into(), step: 0, data: vec![0; 10] };
        assert!(to_jpeg(&short).is_err());
        let odd = Frame::Raw { width: 8, height: 4, encoding: "16UC1".into(), step: 0, data: vec![0; 64] };
        assert!(matches!(to_jpeg(&odd), Err(CameraError::Encoding(_))));
        let empty = Frame::Raw { width: 0, height: 0, encoding: "rgb8".into(), step: 0, data: vec![] };
        assert!(to_jpeg(&empty).is_err());
    }

    #[tokio::test]
    async fn topic_camera_reports_missing_and_stale_frames() {
        let (tx, rx) = watch::channel(None);
        let cam = Camera::Topic { topic: "/cam".into(), frames: rx, max_age: Duration::from_secs(2) };
        assert!(matches!(cam.grab().await, Err(CameraError::NoFrame { .. })));
        tx.send_replace(Some(Stamped { frame: Frame::Jpeg(vec![1]), received: SystemTime::now() - Duration::from_secs(5) }));
        assert!(matches!(cam.grab().await, Err(CameraError::Stale { .. })));
        tx.send_replace(Some(Stamped { frame: Frame::Jpeg(vec![1]), received: SystemTime::now() }));
        assert_eq!(cam.grab().await.unwrap(), Frame::Jpeg(vec![1]));
        assert!(matches!(Camera::None.grab().await, Err(CameraError::NotConfigured)));
        let e = Camera::Device { path: "/dev/does-not-exist".into() }.grab().await.unwrap_err();
        assert!(e.to_string().contains("/dev/does-not-exist"), "{e}");
    }
}
