"""`edgeres doctor`: the CPU's inference instruction sets read from /proc/cpuinfo text (a pure parser, tested on
sample text with and without each flag), what the runtimes and edgeres do with them, the firmware toolchain, and the
device environment (the driver's CUDA version and the pip line for the device extras)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from edgeres import doctor
from edgeres.doctor import INFERENCE_ISA, device_env_report, device_extra, isa_report, parse_cpu_flags, toolchain_report
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts

# Two logical CPUs, as Linux writes them on x86 (abridged); every inference flag but AMX's.
CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Sample CPU
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\nCPU implementer\t: 0x41\n"


def cpuinfo_with(flags: list[str]) -> str:
    return f"processor\t: 0\nmodel name\t: Sample\nflags\t\t: fpu sse2 {' '.join(flags)}\n"


def row(lines: list[str], name: str) -> str:
    (line,) = [x for x in lines if x.startswith(f"  {name} ")]
    return line.split()[-1]


def test_parse_cpu_flags_reads_the_flags_line() -> None:
    flags = parse_cpu_flags(CPUINFO)
    assert flags is not None
    assert {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"} <= flags
    assert not {"amx_tile", "amx_int8", "amx_bf16"} & flags
    assert parse_cpu_flags(ARM) is None  # no x86 flags line: unknown, not "absent"
    assert parse_cpu_flags("") is None


@pytest.mark.parametrize(("flag", "name"), INFERENCE_ISA)
def test_each_flag_is_reported_present_or_absent(flag: str, name: str) -> None:
    others = [f for f, _ in INFERENCE_ISA if f != flag]
    with_it = isa_report(parse_cpu_flags(cpuinfo_with([flag])))
    without = isa_report(parse_cpu_flags(cpuinfo_with(others)))
    assert row(with_it, name) == "yes"
    assert row(without, name) == "no"
    # A flag whose name contains another's is not mistaken for it (avx512f vs avx512_fp16, amx_tile vs amx_tile2).
    decoy = isa_report(parse_cpu_flags(cpuinfo_with([flag + "x", "x" + flag])))
    assert row(decoy, name) == "no"


def test_unknown_flags_say_unknown() -> None:
    lines = isa_report(None)
    for _, name in INFERENCE_ISA:
        assert row(lines, name) == "unknown"
    assert not any("ONNX Runtime INT8" in x for x in lines)


def test_what_the_runtimes_do_follows_the_flags() -> None:
    text = "\n".join(isa_report(parse_cpu_flags(cpuinfo_with(["avx2"]))))
    assert "ONNX Runtime INT8: no VNNI, so AVX2 u8 x s8 kernels (VPMADDUBSW)" in text
    assert "saturating int16" in text
    assert "its default CPU inference precision is f32" in text
    assert "bf16 asked for here" in text and "refuse the bundle (exit 9)" in text
    for vnni, label in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")):
        text = "\n".join(isa_report(parse_cpu_flags(cpuinfo_with(["avx2", vnni]))))
        assert f"ONNX Runtime INT8: VNNI kernels ({label})" in text
        assert "saturating int16" not in text
    for bf16 in ("avx512_bf16", "amx_bf16"):
        text = "\n".join(isa_report(parse_cpu_flags(cpuinfo_with(["avx2", bf16]))))
        assert "its default CPU inference precision is bf16" in text
        assert "it sets f32 (execution mode ACCURACY) unless the recipe asks for bf16" in text
        assert "bf16 asked for here" not in text
    text = "\n".join(isa_report(parse_cpu_flags(cpuinfo_with(["avx2", "amx_tile", "amx_int8"]))))
    assert "AMX-INT8 is present" in text
    assert "neither VNNI nor AVX2" in "\n".join(isa_report(parse_cpu_flags(cpuinfo_with([]))))


def test_toolchain_found_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    lines = toolchain_report()
    assert lines[0].startswith("firmware toolchain (for `edgeres embed` output")
    assert any(x.startswith("  gcc or cc not found; it compiles embed's C sources") for x in lines)
    assert any(x.startswith("  as ") and "not found" in x and "apt-get install binutils" in x for x in lines)
    assert any(x.startswith("  cmake ") and "not found" in x for x in lines)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}" if name in ("cc", "as") else None)
    monkeypatch.setattr(doctor, "_version_line", lambda path: f"{path} 1.2.3")
    lines = toolchain_report()
    assert any(x.startswith("  cc       /usr/bin/cc 1.2.3; compiles embed's C sources") for x in lines)
    assert any(x.startswith("  as       /usr/bin/as 1.2.3; assembles") for x in lines)


def test_doctor_prints_the_sections() -> None:
    res = run_cli("doctor")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    for section in (
        "packages:",
        "runtimes and devices:",
        "CPU instruction sets for inference (from /proc/cpuinfo):",
        "firmware toolchain (for `edgeres embed` output",
    ):
        assert any(x.startswith(section) for x in lines), section
    for _, name in INFERENCE_ISA:
        assert any(x.startswith(f"  {name} ") for x in lines), name
    for tool in ("gcc", "as", "cmake"):  # "gcc or cc not found", "cc ..." where only cc is there
        assert any(x.startswith((f"  {tool} ", "  cc ")) for x in lines), tool


# ------------------------------------------------------------------------ the device environment (issue 27, finding 2)
# Facts come from probe_device_facts over recorded command outputs (tests/test_device_env.py has the parsers'
# tests): no NVIDIA driver here. What a real driver prints is assumed to be in the recorded shape, not checked.


@pytest.fixture(autouse=True)
def _no_real_device_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facts below come from recorded outputs only: the probes that ask this machine's TensorRT, cuda-python or
    driver (on a machine with a GPU they would answer first) are turned off."""
    from edgeres.tensorrt import facts

    for probe in ("_probe_tensorrt", "_probe_cuda_python"):
        monkeypatch.setattr(facts, probe, lambda **kw: {})
    monkeypatch.setattr(facts, "_probe_cuda_driver", lambda: {})


