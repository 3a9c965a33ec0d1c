#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (faster-whisper format) to a whisper.cpp ggml model.

    python tools/ct2_to_ggml.py MODEL_DIR OUT.bin

MODEL_DIR holds `model.bin` (CTranslate2 binary, any version >= 4), `vocabulary.txt` and
`config.json`. Only numpy is needed. What the conversion does:

- reads every variable of model.bin (CTranslate2's `WhisperSpec`: float16/float32 tensors, scalars);
- renames them to the names of OpenAI's checkpoint, which whisper.cpp loads;
- splits the fused attention projections (self-attention QKV, cross-attention KV) and drops the
  key bias, which Whisper does not have (CTranslate2 stores zeros there: checked);
- writes the tokenizer's bytes (GPT-2 byte-level BPE: vocabulary.txt holds the printable form of
  each token) for the ordinary tokens; whisper.cpp names the special tokens itself;
- computes the 80-band Slaney mel filterbank Whisper uses (librosa.filters.mel(sr=16000,
  n_fft=400, n_mels=80), which is what whisper's mel_filters.npz holds).

The output is the format of whisper.cpp's `models/convert-pt-to-ggml.py` with f16 weights.
"""

import argparse
import os
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SAMPLE_RATE, N_FFT = 16000, 400


class ConversionError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# CTranslate2 model.bin
# ------------------------------------------------------------------------------------------------
def read_ct2(path):
    """Variables of a CTranslate2 model.bin as {name: ndarray} (aliases resolved)."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise ConversionError(f"{path}: truncated at byte {pos}")
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return vals if len(vals) > 1 else vals[0]

    def string():
        nonlocal pos
        n = take("H")
        s = data[pos:pos + n].split(b"\0", 1)[0].decode("utf-8")
        pos += n
        return s

    version = take("i")
    if not 4 <= version <= 6:
        raise ConversionError(f"{path}: CTranslate2 binary version {version} is not supported (4..6 are)")
    spec = string()
    take("i")  # spec revision
    if spec != "WhisperSpec":
        raise ConversionError(f"{path}: a {spec!r} model, not a Whisper model")
    out = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        dtype = take("B")
        nbytes = take("I")
        if dtype not in CT2_DTYPES:
            raise ConversionError(f"{path}: variable {name} has an unsupported type id {dtype} (quantized model?)")
        if pos + nbytes > len(data):
            raise ConversionError(f"{path}: truncated in variable {name}")
        arr = np.frombuffer(data, dtype=CT2_DTYPES[dtype], count=nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize,
                            offset=pos)
        pos += nbytes
        out[name] = arr.reshape(shape) if shape else arr.reshape(())
    for _ in range(take("I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


# ------------------------------------------------------------------------------------------------
# Tokenizer and mel filters
# ------------------------------------------------------------------------------------------------
def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode: printable character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(vocabulary_txt):
    """The bytes of the ordinary tokens (everything before <|endoftext|>), in id order."""
    words = Path(vocabulary_txt).read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    dec = byte_decoder()
    out = []
    for i, w in enumerate(words):
        if w.startswith("<|") and w.endswith("|>"):
            break
        try:
            out.append(bytes(dec[c] for c in w))
        except KeyError as e:
            raise ConversionError(f"{vocabulary_txt}: token {i} ({w!r}) is not byte-level BPE: {e}") from None
    return out, len(words)


def hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels, sr=SAMPLE_RATE, n_fft=N_FFT):
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (Slaney scale and area norm)."""
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------------------
def count_layers(v, prefix):
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def split_rows(w, parts):
    n = w.shape[0] // parts
    if n * parts != w.shape[0]:
        raise ConversionError(f"cannot split {w.shape} into {parts}")
    return [w[i * n:(i + 1) * n] for i in range(parts)]


def check_zero_key_bias(b, where):
    if np.abs(b.astype(np.float32)).max() > 1e-4:
        raise ConversionError(f"{where}: the key bias is not zero; this is not a Whisper model as OpenAI trained it")


def tensors(v):
    """(name, array) pairs with OpenAI's checkpoint names, in whisper.cpp's order."""
    out = []

    def ln(dst, src):
        out.append((f"{dst}.weight", v[f"{src}/gamma"]))
        out.append((f"{dst}.bias", v[f"{src}/beta"]))

    def lin(dst, src, bias=True):
        out.append((f"{dst}.weight", v[f"{src}/weight"]))
        if bias:
            out.append((f"{dst}.bias", v[f"{src}/bias"]))

    def self_attn(dst, src):
        q, k, val = split_rows(v[f"{src}/linear_0/weight"], 3)
        qb, kb, vb = split_rows(v[f"{src}/linear_0/bias"], 3)
        check_zero_key_bias(kb, src)
        out.extend([(f"{dst}.query.weight", q), (f"{dst}.query.bias", qb), (f"{dst}.key.weight", k),
                    (f"{dst}.value.weight", val), (f"{dst}.value.bias", vb)])
        lin(f"{dst}.out", f"{src}/linear_1")

    def cross_attn(dst, src):
        lin(f"{dst}.query", f"{src}/linear_0")
        k, val = split_rows(v[f"{src}/linear_1/weight"], 2)
        kb, vb = split_rows(v[f"{src}/linear_1/bias"], 2)
        check_zero_key_bias(kb, src)
        out.extend([(f"{dst}.key.weight", k), (f"{dst}.value.weight", val), (f"{dst}.value.bias", vb)])
        lin(f"{dst}.out", f"{src}/linear_2")

    out.append(("encoder.positional_embedding", v["encoder/position_encodings/encodings"]))
    for c in ("conv1", "conv2"):
        out.append((f"encoder.{c}.weight", v[f"encoder/{c}/weight"]))
        out.append((f"encoder.{c}.bias", v[f"encoder/{c}/bias"].reshape(-1, 1)))
    for i in range(count_layers(v, "encoder")):
        s, d = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        ln(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        self_attn(f"{d}.attn", f"{s}/self_attention")
        ln(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
        lin(f"{d}.mlp.0", f"{s}/ffn/linear_0")
        lin(f"{d}.mlp.2", f"{s}/ffn/linear_1")
    ln("encoder.ln_post", "encoder/layer_norm")

    out.append(("decoder.positional_embedding", v["decoder/position_encodings/encodings"]))
    out.append(("decoder.token_embedding.weight", v["decoder/embeddings/weight"]))
    for i in range(count_layers(v, "decoder")):
        s, d = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        ln(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        self_attn(f"{d}.attn", f"{s}/self_attention")
        ln(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
        cross_attn(f"{d}.cross_attn", f"{s}/attention")
        ln(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
        lin(f"{d}.mlp.0", f"{s}/ffn/linear_0")
        lin(f"{d}.mlp.2", f"{s}/ffn/linear_1")
    ln("decoder.ln", "decoder/layer_norm")
    return out


def hparams(v, n_vocab):
    """whisper.cpp's header, in its order."""
    enc_layers, dec_layers = count_layers(v, "encoder"), count_layers(v, "decoder")
    n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
    n_text_ctx, n_text_state = v["decoder/position_encodings/encodings"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    if enc_layers == 0 or dec_layers == 0:
        raise ConversionError("no encoder or decoder layers found")
    return [n_vocab, n_audio_ctx, n_audio_state, int(v["encoder/num_heads"]), enc_layers,
            n_text_ctx, n_text_state, int(v["decoder/num_heads"]), dec_layers, n_mels, 1]


def convert(model_dir, out_path):
    model_dir = Path(model_dir)
    for f in ("model.bin", "vocabulary.txt"):
        if not (model_dir / f).is_file():
            raise ConversionError(f"{model_dir / f} is missing")
    v = read_ct2(model_dir / "model.bin")
    tokens, n_vocab = token_bytes(model_dir / "vocabulary.txt")
    if v["decoder/embeddings/weight"].shape[0] != n_vocab:
        raise ConversionError(f"vocabulary.txt has {n_vocab} tokens, the embeddings {v['decoder/embeddings/weight'].shape[0]}")
    hp = hparams(v, n_vocab)
    filters = mel_filters(hp[9])

    tmp = Path(str(out_path) + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<i", GGML_MAGIC))
        f.write(struct.pack("<" + "i" * len(hp), *hp))
        f.write(struct.pack("<ii", *filters.shape))
        f.write(filters.tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for t in tokens:
            f.write(struct.pack("<i", len(t)))
            f.write(t)
        for name, data in tensors(v):
            # f16 for matrices, f32 for vectors, conv biases and positional embeddings (as
            # convert-pt-to-ggml.py does; whisper.cpp expects exactly these types).
            f32 = data.ndim < 2 or name in ("encoder.conv1.bias", "encoder.conv2.bias",
                                            "encoder.positional_embedding", "decoder.positional_embedding")
            data = np.ascontiguousarray(data.astype(np.float32 if f32 else np.float16))
            key = name.encode()
            f.write(struct.pack("<iii", data.ndim, len(key), 0 if f32 else 1))
            f.write(struct.pack("<" + "i" * data.ndim, *reversed(data.shape)))
            f.write(key)
            f.write(data.tobytes())
    os.replace(tmp, out_path)
    return hp


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="directory with model.bin, vocabulary.txt (CTranslate2 Whisper)")
    p.add_argument("out", help="the ggml file to write")
    args = p.parse_args()
    try:
        hp = convert(args.model_dir, args.out)
    except (ConversionError, OSError, KeyError, ValueError) as e:
        sys.exit(f"ct2_to_ggml: {e}")
    names = "n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype"
    print(f"ct2_to_ggml: wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB): "
          + ", ".join(f"{k}={v}" for k, v in zip(names.split(), hp)))


if __name__ == "__main__":
    main()
