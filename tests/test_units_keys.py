"""Fast unit tests of edgeres.keys (cache-key material and host facts), without building anything.

They pin what the pipeline-level key tests (tests/test_keys.py) show only through whole builds: the exact ISA flags
read from /proc/cpuinfo, the kernel facts' subset of the host facts, and the memo of referenced files' digests.
Used by `make mutate` (tests/MUTANTS.md).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from edgeres import keys
from edgeres.artifact import sha256_json

CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Some CPU @ 2.00GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 avx512f avx512_vnni amx_tile ht pni
processor\t: 1
flags\t\t: fpu avx2 something_else
"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve i8mm bf16 neon
CPU implementer\t: 0x41
"""


def fake_cpuinfo(monkeypatch: pytest.MonkeyPatch, text: str | None) -> list[tuple[Any, ...]]:
    """Make edgeres.keys read `text` as /proc/cpuinfo (None: opening it fails); returns the calls to open."""
    calls: list[tuple[Any, ...]] = []

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((path, args, kwargs))
        assert path == "/proc/cpuinfo"
        assert kwargs.get("encoding", args[1] if len(args) > 1 else None) == "utf-8"
        if text is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return io.StringIO(text)

    monkeypatch.setattr(keys, "open", fake_open, raising=False)
    return calls


def test_stage_key_is_the_canonical_json_hash_of_its_material() -> None:
    material = {"type": "export", "inputs": {"opset": 18, "b": [1, 2]}}
    assert keys.stage_key(material) == sha256_json(material)
    assert keys.stage_key({"b": 1, "a": 2}) == keys.stage_key({"a": 2, "b": 1})
    assert keys.stage_key(material) != keys.stage_key({**material, "type": "compile"})
    assert len(keys.stage_key({})) == 64


def test_cpu_flags_keeps_only_instruction_set_flags_of_the_first_flags_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain `sse` (no digit) and flags that do not pick kernels (fpu, ht) are left out."""
    calls = fake_cpuinfo(monkeypatch, CPUINFO_X86)
    assert keys.cpu_flags() == sorted(
        ["sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "avx512f",
         "avx512_vnni", "amx_tile"]
    )  # fmt: skip
    assert len(calls) == 1


def test_cpu_flags_reads_arm_features(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(monkeypatch, CPUINFO_ARM)
    assert keys.cpu_flags() == ["asimd", "asimdhp", "asimdrdm", "bf16", "i8mm", "neon", "sve"]


def test_cpu_flags_value_is_everything_after_the_first_colon(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(monkeypatch, "flags : avx2 fma: sse2\n")
    assert keys.cpu_flags() == ["avx2", "sse2"]
    fake_cpuinfo(monkeypatch, "flags:avx2 sse2\n")  # no blank after the colon
    assert keys.cpu_flags() == ["avx2", "sse2"]


def test_cpu_flags_is_empty_without_a_flags_line_or_without_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(monkeypatch, "processor : 0\nmodel name : x avx2\n")
    assert keys.cpu_flags() == []
    fake_cpuinfo(monkeypatch, None)
    assert keys.cpu_flags() == []


def test_cpu_flags_of_this_machine_are_sorted_isa_flags() -> None:
    flags = keys.cpu_flags()
    assert flags == sorted(flags)
    assert all(keys.ISA_FLAG.match(f) for f in flags)


def test_kernel_facts_are_the_isa_machine_and_runtimes_of_the_host_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    host = {
        "cpu": "A CPU",
        "isa": ["avx2"],
        "cores": 64,
        "machine": "x86_64",
        "system": "Linux 6",
        "python": "3.11.7",
        "runtimes": {"onnxruntime": "1.0"},
    }
    monkeypatch.setattr(keys, "host_facts", lambda: host)
    assert keys.kernel_facts() == {"isa": ["avx2"], "machine": "x86_64", "runtimes": {"onnxruntime": "1.0"}}


def test_host_facts_describe_this_machine() -> None:
    facts = keys.host_facts()
    assert set(facts) == {"cpu", "isa", "cores", "machine", "system", "python", "runtimes"}
    assert facts["cores"] == os.cpu_count()
    assert set(keys.kernel_facts()) == {"isa", "machine", "runtimes"}


def test_file_sha256_is_the_content_hash_memoized_by_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "_FILE_DIGESTS", {})
    real = keys.sha256_file
    hashed: list[Path] = []

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(keys, "sha256_file", counting)
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights-1")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert keys.file_sha256(f) == hashlib.sha256(b"weights-1").hexdigest()
    assert keys.file_sha256(f) == hashlib.sha256(b"weights-1").hexdigest()
    assert len(hashed) == 1  # the second call is the memo's
    assert list(keys._FILE_DIGESTS.values()) == [hashlib.sha256(b"weights-1").hexdigest()]
    assert list(keys._FILE_DIGESTS) == [(str(f.resolve()), 9, 1_000_000_000)]

    f.write_bytes(b"weights-2")  # same size: only the modification time tells
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    assert keys.file_sha256(f) == hashlib.sha256(b"weights-2").hexdigest()
    assert len(hashed) == 2

    f.write_bytes(b"weights-22")  # another size at the old modification time
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    assert keys.file_sha256(f) == hashlib.sha256(b"weights-22").hexdigest()
    assert len(hashed) == 3


def test_file_sha256_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        keys.file_sha256(tmp_path / "missing.pt")


def test_runtime_settings_are_keyed_as_they_write_themselves() -> None:
    """A runtime setting added with a default (runtime_defaults, for peers) leaves the keys of every engine built
    before it unchanged; turned on, it is in the key."""
    from edgeres.inputs import _dump
    from edgeres.runtimes.settings import RuntimeSettings

    before = {"runtime": "openvino", "precision": "fp32", "ort_optimization_level": "extended",
              "openvino_hint": "latency"}  # fmt: skip
    assert _dump(RuntimeSettings("openvino"), keyed=True) == before
    assert _dump(RuntimeSettings("openvino", runtime_defaults=True), keyed=True) == {**before, "runtime_defaults": True}