def device_facts(tmp_path: Path, outputs: dict[str, str], *, jetson: bool = False) -> DeviceFacts:
    from test_device_env import jetson_root, recorded

    root = jetson_root(tmp_path) if jetson else tmp_path
    return probe_device_facts(root=root, cuda_context=False, run=recorded(outputs))


def test_doctor_names_the_extra_for_a_cuda_12_driver(tmp_path: Path) -> None:
    from test_device_env import QUERY_535, SMI_535, SMI_QUERY

    lines = device_env_report(device_facts(tmp_path, {"nvidia-smi": SMI_535, SMI_QUERY: QUERY_535}), cuda_python=None)
    assert lines == [
        "device environment (TensorRT on this machine):",
        "  NVIDIA driver 535.183.01 supports CUDA 12.2 (from nvidia-smi)",
        '  install the device extras with: pip install "edgeres[tensorrt]"  (cuda-python 12.x, needs driver '
        "525.60.13+)",
    ]


def test_doctor_names_the_extra_for_a_cuda_13_driver_and_warns_of_bindings_too_new(tmp_path: Path) -> None:
    from test_device_env import SMI_535, SMI_580

    facts = device_facts(tmp_path, {"nvidia-smi": SMI_580})
    assert facts.driver_version is None  # nvidia-smi's query not recorded: the version is unknown, its CUDA known
    lines = device_env_report(facts, cuda_python="13.0.1")
    assert lines[1:] == [
        "  NVIDIA driver of unknown version supports CUDA 13.0 (from nvidia-smi)",
        '  install the device extras with: pip install "edgeres[tensorrt-cuda13]"  (cuda-python 13.x, needs driver '
        "580.65.06+)",
    ]
    lines = device_env_report(device_facts(tmp_path, {"nvidia-smi": SMI_535}), cuda_python="13.0.1")
    assert lines[-1] == (
        "  WARNING: cuda-python 13.0.1 is installed, which needs a CUDA 13 driver; this driver supports CUDA 12.2. "
        'CUDA buffers will fail: pip install "cuda-python>=12,<13" (or pip install "edgeres[tensorrt]")'
    )
    assert device_extra("14.1") == "tensorrt-cuda13" and device_extra("11.4") is None


def test_doctor_on_jetson_says_system_site_packages(tmp_path: Path) -> None:
    from test_device_env import NVPMODEL, SMI_JETSON

    facts = device_facts(tmp_path, {"nvidia-smi": SMI_JETSON, "nvpmodel -q": NVPMODEL}, jetson=True)
    lines = device_env_report(facts, cuda_python=None)
    assert lines[1:] == [
        "  NVIDIA driver of unknown version (Jetson, L4T 36.4.0) supports CUDA 12.6 (from nvidia-smi)",
        "  on Jetson, create the venv with --system-site-packages so that JetPack's tensorrt (and its numpy 1.x) are "
        'seen, then install: python3 -m venv --system-site-packages venv && venv/bin/pip install "edgeres[tensorrt]"',
    ]


def test_doctor_without_the_drivers_cuda_version(tmp_path: Path) -> None:
    from test_device_env import QUERY_535, SMI_QUERY

    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text('{"cuda": {"version": "12.4.1"}}')
    lines = device_env_report(device_facts(tmp_path, {SMI_QUERY: QUERY_535}), cuda_python=None)
    assert lines[1] == (
        "  NVIDIA driver 535.183.01; the CUDA version it supports could not be read; the CUDA toolkit here is 12.4 "
        "(/usr/local/cuda/version.json (the CUDA toolkit's, not the driver's)), which the driver runs, so it supports "
        "at least that"
    )
    assert 'pip install "edgeres[tensorrt]" for 12.x' in lines[2] and "edgeres[tensorrt-cuda13]" in lines[2]
    lines = device_env_report(device_facts(tmp_path / "none", {}), cuda_python=None)
    assert lines[1].startswith("  no NVIDIA driver found here") and len(lines) == 2
    old = device_env_report(device_facts(tmp_path, {"nvidia-smi": "CUDA Version: 11.4", SMI_QUERY: QUERY_535}),
                            cuda_python=None)  # fmt: skip
    assert old[-1].startswith(
        "  CUDA 11.4 is too old for edgeres' device extras: cuda-python 12 needs driver 525.60.13"
    )


def test_doctor_prints_the_device_section() -> None:
    res = run_cli("doctor")
    assert res.code == 0, res.stderr
    assert "device environment (TensorRT on this machine):" in res.stdout.splitlines()
