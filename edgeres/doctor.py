"""`edgeres doctor`: what this machine can do with edgeres, and how to install what is missing.

Reads package metadata without importing heavy packages, except to ask the runtimes that are installed which
devices they see (ONNX Runtime providers, OpenVINO devices and CPU capabilities, CUDA through torch, TensorRT's
version). Also reports the CPU's instruction sets that decide the runtimes' kernels (from /proc/cpuinfo) and what
edgeres and the runtimes do with them, and the firmware toolchain for `edgeres embed`'s output (gcc, as, cmake).
Where an NVIDIA driver is found, it prints the CUDA version the driver supports and the exact pip line for the device
extras that match it (cuda-python's major must match the driver's CUDA major), and on Jetson how to make the venv see
JetPack's own TensorRT.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres.deps import available, install_hint, version_of

if TYPE_CHECKING:
    from edgeres.tensorrt.facts import DeviceFacts

PACKAGES: list[tuple[str, str]] = [
    ("click", "the command line"),
    ("pydantic", "recipe validation"),
    ("yaml", "reading recipes"),
    ("rich", "progress bars"),
    ("numpy", "measurements"),
    ("onnx", "ONNX checks and export"),
    ("torch", "stages finetune and export (extra: train)"),
    ("torchvision", "the ResNet models and image decoding (extra: train)"),
    ("sklearn", "the digits data set (extra: train)"),
    ("onnxscript", "the dynamo ONNX exporter (extra: train)"),
    ("torch_pruning", "stage prune (extra: train)"),
    ("nncf", "stage quantize (extra: train)"),
    ("onnxconverter_common", "float16 casts for TensorRT (extra: train on a build host, tensorrt on a device)"),
    ("onnxruntime", "runtime onnxruntime: parity checks and benchmarks (extra: cpu, or gpu)"),
    ("openvino", "runtime openvino and cpu-openvino engines (extra: cpu)"),
    ("tensorrt", "TensorRT engines on NVIDIA GPUs and Jetson (extra: tensorrt)"),
    ("model_signing", "signing and verifying deploy bundles (extra: sign)"),
]
DIST = {"yaml": "PyYAML", "sklearn": "scikit-learn"}


def _probe(fn: Any) -> str:
    try:
        return str(fn())
    except Exception as exc:  # a broken install must not break the doctor: report it instead
        return f"error: {type(exc).__name__}: {exc}"


def report() -> str:
    lines = [f"python {platform.python_version()} on {platform.platform()} ({platform.machine()})", "", "packages:"]
    missing = []
    for mod, purpose in PACKAGES:
        v = version_of(DIST.get(mod, mod)) if mod in DIST else version_of(mod)
        if v is None and not available(mod):
            missing.append((mod, purpose))
            lines.append(f"  {mod:<14} missing    enables {purpose}")
        else:
            lines.append(f"  {mod:<14} {v or '?':<10} {purpose}")
    if version_of("onnxruntime") and available("onnxruntime"):
        from importlib.metadata import PackageNotFoundError, version

        both = []
        for d in ("onnxruntime", "onnxruntime-gpu"):
            try:
                version(d)
                both.append(d)
            except PackageNotFoundError:
                pass
        if len(both) == 2:
            lines.append("  WARNING: onnxruntime and onnxruntime-gpu are both installed; they share one module and")
            lines.append("  the CPU build may win. Uninstall both, then install only the one you need.")
    lines += ["", "runtimes and devices:"]
    if available("onnxruntime"):
        lines.append(
            "  onnxruntime providers: " + _probe(lambda: ", ".join(__import__("onnxruntime").get_available_providers()))
        )
    if available("openvino"):
        lines.append(
            "  openvino devices: " + _probe(lambda: ", ".join(__import__("openvino").Core().available_devices))
        )
        lines.append("  openvino CPU: " + _probe(_openvino_cpu))
    if available("torch"):
        lines.append("  torch CUDA: " + _probe(_torch_cuda))
    if shutil.which("nvidia-smi"):
        lines.append("  nvidia-smi: " + _probe(_nvidia_smi))
    if available("tensorrt"):
        lines.append("  tensorrt: " + _probe(_tensorrt))
    else:
        lines.append("  tensorrt: not installed; TensorRT targets cannot build engines on this machine")
    lines += ["", *device_env_report(_device_facts(), cuda_python=version_of("cuda"))]
    lines += ["", *isa_report(read_cpu_flags())]
    lines += ["", *toolchain_report()]
    if missing:
        lines += ["", "to install what is missing:"]
        for mod, _ in missing:
            lines.append(f"  {mod}: {install_hint(mod)}")
    return "\n".join(lines)


def _device_facts() -> DeviceFacts | None:
    """This machine's NVIDIA facts without creating a CUDA context; None where probing failed (a bug: probes fail
    soft, so the doctor says it could not tell rather than stop)."""
    try:
        from edgeres.tensorrt.facts import probe_device_facts

        return probe_device_facts(cuda_context=False)
    except Exception:
        return None


# cuda-python's majors and the Linux drivers they need (NVIDIA/cuda-python, cuda_bindings install.md of 12.9.x and
# 13.x), with edgeres' extra for each. A newer driver runs older bindings, so any CUDA 13+ driver takes cuda13.
DEVICE_EXTRAS: list[tuple[int, str, str]] = [
    (12, "tensorrt", "525.60.13"),
    (13, "tensorrt-cuda13", "580.65.06"),
]
DRIVER_SOURCES = ("cuda-python cuDriverGetVersion", "nvidia-smi")  # where driver_cuda_version is the driver's own


def device_extra(driver_cuda_version: str) -> str | None:
    """The device extra for a driver that supports CUDA `driver_cuda_version` ("12.2"), or None when it is older
    than every cuda-python edgeres takes."""
    major = int(driver_cuda_version.split(".")[0])
    fitting = [extra for needs, extra, _ in DEVICE_EXTRAS if needs <= major]
    return fitting[-1] if fitting else None


def device_env_report(facts: DeviceFacts | None, *, cuda_python: str | None) -> list[str]:
    """The device section of the doctor: the NVIDIA driver and the CUDA version it supports, the pip line for the
    device extras that fit it, on Jetson how to see JetPack's TensorRT, and a cuda-python too new for the driver.
    `cuda_python` is the installed cuda-python's version (None: not installed)."""
    lines = ["device environment (TensorRT on this machine):"]
    if facts is None:
        return [*lines, "  could not read this machine's NVIDIA facts (see edgeres.tensorrt.facts)"]
    source = facts.sources.get("driver_cuda_version", "")
    driver_cuda = facts.driver_cuda_version if source in DRIVER_SOURCES else None
    if facts.driver_version is None and driver_cuda is None and not facts.is_jetson:
        lines.append(
            "  no NVIDIA driver found here (nvidia-smi, /proc/driver/nvidia/version, /etc/nv_tegra_release): the "
            "device extras (tensorrt, tensorrt-cuda13) are for the machine that builds and runs the engines"
        )
        if facts.driver_cuda_version is not None:
            lines.append(f"  (a CUDA toolkit {facts.driver_cuda_version} is installed: {source})")
        return lines
    where = ""
    if facts.is_jetson:
        where = f"Jetson, L4T {facts.l4t}" + (f", JetPack {facts.jetpack}" if facts.jetpack else "")
    driver = f"NVIDIA driver {facts.driver_version or 'of unknown version'}" + (f" ({where})" if where else "")
    pip: str | None = None
    if driver_cuda is None:
        toolkit = (
            f"; the CUDA toolkit here is {facts.driver_cuda_version} ({source}), which the driver runs, so it supports "
            "at least that"
            if facts.driver_cuda_version
            else ""
        )
        lines.append(f"  {driver}; the CUDA version it supports could not be read{toolkit}")
        lines.append(
            '  read it in `nvidia-smi`\'s header ("CUDA Version"), then: pip install "edgeres[tensorrt]" for 12.x, '
            'pip install "edgeres[tensorrt-cuda13]" for 13.x and newer'
        )
    else:
        lines.append(f"  {driver} supports CUDA {driver_cuda} (from {source})")
        extra = device_extra(driver_cuda)
        if extra is None:
            lines.append(
                f"  CUDA {driver_cuda} is too old for edgeres' device extras: cuda-python 12 needs driver "
                f"{DEVICE_EXTRAS[0][2]} or newer (CUDA 12). Upgrade the NVIDIA driver (on Jetson: JetPack 6 or later)."
            )
            return lines
        needs = next(d for _, e, d in DEVICE_EXTRAS if e == extra)
        major = next(m for m, e, _ in DEVICE_EXTRAS if e == extra)
        pip = f'pip install "edgeres[{extra}]"'
        if facts.is_jetson:
            lines.append(
                "  on Jetson, create the venv with --system-site-packages so that JetPack's tensorrt (and its numpy "
                f"1.x) are seen, then install: python3 -m venv --system-site-packages venv && venv/bin/{pip}"
            )
        else:
            lines.append(f"  install the device extras with: {pip}  (cuda-python {major}.x, needs driver {needs}+)")
    if cuda_python is not None and driver_cuda is not None:
        bindings, supported = int(cuda_python.split(".")[0]), int(driver_cuda.split(".")[0])
        if bindings > supported:
            lines.append(
                f"  WARNING: cuda-python {cuda_python} is installed, which needs a CUDA {bindings} driver; this "
                f'driver supports CUDA {driver_cuda}. CUDA buffers will fail: pip install "cuda-python>={supported},'
                f'<{supported + 1}"' + (f" (or {pip})" if pip else "")
            )
    return lines


