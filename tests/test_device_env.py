"""The device's Python environment (issue 27, finding 2): the device extras' pins, the driver's CUDA version and the
Jetson power facts, all from recorded command outputs and files (no NVIDIA driver, Jetson or TensorRT here).

What these prove and do not: the parsers and the probe order are checked on text recorded in the shape NVIDIA's
tools print (nvidia-smi's header, nvpmodel -q, jetson_clocks --show, the CUDA toolkit's version.json, nvcc); they
cannot prove that a given driver or JetPack prints exactly that. cuDriverGetVersion is a stand-in module here: the
test proves the probe's wiring and its failing soft, not cuda-python's behaviour on a real driver. The pip test
resolves the extras' requirements (TensorRT itself excluded: PyPI's `tensorrt` downloads from NVIDIA's index at
install time, and on Jetson JetPack provides it) against an installed numpy 1.26, where pip can reach the packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from edgeres.tensorrt.facts import (
    DeviceFacts,
    parse_cuda_toolkit_version,
    parse_jetson_clocks,
    parse_nvidia_smi_cuda_version,
    parse_nvpmodel,
    probe_device_facts,
)

ROOT = Path(__file__).resolve().parents[1]

# Plain `nvidia-smi` headers, abridged to the lines read (a 535 server driver, a 580 one, JetPack 6.1's).
SMI_535 = """\
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.183.01             Driver Version: 535.183.01   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""
SMI_580 = "| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |\n"
SMI_JETSON = "| NVIDIA-SMI 540.4.0                Driver Version: 540.4.0      CUDA Version: 12.6     |\n"
QUERY_535 = "NVIDIA L4, 535.183.01, 8.9, 23034, 22000\n"
NVPMODEL = "NV Power Mode: MAXN\n0\n"
NVPMODEL_VERBOSE = (
    "NVPM VERB: Config file: /etc/nvpmodel.conf\nNVPM VERB: parsing done for /etc/nvpmodel.conf\nNV Fan Mode:quiet\n"
    "NVPM VERB: Current mode: NV Power Mode: MODE_15W\n2\nNVPM VERB: PARAM CPU_ONLINE: ARG CORE_0: REAL_VAL: 1\n"
)
CLOCKS_DEFAULT = """\
SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1190400 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
NV Power Mode: MAXN
"""
CLOCKS_PINNED = """\
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu2: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=0 c7=0
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
NV Power Mode: MAXN
"""


def recorded(outputs: dict[str, str]) -> Any:
    """A command runner for probe_device_facts answering from recorded outputs, keyed by the command line; any
    other command fails as a missing tool does (None)."""
    calls: list[str] = []

    def run(cmd: list[str]) -> str | None:
        line = " ".join(cmd)
        calls.append(line)
        return outputs.get(line)

    run.calls = calls  # type: ignore[attr-defined]
    return run


SMI_QUERY = (
    "nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.free --format=csv,noheader,nounits"
)


def jetson_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    return tmp_path


# ------------------------------------------------------------------------------------------------------ parsers


def test_parsers_read_recorded_outputs() -> None:
    assert parse_nvidia_smi_cuda_version(SMI_535) == "12.2"
    assert parse_nvidia_smi_cuda_version(SMI_580) == "13.0"
    assert parse_nvidia_smi_cuda_version("NVIDIA-SMI has failed because it couldn't communicate") is None
    assert parse_cuda_toolkit_version('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}') == "12.6"
    assert parse_cuda_toolkit_version("CUDA Version 10.2.300\n") == "10.2"
    assert parse_cuda_toolkit_version("Cuda compilation tools, release 13.0, V13.0.88\n") == "13.0"
    assert parse_cuda_toolkit_version('{"cuda": {}}') is None and parse_cuda_toolkit_version("") is None
    assert parse_nvpmodel(NVPMODEL) == (0, "MAXN")
    assert parse_nvpmodel(NVPMODEL_VERBOSE) == (2, "MODE_15W")
    assert parse_nvpmodel("") == (None, None)
    assert parse_jetson_clocks(CLOCKS_DEFAULT) is False
    assert parse_jetson_clocks(CLOCKS_PINNED) is True  # an offline CPU's range does not count
    one_cpu_scaling = CLOCKS_PINNED.replace("cpu1: Online=1 Governor=schedutil MinFreq=2201600", "cpu1: MinFreq=729600")
    assert parse_jetson_clocks(one_cpu_scaling) is False
    assert parse_jetson_clocks("Error! You must be root to run this script\n") is None


