//! The whisper model file: where it is, and whether it is a whole ggml whisper model.
//!
//! whisper.cpp aborts or reads garbage on some malformed files, so the file is walked here first
//! (header, mel filters, vocabulary, every tensor's header and size) and a clear error names what
//! is wrong. Any ggml whisper model passes: tiny … large, English-only or multilingual, f32, f16
//! or quantized.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("the whisper model {path} does not exist (looked in: {looked}); run ./rosa setup to make ggml-tiny.en.bin, or set the stt node's `model` parameter to a ggml model file")]
    Missing { path: String, looked: String },
    #[error("cannot read the whisper model {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the whisper model {path} is not a usable ggml whisper model: {why}")]
    Corrupt { path: PathBuf, why: String },
}

/// What the model file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub n_vocab: i32,
    pub n_audio_layer: i32,
    pub n_audio_state: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub tensors: usize,
    pub bytes: u64,
}

impl ModelInfo {
    /// "tiny", "base", … from the encoder's depth (as whisper.cpp names them).
    pub fn size_name(&self) -> &'static str {
        match self.n_audio_layer {
            4 => "tiny",
            6 => "base",
            12 => "small",
            24 => "medium",
            32 => "large",
            _ => "unknown size",
        }
    }
    pub fn english_only(&self) -> bool {
        self.n_vocab < 51865
    }
}

