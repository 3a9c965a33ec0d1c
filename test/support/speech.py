"""Test speech: phrases spoken by espeak-ng, laid out on a timeline with silence or noise, as WAV.

    clip = say("turn your head to the left")          # 22050 Hz mono int16 numpy array
    wav = timeline(tmp / "x.wav", [silence(0.5), clip, silence(2.0)])

espeak-ng's en-us voice at 150 words per minute is what whisper tiny.en understands reliably
(its default `en` voice at 175 wpm is often misheard: "hello" -> "the low").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 22050  # espeak-ng's output rate
VOICE, WPM = "en-us", 150

_cache: dict[tuple[str, str, int], np.ndarray] = {}


def say(text: str, voice: str = VOICE, wpm: int = WPM) -> np.ndarray:
    """The phrase as 22050 Hz mono int16, without leading/trailing silence."""
    key = (text, voice, wpm)
    if key not in _cache:
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is missing: run ./rosa setup")
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", f.name, text], check=True)
            x = read_wav(f.name)[0]
        loud = np.nonzero(np.abs(x.astype(np.int32)) > 200)[0]
        _cache[key] = x[loud[0]:loud[-1] + 1] if len(loud) else x
    return _cache[key]


def silence(secs: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(round(secs * rate)), dtype=np.int16)


def noise(secs: float, level: float = 0.05, kind: str = "white", seed: int = 0, rate: int = RATE) -> np.ndarray:
    """White, brown (integrated) noise or a 50 Hz hum at `level` RMS (of full scale)."""
    rng = np.random.default_rng(seed)
    n = int(round(secs * rate))
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "brown":
        x = np.cumsum(rng.standard_normal(n))
        x -= np.convolve(x, np.ones(2001) / 2001, mode="same")  # keep it centred
    elif kind == "hum":
        t = np.arange(n) / rate
        x = np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t)
    else:
        raise ValueError(kind)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * level
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def timeline(path, parts, rate: int = RATE) -> Path:
    """Concatenate int16 parts and write a mono WAV; returns the path."""
    x = np.concatenate([np.asarray(p, dtype=np.int16) for p in parts])
    write_wav(path, x, rate)
    return Path(path)


def write_wav(path, x: np.ndarray, rate: int = RATE, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(x, dtype="<i2").tobytes())


def read_wav(path) -> tuple[np.ndarray, int, int]:
    """(interleaved int16 samples, rate, channels)."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, "16-bit WAV expected"
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy(), w.getframerate(), w.getnchannels()


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (what word error rate is computed on)."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance in words (substitutions + deletions + insertions)."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)]