# -------------------------------------------------------------------------------------------------------- probe


def test_driver_cuda_version_comes_from_nvidia_smi_not_the_bindings(tmp_path: Path) -> None:
    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=recorded({"nvidia-smi": SMI_535,
                                                                                 SMI_QUERY: QUERY_535}))  # fmt: skip
    assert (facts.driver_version, facts.driver_cuda_version) == ("535.183.01", "12.2")
    assert facts.sources["driver_cuda_version"] == "nvidia-smi"
    assert facts.power_mode is None and facts.clocks_pinned is None  # not a Jetson: not asked


def test_cu_driver_get_version_wins_and_cuda_version_stays_the_bindings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuda-python 13 bindings on a CUDA 12.2 driver: the runtime (bindings) says 13.0, the driver 12.2. Both are
    recorded, each under its own name; nvidia-smi is not asked for what cuDriverGetVersion gave."""
    driver = types.ModuleType("cuda.bindings.driver")
    driver.cuDriverGetVersion = lambda: (0, 12020)  # type: ignore[attr-defined]
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaRuntimeGetVersion = lambda: (0, 13000)  # type: ignore[attr-defined]
    for name, module in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", types.ModuleType("cuda.bindings")),
                         ("cuda.bindings.driver", driver), ("cuda.bindings.runtime", runtime)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    run = recorded({"nvidia-smi": SMI_580})
    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=run)
    assert (facts.cuda_version, facts.driver_cuda_version) == ("13.0", "12.2")
    assert facts.sources["driver_cuda_version"] == "cuda-python cuDriverGetVersion"
    assert "nvidia-smi" not in run.calls

    def broken() -> tuple[int, int]:
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    driver.cuDriverGetVersion = broken  # type: ignore[attr-defined]
    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=recorded({"nvidia-smi": SMI_580}))
    assert (facts.driver_cuda_version, facts.sources["driver_cuda_version"]) == ("13.0", "nvidia-smi")


def test_toolkit_versions_are_the_last_resort_and_say_so(tmp_path: Path) -> None:
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text(json.dumps({"cuda": {"version": "12.6.68"}}))
    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=recorded({}))
    assert facts.driver_cuda_version == "12.6"
    assert facts.sources["driver_cuda_version"] == "/usr/local/cuda/version.json (the CUDA toolkit's, not the driver's)"
    nvcc = recorded({"nvcc --version": "Cuda compilation tools, release 12.2, V12.2.140\n"})
    facts = probe_device_facts(root=tmp_path / "none", cuda_context=False, run=nvcc)
    assert (facts.driver_cuda_version, facts.sources["driver_cuda_version"]) == (
        "12.2", "nvcc --version (the CUDA toolkit's)"
    )  # fmt: skip
    assert probe_device_facts(root=tmp_path / "none", cuda_context=False, run=recorded({})).driver_cuda_version is None


def test_jetson_power_mode_and_clocks_are_recorded(tmp_path: Path) -> None:
    run = recorded({"nvpmodel -q": NVPMODEL, "jetson_clocks --show": CLOCKS_PINNED, "nvidia-smi": SMI_JETSON})
    facts = probe_device_facts(root=jetson_root(tmp_path), cuda_context=False, run=run)
    assert (facts.power_mode, facts.power_mode_id, facts.clocks_pinned) == ("MAXN", 0, True)
    assert facts.sources["power_mode"] == "nvpmodel -q" and facts.sources["clocks_pinned"] == "jetson_clocks --show"
    assert facts.driver_cuda_version == "12.6"
    again = DeviceFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert again == facts
    # jetson_clocks --show needs root: without it the fact stays unknown, and the power mode is still read
    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=recorded({"nvpmodel -q": NVPMODEL_VERBOSE}))
    assert (facts.power_mode, facts.power_mode_id, facts.clocks_pinned) == ("MODE_15W", 2, None)
    assert "clocks_pinned" not in facts.sources


def test_device_facts_recorded_before_these_fields_still_read() -> None:
    old = {
        "trt_version": "10.3.0.30", "cuda_version": "12.6", "driver_version": "540.4.0", "gpu_name": "Orin",
        "compute_capability": "8.7", "jetpack": "6.1", "l4t": "36.4.0", "dla_cores": 2, "board": None,
        "sm_count": 16, "total_memory_bytes": None, "free_memory_bytes": None, "sources": {},
    }  # fmt: skip
    facts = DeviceFacts.from_dict(old)
    assert facts.cuda_version == "12.6" and facts.driver_cuda_version is None and facts.power_mode is None
    assert facts.clocks_pinned is None and facts.power_mode_id is None


# ------------------------------------------------------------------------------------------------ device extras


def extras() -> dict[str, list[str]]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return {"core": project["dependencies"], **project["optional-dependencies"]}


DEVICE_EXTRAS = ("tensorrt", "tensorrt-cuda13")


def test_device_extras_pin_cuda_python_to_the_drivers_major() -> None:
    """cuda-python 13 needs driver 580.65+, 12 needs 525.60.13+ (NVIDIA/cuda-python install notes): each extra
    takes one major, so pip never resolves 13.x for a CUDA 12 driver. Fails on the old `cuda-python>=12`."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    for extra, major in zip(DEVICE_EXTRAS, (12, 13), strict=True):
        (cuda,) = [Requirement(r) for r in extras()[extra] if Requirement(r).name == "cuda-python"]
        allowed = [
            v for v in ("11.8.7", "12.0.0", "12.9.5", "13.0.0", "13.3.0", "14.0.0") if Version(v) in cuda.specifier
        ]
        assert allowed and {Version(v).major for v in allowed} == {major}, (extra, cuda)
    same = [sorted(r for r in extras()[e] if not r.startswith("cuda-python")) for e in DEVICE_EXTRAS]
    assert same[0] == same[1]  # the same packages otherwise