/// Find the model: an absolute path as is; a relative one in `$ROSA_MODELS_DIR`, then
/// `$ROSA_ROOT/.rosa/models`, then `.rosa/models` of the checkout the executable was installed
/// from (`<root>/install/rosa/lib/rosa/stt`), then the working directory.
pub fn resolve(name: &str) -> Result<PathBuf, ModelError> {
    let p = Path::new(name);
    if p.is_absolute() {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(ModelError::Missing { path: name.into(), looked: name.into() }) };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("ROSA_MODELS_DIR") {
        dirs.push(d.into());
    }
    if let Ok(r) = std::env::var("ROSA_ROOT") {
        dirs.push(Path::new(&r).join(".rosa/models"));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(5) {
            dirs.push(root.join(".rosa/models"));
        }
    }
    dirs.push(PathBuf::from("."));
    for d in &dirs {
        let c = d.join(p);
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(ModelError::Missing { path: name.into(), looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ") })
}

/// Bytes per block and elements per block of the ggml tensor types whisper models use.
fn type_size(t: i32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (4, 1),      // f32
        1 => (2, 1),      // f16
        2 => (18, 32),    // q4_0
        3 => (20, 32),    // q4_1
        6 => (22, 32),    // q5_0
        7 => (24, 32),    // q5_1
        8 => (34, 32),    // q8_0
        10 => (84, 256),  // q2_k
        11 => (110, 256), // q3_k
        12 => (144, 256), // q4_k
        13 => (176, 256), // q5_k
        14 => (210, 256), // q6_k
        _ => return None,
    })
}

/// The tensor names whisper.cpp requires for these hyper-parameters.
fn required_tensors(n_audio_layer: i32, n_text_layer: i32) -> Vec<String> {
    let mut v: Vec<String> = ["encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
        "encoder.conv2.bias", "encoder.ln_post.weight", "encoder.ln_post.bias", "decoder.positional_embedding",
        "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let attn = |p: &str| {
        ["query.weight", "query.bias", "key.weight", "value.weight", "value.bias", "out.weight", "out.bias"].map(|s| format!("{p}.{s}"))
    };
    let common = |p: &str| {
        ["attn_ln.weight", "attn_ln.bias", "mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
            .map(|s| format!("{p}.{s}"))
    };
    for i in 0..n_audio_layer {
        let p = format!("encoder.blocks.{i}");
        v.extend(attn(&format!("{p}.attn")));
        v.extend(common(&p));
    }
    for i in 0..n_text_layer {
        let p = format!("decoder.blocks.{i}");
        v.extend(attn(&format!("{p}.attn")));
        v.extend(attn(&format!("{p}.cross_attn")));
        v.extend(common(&p));
        v.extend([format!("{p}.cross_attn_ln.weight"), format!("{p}.cross_attn_ln.bias")]);
    }
    v
}

/// Walk the whole file; a clear error for anything whisper.cpp would trip on.
pub fn check(path: &Path) -> Result<ModelInfo, ModelError> {
    let corrupt = |why: String| ModelError::Corrupt { path: path.to_path_buf(), why };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let bytes = file.metadata().map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?.len();
    let mut r = BufReader::new(file);
    let mut pos: u64 = 0;

    let read_i32 = |r: &mut BufReader<std::fs::File>, pos: &mut u64, what: &str| -> Result<i32, ModelError> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|_| corrupt(format!("the file ends at byte {pos} while reading {what} (truncated?)")))?;
        *pos += 4;
        Ok(i32::from_le_bytes(b))
    };
    let skip = |r: &mut BufReader<std::fs::File>, pos: &mut u64, n: u64, what: &str| -> Result<(), ModelError> {
        if pos.checked_add(n).is_none_or(|end| end > bytes) {
            return Err(corrupt(format!("{what} needs {n} bytes at byte {pos} but the file has {bytes} (truncated?)")));
        }
        r.seek(SeekFrom::Current(n as i64)).map_err(|e| corrupt(e.to_string()))?;
        *pos += n;
        Ok(())
    };

    if read_i32(&mut r, &mut pos, "the magic number")? as u32 != 0x6767_6d6c {
        return Err(corrupt("it does not start with the ggml magic number (a ggml whisper model starts with \"lmgg\")".into()));
    }
    let mut hp = [0i32; 11];
    for (i, name) in ["n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx", "n_text_state",
        "n_text_head", "n_text_layer", "n_mels", "ftype"]
        .iter()
        .enumerate()
    {
        hp[i] = read_i32(&mut r, &mut pos, name)?;
    }
    let [n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, _ftype] = hp;
    let plausible = (51_000..=52_000).contains(&n_vocab)
        && (1..=4096).contains(&n_audio_ctx)
        && (1..=8192).contains(&n_audio_state)
        && (1..=128).contains(&n_audio_head)
        && (1..=128).contains(&n_audio_layer)
        && (1..=4096).contains(&n_text_ctx)
        && (1..=8192).contains(&n_text_state)
        && (1..=128).contains(&n_text_head)
        && (1..=128).contains(&n_text_layer)
        && (n_mels == 80 || n_mels == 128);
    if !plausible {
        return Err(corrupt(format!("implausible hyper-parameters {hp:?}")));
    }

    let filters_mel = read_i32(&mut r, &mut pos, "the mel filters")?;
    let filters_fft = read_i32(&mut r, &mut pos, "the mel filters")?;
    if filters_mel != n_mels || !(1..=4096).contains(&filters_fft) {
        return Err(corrupt(format!("mel filters of {filters_mel}x{filters_fft} for a model with {n_mels} mel bands")));
    }
    skip(&mut r, &mut pos, 4 * filters_mel as u64 * filters_fft as u64, "the mel filters")?;

    let n_tokens = read_i32(&mut r, &mut pos, "the vocabulary")?;
    if !(0..=n_vocab).contains(&n_tokens) {
        return Err(corrupt(format!("a vocabulary of {n_tokens} tokens for n_vocab={n_vocab}")));
    }
    for i in 0..n_tokens {
        let len = read_i32(&mut r, &mut pos, "the vocabulary")?;
        if !(0..=1024).contains(&len) {
            return Err(corrupt(format!("token {i} has length {len}")));
        }
        skip(&mut r, &mut pos, len as u64, "the vocabulary")?;
    }

    let mut seen = std::collections::HashSet::new();
    while pos < bytes {
        let n_dims = read_i32(&mut r, &mut pos, "a tensor header")?;
        let name_len = read_i32(&mut r, &mut pos, "a tensor header")?;
        let ttype = read_i32(&mut r, &mut pos, "a tensor header")?;
        if !(1..=4).contains(&n_dims) || !(1..=256).contains(&name_len) {
            return Err(corrupt(format!("a tensor header at byte {} is malformed (n_dims={n_dims}, name length={name_len})", pos - 12)));
        }
        let mut ne = 1u64;
        for _ in 0..n_dims {
            let d = read_i32(&mut r, &mut pos, "a tensor's shape")?;
            if !(1..=1 << 24).contains(&d) {
                return Err(corrupt(format!("a tensor dimension of {d} at byte {pos}")));
            }
            ne = ne.saturating_mul(d as u64);
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name).map_err(|_| corrupt(format!("the file ends inside a tensor name at byte {pos} (truncated?)")))?;
        pos += name_len as u64;
        let name = String::from_utf8(name).map_err(|_| corrupt(format!("a tensor name at byte {pos} is not text")))?;
        let Some((block_bytes, block)) = type_size(ttype) else {
            return Err(corrupt(format!("tensor {name} has the unknown ggml type {ttype}")));
        };
        skip(&mut r, &mut pos, ne.div_ceil(block).saturating_mul(block_bytes), &format!("tensor {name}"))?;
        seen.insert(name);
    }
    let missing: Vec<String> = required_tensors(n_audio_layer, n_text_layer).into_iter().filter(|t| !seen.contains(t)).collect();
    if let Some(first) = missing.first() {
        return Err(corrupt(format!("{} of the tensors whisper needs are missing, first {first}", missing.len())));
    }
    Ok(ModelInfo { n_vocab, n_audio_layer, n_audio_state, n_text_layer, n_mels, tensors: seen.len(), bytes })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A structurally valid (but numerically meaningless) ggml whisper model with tiny shapes.
    pub(crate) fn tiny_fake_model(path: &Path, drop_tensor: Option<&str>) {
        let mut b: Vec<u8> = Vec::new();
        let i32s = |b: &mut Vec<u8>, v: &[i32]| v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        i32s(&mut b, &[0x6767_6d6c]);
        i32s(&mut b, &[51864, 8, 4, 1, 1, 8, 4, 1, 1, 80, 1]);
        i32s(&mut b, &[80, 2]);
        b.extend(std::iter::repeat(0u8).take(80 * 2 * 4));
        i32s(&mut b, &[2, 1]);
        b.push(b'a');
        i32s(&mut b, &[1]);
        b.push(b'b');
        for name in required_tensors(1, 1) {
            if Some(name.as_str()) == drop_tensor {
                continue;
            }
            i32s(&mut b, &[2, name.len() as i32, 1, 4, 2]);
            b.extend_from_slice(name.as_bytes());
            b.extend(std::iter::repeat(0u8).take(4 * 2 * 2));
        }
        std::fs::write(path, b).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rosa-model-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn a_whole_model_passes() {
        let p = tmp("ok.bin");
        tiny_fake_model(&p, None);
        let info = check(&p).unwrap();
        assert_eq!(info.tensors, required_tensors(1, 1).len());
        assert!(info.english_only());
    }

    #[test]
    fn corrupt_files_get_a_clear_reason() {
        let p = tmp("text.bin");
        std::fs::write(&p, "<html>404 not found</html>").unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("is not a usable ggml whisper model") && e.contains("magic"), "{e}");

        let p = tmp("trunc.bin");
        tiny_fake_model(&p, None);
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 7]).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");

        let p = tmp("short.bin");
        std::fs::write(&p, &full[..30]).unwrap();
        assert!(check(&p).unwrap_err().to_string().contains("truncated"));

        let p = tmp("missing-tensor.bin");
        tiny_fake_model(&p, Some("decoder.ln.bias"));
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("missing, first decoder.ln.bias"), "{e}");

        let p = tmp("empty.bin");
        std::fs::write(&p, b"").unwrap();
        assert!(check(&p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn absurd_sizes_are_errors_not_overflows() {
        let p = tmp("huge.bin");
        tiny_fake_model(&p, None);
        let mut b = std::fs::read(&p).unwrap();
        // The first tensor header follows the header, the filters and the vocabulary: make it
        // claim 4 dimensions of 2^24 elements each.
        let first = 4 + 11 * 4 + 8 + 80 * 2 * 4 + 4 + (4 + 1) * 2;
        b[first..first + 4].copy_from_slice(&4i32.to_le_bytes());
        let name_len = i32::from_le_bytes(b[first + 4..first + 8].try_into().unwrap()) as usize;
        let mut patched = b[..first + 12].to_vec();
        for _ in 0..4 {
            patched.extend_from_slice(&(1i32 << 24).to_le_bytes());
        }
        patched.extend_from_slice(&b[first + 12 + 8..first + 12 + 8 + name_len]);
        std::fs::write(&p, patched).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn a_missing_model_says_where_it_looked_and_what_to_do() {
        let e = resolve("/nonexistent/ggml-x.bin").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ggml-x.bin does not exist") && e.contains("./rosa setup"), "{e}");
        let e = resolve("no-such-model.bin").unwrap_err().to_string();
        assert!(e.contains("looked in:"), "{e}");
    }
}