def _tensorrt() -> str:
    from edgeres.tensorrt import require_tensorrt

    return str(require_tensorrt(purpose="report its version").__version__)


def _torch_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__})"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def _nvidia_smi() -> str:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout.strip().replace("\n", "; ") or out.stderr.strip()


def _openvino_cpu() -> str:
    """What OpenVINO itself says about this CPU: what edgeres asks before running bf16 or fp16, and OpenVINO's own
    default inference precision (which edgeres never uses: it always sets one)."""
    core = __import__("openvino").Core()
    caps = ", ".join(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = getattr(default, "get_type_name", lambda: str(default))()
    return f"capabilities {caps}; OpenVINO's default inference precision here: {default} (edgeres sets its own)"


# The x86 instruction sets that decide which inference kernels ONNX Runtime and OpenVINO run: (cpuinfo flag, name).
INFERENCE_ISA: list[tuple[str, str]] = [
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512 (F)"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX512_BF16"),
    ("amx_tile", "AMX-TILE"),
    ("amx_int8", "AMX-INT8"),
    ("amx_bf16", "AMX-BF16"),
]


def parse_cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The x86 CPU flags in /proc/cpuinfo text (its first `flags` line), or None where there is none (not x86, or
    not Linux's format: an Arm CPU lists `Features` instead)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def read_cpu_flags() -> frozenset[str] | None:
    """This CPU's x86 flags on Linux; None elsewhere or where /proc/cpuinfo cannot be read or has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def isa_report(flags: frozenset[str] | None) -> list[str]:
    """The inference instruction sets of a CPU with these flags (None: unknown), and what ONNX Runtime, OpenVINO
    and edgeres do with them."""
    lines = ["CPU instruction sets for inference (from /proc/cpuinfo):"]
    if flags is None:
        where = "not Linux" if not sys.platform.startswith("linux") else "no x86 `flags` line in /proc/cpuinfo"
        lines += [f"  {name:<14} unknown" for _, name in INFERENCE_ISA]
        lines.append(f"  ({where}: these x86 instruction sets are unknown here, and so is what the runtimes pick)")
        return lines
    lines += [f"  {name:<14} {'yes' if flag in flags else 'no'}" for flag, name in INFERENCE_ISA]
    has = flags.__contains__
    vnni = has("avx512_vnni") or has("avx_vnni")
    bf16 = has("avx512_bf16") or has("amx_bf16")
    lines.append("what the runtimes do with them:")
    if vnni:
        lines.append(
            "  ONNX Runtime INT8: VNNI kernels (" + ("AVX-512 VNNI" if has("avx512_vnni") else "AVX-VNNI")
            + "): u8 x s8 products summed straight into int32, no intermediate saturation"
        )  # fmt: skip
    elif has("avx2"):
        lines.append(
            "  ONNX Runtime INT8: no VNNI, so AVX2 u8 x s8 kernels (VPMADDUBSW): products are summed in pairs into "
            "saturating int16, so INT8 answers can differ from a VNNI CPU's (README, Reproducibility)"
        )
    else:
        lines.append("  ONNX Runtime INT8: neither VNNI nor AVX2; edgeres has not measured INT8 on such a CPU")
    if has("amx_int8"):
        lines.append(
            "    AMX-INT8 is present: recent ONNX Runtime versions may use AMX kernels (not checked by edgeres)"
        )
    lines.append(
        "    INT8 answers follow these kernels, so edgeres keys the quantize stage on this CPU's instruction-set "
        "flags and judges INT8 accuracy with this CPU's kernels; a bundle's self-test allows 10% of the largest "
        "|logit| for int8 engines"
    )
    if bf16:
        lines.append(
            "  OpenVINO: with AVX512_BF16 or AMX its default CPU inference precision is bf16 (logits measured 4e-3 "
            "to 0.1 away from f32); edgeres never uses that default: it sets f32 (execution mode ACCURACY) unless "
            "the recipe asks for bf16 (stages.compile.precision: bf16), and checks the precision OpenVINO compiled to"
        )
    else:
        lines.append(
            "  OpenVINO: without AVX512_BF16 or AMX its default CPU inference precision is f32; edgeres sets f32 "
            "(execution mode ACCURACY) explicitly anyway"
        )
        lines.append(
            "    bf16 asked for here (stages.compile.precision: bf16): OpenVINO would silently run f32, so edgeres "
            "asks OpenVINO's CPU capabilities for BF16 first: compile writes the IR but cannot check it here, the "
            "benchmark leaves it unmeasured (saying why), quantize and a latency-budget prune stop (exit 3), "
            "`edgeres.load` and `verify --load` refuse the bundle (exit 9), and a model OpenVINO compiled to another "
            "precision than asked is refused (exit 3)"
        )
    return lines


# The tools that build `edgeres embed`'s output into firmware: (names to look for, what for, Debian/Ubuntu package).
TOOLCHAIN: list[tuple[tuple[str, ...], str, str]] = [
    (("gcc", "cc"), "compiles embed's C sources (tests/test_embed.py builds them with gcc -std=c11)", "gcc"),
    (("as",), "assembles the .S file embed --incbin writes (GNU as or LLVM, ELF targets)", "binutils"),
    (("cmake",), "builds the <prefix>.cmake snippet embed writes into a firmware project", "cmake"),
]


def toolchain_report() -> list[str]:
    """Whether gcc (or cc), as and cmake are found, with their version lines. edgeres itself runs none of them:
    they are what a firmware build (and tests/test_embed.py) needs."""
    lines = ["firmware toolchain (for `edgeres embed` output; edgeres itself does not run it):"]
    for names, purpose, package in TOOLCHAIN:
        found = next(((n, p) for n in names if (p := shutil.which(n))), None)
        if found is None:
            lines.append(
                f"  {' or '.join(names):<8} not found; it {purpose}; install it where you build firmware "
                f"(Debian/Ubuntu: apt-get install {package})"
            )
            continue
        lines.append(f"  {found[0]:<8} {_probe(functools.partial(_version_line, found[1]))}; {purpose}")
    return lines


def _version_line(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"found at {path} (no version printed)"