@pytest.mark.parametrize("extra", DEVICE_EXTRAS)
def test_device_extras_never_exclude_numpy_1_26(extra: str) -> None:
    """No requirement of the device extras, nor of the core they install with, excludes numpy 1.26 (JetPack's own
    numpy line; numpy 2 over it may break JetPack's torch), and the extra itself keeps numpy below 2 (what pip would
    otherwise pick through onnx's ml_dtypes: the pip test below). The extras' own pins only; fails without the pin."""
    from packaging.requirements import Requirement

    for line in [*extras()["core"], *extras()[extra]]:
        req = Requirement(line)
        if req.name == "numpy" and (req.marker is None or req.marker.evaluate({"python_version": "3.10"})):
            assert "1.26.4" in req.specifier, line
    # and the extra keeps numpy below 2 wherever numpy 1.26 exists (Python < 3.13; none is pinned on newer ones)
    pins = [Requirement(r) for r in extras()[extra] if Requirement(r).name == "numpy"]
    for python in ("3.10", "3.12", "3.13"):
        applying = [r for r in pins if r.marker is None or r.marker.evaluate({"python_version": python})]
        if python == "3.13":
            assert applying == []
        else:
            assert applying and all("2.0.0" not in r.specifier and "1.26.4" in r.specifier for r in applying)


