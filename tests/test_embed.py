"""Firmware embedding: the generated C compiles warning-free (C11), the .incbin variant assembles, a small C program
checks alignment, recomputes CRC-32, parses the raw image's header and writes the engine's bytes back out; those
bytes equal the engine file and give the engine's logits; the C arrays of a 2 MB engine compile at -O2 in memory
proportionate to it. Needs gcc (the CI script installs it where missing)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_fixtures import make_bundle
from conftest import REPO, run_cli

from edgeres.bundle.embed import c_identifier, embed_bin, embed_c, parse_bin_header
from edgeres.bundle.verify import open_bundle
from edgeres.errors import BundleError
from edgeres.runtimes import open_runner

CHECK = REPO / "tests" / "c" / "check_embed.c"
GCC = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"]
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed (CI installs it)")


@pytest.fixture(scope="module")
def signed(module_tmp: Any) -> dict[str, Path]:
    root = module_tmp("embed")
    assert run_cli("keygen", str(root / "k")).code == 0
    out = {"pub": root / "k.pub"}
    for runtime in ("onnxruntime", "openvino"):
        bundle = make_bundle(root / f"{runtime}.tar", version=7, runtime=runtime)
        assert run_cli("sign", str(bundle), "--key", str(root / "k.key")).code == 0
        out[runtime] = bundle
    return out


def names(prefix: str) -> list[str]:
    """-D flags mapping the check program's names onto a prefix's generated ones."""
    p, P = prefix, prefix.upper()
    return [
        f'-DPREFIX_H="{p}.h"', f"-DBLOBS={p}_blobs", f"-DBLOBS_COUNT={P}_NUM_BLOBS", f"-DBLOB_T={p}_blob_t",
        f"-DALIGNMENT={P}_ALIGNMENT", f"-DCHECK_BLOBS={p}_check_blobs", f"-DMETADATA={p}_metadata",
        f"-DGOLDEN_COMPARE={p}_golden_compare", f"-DBUNDLE_VERSION={P}_BUNDLE_VERSION",
    ]  # fmt: skip


def extracted(bundle: Path, name: str, dest: Path) -> Path:
    import tarfile

    with tarfile.open(bundle, "r:") as tf:
        f = tf.extractfile(f"engine/{name}")
        assert f is not None
        dest.write_bytes(f.read())
    return dest


def golden_inputs(bundle: Path) -> np.ndarray:
    import tarfile

    with tarfile.open(bundle, "r:") as tf:
        f = tf.extractfile("golden/inputs.f32")
        assert f is not None
        return np.frombuffer(f.read(), dtype="<f4").reshape(-1, 3, 16, 16).copy()


def logits(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    with open_runner("onnxruntime" if fmt == "onnx" else "openvino", path, fmt=fmt, threads=1) as runner:
        return np.asarray(runner.infer(x))


def build_and_run(tmp: Path, out: Path, prefix: str, bins: list[Path], *, incbin: bool) -> list[Path]:
    """Compile the check program against the generated sources, run it on each blob; returns the written bytes."""
    sources = [str(CHECK), str(out / f"{prefix}.c")] + ([str(out / f"{prefix}_blobs.S")] if incbin else [])
    exe = tmp / "check"
    cmd = [*GCC, f"-I{out}", *names(prefix), *sources, "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=120)
    assert done.returncode == 0, done.stderr
    written = []
    for i, image in enumerate(bins):
        dest = tmp / f"written-{i}"
        run = subprocess.run([str(exe), str(image), str(i), str(dest)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.startswith("OK ")
        written.append(dest)
    return written


CASES = [("onnxruntime", 64, False), ("onnxruntime", 4096, True), ("openvino", 64, False), ("openvino", 256, True)]


@pytest.mark.parametrize(("runtime", "align", "incbin"), CASES)
def test_embedded_engine_compiles_checks_and_round_trips(
    signed: dict[str, Path], tmp_path: Path, runtime: str, align: int, incbin: bool
) -> None:
    bundle, pub = signed[runtime], str(signed["pub"])
    out = tmp_path / "fw"
    args = ["--out", str(out), "--prefix", "my_model", "--align", str(align), "--key", pub]
    res = run_cli("embed", str(bundle), "--format", "c", *args, *(["--incbin"] if incbin else []))
    assert res.code == 0, res.stderr
    res = run_cli("embed", str(bundle), "--format", "bin", *args)
    assert res.code == 0, res.stderr
    files = ["model.ort.onnx"] if runtime == "onnxruntime" else ["model.xml", "model.bin"]
    idents = [f"my_model_{c_identifier(f)}" for f in files]
    bins = [out / f"{i}.bin" for i in idents]
    header = (out / "my_model.h").read_text()
    assert f"#define MY_MODEL_ALIGNMENT {align}u" in header
    assert "#define MY_MODEL_BUNDLE_VERSION 7u" in header
    assert (out / "my_model_blobs.S").exists() == incbin
    source = (out / "my_model.c").read_text()
    for ident in idents:
        assert (f"{ident}[{ident.upper()}_SIZE] = {{" in source) != incbin  # the bytes: in C, or pulled in by .S
        assert (incbin and f'.incbin "{ident}.dat"' in (out / "my_model_blobs.S").read_text()) or not incbin
    if incbin:  # assembled below from tmp_path, not from out: found through -I, as the .S says
        assert "assemble it with\n   -I <this folder> unless run from it" in (out / "my_model_blobs.S").read_text()
    written = build_and_run(tmp_path, out, "my_model", bins, incbin=incbin)
    originals = [extracted(bundle, f, tmp_path / f"orig-{f}") for f in files]
    for w, o in zip(written, originals, strict=True):
        assert w.read_bytes() == o.read_bytes()
    # The written bytes load as the engine and compute what was measured: the bundle's golden logits, within the
    # manifest's tolerance (bytes equal to the original are checked above; this checks they are a working engine).
    x = golden_inputs(bundle)
    fmt = "onnx" if runtime == "onnxruntime" else "openvino"
    if runtime == "onnxruntime":
        got = logits(written[0].rename(tmp_path / "written.onnx"), fmt, x)
    else:
        written[1].rename(tmp_path / "written.bin")
        got = logits(written[0].rename(tmp_path / "written.xml"), fmt, x)
    import tarfile

    with tarfile.open(bundle, "r:") as tf:
        golden = json.loads(tf.extractfile("manifest.json").read())["golden"]  # type: ignore[union-attr]
        want = np.frombuffer(tf.extractfile("golden/logits.f32").read(), dtype="<f4")  # type: ignore[union-attr]
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=0, atol=golden["max_abs_diff"])
    assert (got.argmax(1) == want.reshape(got.shape).argmax(1)).all()


# Runs argv in a process of its own and prints its exit code and the peak resident memory in bytes of it and its
# descendants (gcc's cc1 and as): RUSAGE_CHILDREN is cumulative over a process's life, so pytest's own earlier
# children would count in it.
PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(done.returncode, peak if sys.platform == "darwin" else peak * 1024)
"""


def test_c_arrays_compile_in_memory_proportionate_to_the_engine(signed: dict[str, Path], tmp_path: Path) -> None:
    """The C arrays of a 2 MiB engine through gcc -O2 peak at most 40x the engine's size: written as a {0x12, ...}
    list, gcc 12 took 125x (250 MiB; 3.8 GB for the quickstart's 24 MB engine), as string literals 26x (52 MiB, about
    20 of them gcc's floor). The compiled array holds the engine's bytes."""
    work = tmp_path / "open"
    work.mkdir()
    opened = open_bundle(signed["onnxruntime"], work, integrity_only=True)
    blob = np.random.default_rng(0).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    opened.path("engine/model.ort.onnx").write_bytes(blob)  # after the checks: embed reads the engine from here
    out = tmp_path / "fw"
    embed_c(opened, out)
    embed_bin(opened, out)
    cmd = [*GCC[:-1], "-O2", "-c", str(out / "model.c"), "-o", str(tmp_path / "model.o")]
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rc, peak = (int(v) for v in done.stdout.split())
    assert rc == 0, done.stderr
    assert peak <= 40 * len(blob), f"gcc -O2 peaked at {peak / 2**20:.0f} MiB for a {len(blob) / 2**20:.0f} MiB engine"
    (written,) = build_and_run(tmp_path, out, "model", [out / "model_model_ort_onnx.bin"], incbin=False)
    assert written.read_bytes() == blob