def local_index_args(pip: list[str]) -> list[str] | None:
    """pip's own configured package sources that are local (file:// indexes, local find-links folders), as command
    line arguments; None where none is configured. So the resolution below runs offline."""
    out = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, check=False).stdout
    indexes, links = [], []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        for item in value.strip().strip("'\"").split():
            if key.endswith(("index-url", "index_url")) and item.startswith("file://"):
                indexes.append(item)
            elif key.endswith(("find-links", "find_links")) and Path(item.removeprefix("file://")).exists():
                links.append(item)
    for name, into in (("PIP_EXTRA_INDEX_URL", indexes), ("PIP_INDEX_URL", indexes), ("PIP_FIND_LINKS", links)):
        into += [i for i in os.environ.get(name, "").split() if i.startswith("file://") or Path(i).exists()]
    if not indexes and not links:
        return None
    args = ["--index-url", indexes[0]] if indexes else ["--no-index"]
    for i in indexes[1:]:
        args += ["--extra-index-url", i]
    for link in links:
        args += ["--find-links", link]
    return args


@pytest.fixture(scope="module")
def numpy_1_26_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str], bool]:
    """A throwaway venv made with --system-site-packages (as on a Jetson) holding numpy 1.26.4, shared by both
    extras' resolutions: (its pip, the package-source arguments, pip's environment, whether online)."""
    if sys.version_info >= (3, 13):
        pytest.skip("numpy 1.26 has no wheels for Python 3.13 and newer: the device extras leave numpy alone there")
    online = os.environ.get("EDGERES_PIP_ONLINE") == "1"
    sources = [] if online else local_index_args([sys.executable, "-m", "pip"])
    if sources is None:
        pytest.skip("pip has no local (file://) package source configured; EDGERES_PIP_ONLINE=1 resolves online")
    venv = tmp_path_factory.mktemp("device-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if not online:
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="", PIP_EXTRA_INDEX_URL="", PIP_FIND_LINKS="")
    base = subprocess.run([str(pip), "install", "--quiet", *sources, "numpy==1.26.4"], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if base.returncode != 0:
        pytest.skip(f"cannot install numpy 1.26.4 from pip's sources here: {base.stderr.strip()[-300:]}")
    return pip, sources, env, online


@pytest.mark.slow  # a throwaway venv and two pip resolutions: 8-10 s, and it skips where pip's sources lack a package
@pytest.mark.parametrize("extra", DEVICE_EXTRAS)
def test_device_extras_keep_an_installed_numpy_1_26(
    extra: str, tmp_path: Path, numpy_1_26_venv: tuple[Path, list[str], dict[str, str], bool]
) -> None:
    """`pip install --dry-run --report` of the core and the device extra (less `tensorrt`, see the module docstring)
    in a venv made with --system-site-packages that has numpy 1.26.4: nothing may install another numpy. Without
    the extra's numpy pin, pip picks onnx's newest ml_dtypes, which requires numpy 2 (measured: numpy 2.4.6 in the
    report). Offline by default: pip's local (file://) sources only, skipped where they lack a package. Set
    EDGERES_PIP_ONLINE=1 to resolve against pip's configured registries instead."""
    from packaging.requirements import Requirement

    pip, sources, env, online = numpy_1_26_venv
    wanted = [r for r in [*extras()["core"], *extras()[extra]] if Requirement(r).name != "tensorrt"]
    report = tmp_path / "report.json"
    proc = subprocess.run([str(pip), "install", "--dry-run", "--quiet", "--report", str(report), *sources, *wanted],
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-2:]
        pytest.skip(f"pip cannot resolve the {extra} extra from {'its registries' if online else 'local sources'}: "
                    + " ".join(lines)[:400])  # fmt: skip
    install = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert "cuda-python" in install or "cuda-bindings" in install  # it resolved the extra
    assert "numpy" not in install, f"pip would replace numpy 1.26.4 with numpy {install['numpy']}"