def test_c_of_a_bundle_without_golden_inputs_compiles(signed: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "open"
    work.mkdir()
    opened = open_bundle(signed["onnxruntime"], work, integrity_only=True)
    opened = dataclasses.replace(opened, manifest=opened.manifest.model_copy(update={"golden": None}))
    embed_c(opened, tmp_path / "fw")
    assert "#define MODEL_GOLDEN_COUNT 0u" in (tmp_path / "fw" / "model.h").read_text()
    cmd = [*GCC, "-c", str(tmp_path / "fw" / "model.c"), "-o", str(tmp_path / "model.o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_raw_image_header_is_as_documented(signed: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("embed", str(signed["onnxruntime"]), "--format", "bin", "--out", str(tmp_path), "--key",
                  str(signed["pub"]), "--align", "256")  # fmt: skip
    assert res.code == 0, res.stderr
    image = (tmp_path / "model_model_ort_onnx.bin").read_bytes()
    h = parse_bin_header(image)
    engine = extracted(signed["onnxruntime"], "model.ort.onnx", tmp_path / "e.onnx").read_bytes()
    assert image[:8] == b"EDGRSBIN"
    assert (h["format_version"], h["header_size"], h["payload_offset"], h["alignment"]) == (1, 128, 256, 256)
    assert (h["name"], h["bundle_version"], h["index"], h["count"]) == ("model.ort.onnx", 7, 0, 1)
    assert h["payload"] == engine
    assert image[128:256] == bytes(128)
    damaged = bytearray(image)
    damaged[40] ^= 1
    with pytest.raises(BundleError, match="header CRC-32 does not match"):
        parse_bin_header(bytes(damaged))
    damaged = bytearray(image)
    damaged[-1] ^= 1
    with pytest.raises(BundleError, match="payload CRC-32 does not match"):
        parse_bin_header(bytes(damaged))


def test_generated_sources_build_with_the_cmake_snippet(signed: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    for incbin in (False, True):
        out = tmp_path / f"model-{incbin}"
        flag = ["--incbin"] if incbin else []
        res = run_cli("embed", str(signed["onnxruntime"]), "--format", "c", "--out", str(out), "--key",
                      str(signed["pub"]), *flag)  # fmt: skip
        assert res.code == 0, res.stderr
        assert run_cli("embed", str(signed["onnxruntime"]), "--format", "bin", "--out", str(out), "--key",
                       str(signed["pub"])).code == 0  # fmt: skip
        project = tmp_path / f"fw-{incbin}"
        project.mkdir()
        defs = " ".join(d.removeprefix("-D").replace('"', '\\"') for d in names("model"))
        (project / "CMakeLists.txt").write_text(
            "cmake_minimum_required(VERSION 3.16)\n"
            "project(firmware C)\n"
            f'include("{out}/model.cmake")\n'
            f'add_executable(check "{CHECK}")\n'
            f"target_compile_definitions(check PRIVATE {defs})\n"
            "target_compile_options(check PRIVATE -Wall -Wextra -Werror)\n"
            "target_compile_options(model PRIVATE -Wall -Wextra -Werror)\n"
            "target_link_libraries(check PRIVATE model)\n"
        )
        build = project / "build"
        for cmd in (["cmake", "-S", str(project), "-B", str(build)], ["cmake", "--build", str(build)]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        run = subprocess.run(
            [str(build / "check"), str(out / "model_model_ort_onnx.bin"), "0", str(tmp_path / "w")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_embed_verifies_first_and_refuses_a_kit(signed: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tar"
    data = bytearray(signed["onnxruntime"].read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    res = run_cli("embed", str(damaged), "--format", "c", "--out", str(tmp_path / "o"), "--key", str(signed["pub"]))
    assert res.code == 9
    assert not (tmp_path / "o").exists()
    kit = make_bundle(
        tmp_path / "kit.tar", info={"engine": {"format": "tensorrt-kit", "runtime": "tensorrt", "files": []}}
    )
    res = run_cli("embed", str(kit), "--format", "c", "--out", str(tmp_path / "k"), "--integrity-only")
    assert res.code == 9
    assert "holds a TensorRT device kit, which has no engine to embed: the engine comes from the kit's build.sh" in (
        res.stderr
    )
    assert not (tmp_path / "k").exists()


def test_c_identifiers() -> None:
    assert c_identifier("my-model") == "my_model"
    assert c_identifier("model.ort.onnx") == "model_ort_onnx"
    assert c_identifier("3d") == "m_3d"
    assert c_identifier("int") == "m_int"
    assert c_identifier("__Reserved") == "reserved"
    assert c_identifier("!!!") == "model"
