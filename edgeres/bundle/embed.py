"""Firmware embedding of a verified bundle's engine: C arrays (or assembler .incbin), a CMake snippet, raw images.

`--format c` writes `<prefix>.h` and `<prefix>.c`: each engine file (one for ONNX Runtime and TensorRT, two for
OpenVINO: .xml and .bin) as a `const unsigned char` array aligned to `align` bytes (64 by default: a cache line on
Cortex-A/x86 and the burst alignment DMA engines and NPU drivers ask for, so the runtime can map the weights in place
without copying them), with its size, sha256 and CRC-32; a metadata struct (bundle version, target, runtime and
versions, input shape, mean/std, classes, golden inputs and logits with their tolerance); `<prefix>_crc32`,
`<prefix>_check_blobs` (alignment and CRC-32 of every blob, e.g. at boot) and `<prefix>_golden_compare` (the boot
self-test's check of one golden output). The arrays' bytes are C string literals (`c_string_rows`: a compiler keeps
one string constant where a `{0x12, ...}` list costs it a tree node per byte), so a 24 MB engine compiles in seconds
and a few hundred MB. With `incbin=True` the arrays come from `<prefix>_blobs.S` instead, which pulls each engine
file's bytes in with the assembler's `.incbin` (cheaper still: the compiler never sees the bytes); the assembler finds
the `.dat` files through the include path, so it is assembled with `-I <that folder>` unless run from it.
`<prefix>.cmake` adds either to a firmware target (and the include path with it).

`--format bin` writes one raw image per engine file, `<prefix>_<file>.bin`: a fixed 128-byte little-endian header
then the file's bytes at an aligned offset, for a bootloader or OTA agent to check before handing the bytes to the
runtime. Header layout (all integers little-endian):

    offset size field
    0      8    magic "EDGRSBIN"
    8      2    header format version, 1
    10     2    header size, 128
    12     4    payload offset (a multiple of the alignment, at least 128); the bytes before it are zero
    16     8    payload size in bytes
    24     4    payload CRC-32 (IEEE 802.3 / zlib: reflected polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF)
    28     4    bundle version (the manifest's monotonic version: a bootloader refuses one below its counter)
    32     32   payload sha256 (as in the signed manifest)
    64     48   file name in the bundle's engine/ folder, UTF-8, NUL-padded (e.g. "model.ort.onnx")
    112    4    payload alignment
    116    4    index of this file among the engine's files
    120    4    number of engine files
    124    4    CRC-32 of header bytes 0..123

A device kit holds no engine (it is built on the device by the kit's build.sh), so embedding one is refused.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres import __version__
from edgeres.artifact import write_bytes_atomic, write_text_atomic
from edgeres.bundle.verify import Opened, read_golden
from edgeres.deps import require
from edgeres.errors import BundleError, UsageError

MAGIC = b"EDGRSBIN"
BIN_VERSION = 1
HEADER_SIZE = 128
NAME_FIELD = 48
HEADER = struct.Struct("<8sHHIQII32s48sIIII")  # 128 bytes, little-endian, no padding
C_KEYWORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
              "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
              "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
              "volatile", "while", "bool", "true", "false"}  # fmt: skip


@dataclass(frozen=True)
class Blob:
    name: str  # file name in the bundle's engine/ folder
    ident: str  # C identifier of its array
    data: bytes
    crc32: int
    sha256: str


def c_identifier(text: str) -> str:
    """A valid, non-reserved C identifier from `text`: letters, digits and '_' only, not starting with a digit or
    '_', lower case, not a keyword."""
    ident = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower()
    if not ident or ident[0].isdigit() or ident in C_KEYWORDS:
        ident = f"m_{ident}".rstrip("_") if ident else "model"
    return ident


def engine_blobs(opened: Opened, prefix: str) -> list[Blob]:
    """The engine's files as blobs (refusing a device kit, which has none)."""
    engine = opened.manifest.engine
    if engine.format == "tensorrt-kit" or not engine.files:
        raise BundleError(
            f"{opened.source} holds a TensorRT device kit, which has no engine to embed: the engine comes from the "
            "kit's build.sh, run on the device (TensorRT engines are built where they run). Run `bash build.sh` in "
            "the kit there, bundle what it built with `edgeres package KIT_FOLDER`, and embed that bundle"
        )
    blobs: list[Blob] = []
    used: set[str] = set()
    for rel in engine.files:
        data = opened.path(rel).read_bytes()
        if not data:
            raise BundleError(f"{opened.source}: engine file {rel} is empty; nothing to embed")
        name = rel.removeprefix("engine/")
        ident = f"{prefix}_{c_identifier(name)}"
        while ident in used:
            ident += "_"
        used.add(ident)
        blobs.append(Blob(name, ident, data, zlib.crc32(data), hashlib.sha256(data).hexdigest()))
    return blobs


def c_string(text: str) -> str:
    """A C string literal for `text` (UTF-8): printable ASCII kept, everything else as 3-digit octal escapes."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        out.append(ch if 32 <= b < 127 and ch not in '"\\?' else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_float(value: float) -> str:
    """An exact C float literal (hexadecimal) of a float32 value."""
    if not math.isfinite(value):
        raise BundleError(f"cannot embed the non-finite value {value} (golden logits or preprocessing)")
    mantissa, exponent = float(value).hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"


def hex_rows(data: bytes, per_row: int = 16) -> str:
    """`data` as C array initializer rows: `0x0a,0x1b,...`, `per_row` bytes a row."""
    np = require("numpy")
    table = np.array([f"0x{i:02x},".encode() for i in range(256)], dtype="S5")
    flat = table[np.frombuffer(data, dtype=np.uint8)].tobytes()
    width = per_row * 5
    return "\n".join(flat[i : i + width].decode("ascii") for i in range(0, len(flat), width))


def c_string_rows(data: bytes, per_row: int = 64) -> str:
    """`data` as adjacent C string literals, `per_row` bytes a row: the initializer of a `const unsigned char` array.

    Why strings and not `0x12,` lists: a compiler builds a tree node for every element of a brace list (gcc 12 -O2
    took 3.8 GB and 45-190 s for a 24 MB engine written that way), but one string constant for a literal, however
    long (about 15 bytes of compiler memory per engine byte, 2 s for 24 MB). Printable ASCII stays as itself,
    every other byte is a 3-digit octal escape: an octal escape ends after 3 digits, so a digit after it is never
    read into it (a `\\x` escape would take every hex digit that follows); '"', '\\' and '?' (trigraphs are on under
    -std=c11) are escaped too. Adjacent literals are concatenated by the compiler; the caller sizes the array to
    exactly len(data), so the literal's NUL is not stored (valid C: an array of character type may be initialized by
    a string literal whose terminating NUL does not fit) and the array holds exactly the bytes.
    """
    np = require("numpy")
    escapes = [chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}" for b in range(256)]
    table = np.array([e.encode("ascii") for e in escapes], dtype="S4").view(np.uint8).reshape(256, 4)
    lengths = np.array([len(e) for e in escapes], dtype=np.uint8)
    used = np.arange(4, dtype=np.uint8)
    rows: list[str] = []
    block = per_row * 16384  # bounds the working arrays (~10 bytes per input byte) for engines of hundreds of MB
    for start in range(0, len(data), block):
        a = np.frombuffer(data, dtype=np.uint8, count=min(block, len(data) - start), offset=start)
        n = lengths[a]
        flat = table[a][used < n[:, None]].tobytes()
        ends = np.cumsum(np.add.reduceat(n, np.arange(0, len(a), per_row), dtype=np.int64)).tolist()
        rows.extend(f'"{flat[s:e].decode("ascii")}"' for s, e in zip([0, *ends[:-1]], ends, strict=True))
    return "\n".join(rows)


def _floats(values: Any, per_row: int = 6) -> str:
    items = [c_float(v) for v in values]
    return "\n".join("    " + ", ".join(items[i : i + per_row]) + "," for i in range(0, len(items), per_row))


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = 0xEDB88320 ^ (c >> 1) if c & 1 else c >> 1
        table.append(c)
    return table


def _golden(opened: Opened) -> tuple[Any, Any, Any, float] | None:
    arrays = read_golden(opened)
    if arrays is None or opened.manifest.golden is None:
        return None
    return arrays[0], arrays[1], arrays[2], opened.manifest.golden.max_abs_diff


def check_options(prefix: str, align: int) -> str:
    """The prefix, when it is usable as it is, and the alignment; else a UsageError saying what to pass. A prefix is
    never changed silently: the C names and file names the firmware refers to are made from it."""
    if align < 1 or align & (align - 1) or align > 4096:
        raise UsageError(
            f"--align {align}: the alignment must be a power of two from 1 to 4096 bytes; pass e.g. --align 64 (the "
            "default: a cache line, and what DMA engines and NPU drivers ask for) or --align 4096 (a page)"
        )
    if c_identifier(prefix) != prefix:
        raise UsageError(
            f"--prefix {prefix!r} cannot be used as it is: the C names and file names are made from it, so it must be "
            "lower-case letters, digits and '_', start with a letter, not end with '_' and not be a C keyword; pass "
            f"--prefix {c_identifier(prefix)}"
        )
    return prefix


def embed_c(opened: Opened, out: Path, *, prefix: str = "model", align: int = 64, incbin: bool = False) -> list[Path]:
    """Write the C (or C + .incbin assembler) sources and the CMake snippet into `out`; returns the paths."""
    p = check_options(prefix, align)
    P = p.upper()
    m = opened.manifest
    data = opened.data
    blobs = engine_blobs(opened, p)
    golden = _golden(opened)
    shape = [0 if isinstance(d, str) else int(d) for d in m.input.shape]
    header_name, source_name, asm_name, cmake_name = f"{p}.h", f"{p}.c", f"{p}_blobs.S", f"{p}.cmake"
    origin = (
        f"Generated by edgeres {__version__} from bundle {m.name}/{m.variant} version {m.version} "
        f"(manifest sha256 {data['manifest_sha256']}). Do not edit; regenerate with `edgeres embed`."
    )
    h: list[str] = [
        f"/* {origin} */",
        f"#ifndef {P}_H",
        f"#define {P}_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {P}_ALIGNMENT {align}u /* every engine array starts at a multiple of this (bytes) */",
        f"#define {P}_BUNDLE_VERSION {m.version}u /* monotonic: refuse an image below the device's counter */",
        f"#define {P}_NUM_BLOBS {len(blobs)}u",
        f"#define {P}_NUM_CLASSES {len(m.classes)}u",
        f"#define {P}_INPUT_N {shape[0]}u /* 0: any batch size */",
        f"#define {P}_INPUT_C {shape[1]}u",
        f"#define {P}_INPUT_H {shape[2]}u",
        f"#define {P}_INPUT_W {shape[3]}u",
        f"#define {P}_GOLDEN_COUNT {0 if golden is None else len(golden[1])}u",
    ]
    for b in blobs:
        h.append(f"#define {b.ident.upper()}_SIZE {len(b.data)}u /* engine/{b.name} */")
    h += [
        "",
        "typedef struct {",
        "    const char *name;          /* file name in the bundle's engine/ folder */",
        f"    const unsigned char *data; /* {P}_ALIGNMENT-aligned */",
        "    size_t size;",
        "    uint32_t crc32;            /* IEEE 802.3 (zlib) CRC-32 of data */",
        "    uint8_t sha256[32];        /* as in the signed manifest */",
        f"}} {p}_blob_t;",
        "",
        "typedef struct {",
        "    uint32_t bundle_version;",
        "    const char *name;",
        "    const char *variant;",
        "    const char *target;",
        "    const char *runtime;",
        "    const char *runtime_version;",
        "    const char *precision;",
        "    const char *edgeres_version;",
        "    const char *manifest_sha256;",
        "    uint32_t input_shape[4];   /* N (0: any), C, H, W; float32 NCHW */",
        '    const char *channel_order; /* "RGB" */',
        "    float mean[3];             /* x = (pixel / 255 - mean[c]) / std[c] */",
        "    float std[3];",
        "    uint32_t num_classes;",
        "    const char *const *class_names;",
        "    uint32_t num_blobs;",
        f"    const {p}_blob_t *blobs;",
        "    uint32_t golden_count;",
        "    const uint8_t *golden_images;  /* golden_count x H x W x 3 uint8 RGB, or NULL */",
        "    const float *golden_inputs;    /* golden_count x C x H x W, preprocessed */",
        "    const float *golden_logits;    /* golden_count x num_classes, expected */",
        "    float golden_max_abs_diff;     /* allowed |logit difference|; the top-1 class must match */",
        f"}} {p}_metadata_t;",
        "",
    ]
    h += [f"extern const unsigned char {b.ident}[{b.ident.upper()}_SIZE];" for b in blobs]
    h += [
        f"extern const {p}_blob_t {p}_blobs[{P}_NUM_BLOBS];",
        f"extern const {p}_metadata_t {p}_metadata;",
        "",
        "/* CRC-32 (IEEE 802.3, as zlib) of size bytes. */",
        f"uint32_t {p}_crc32(const void *data, size_t size);",
        "/* 0 when every blob is aligned and matches its CRC-32, else 1 + the index of the first that does not. */",
        f"int {p}_check_blobs(void);",
        "/* 0 when logits (num_classes floats, the engine's output for golden input `index`) are within the",
        "   tolerance of the expected ones and keep their top-1 class; 1: too far, 2: other top-1,",
        "   -1: no such golden input. */",
        f"int {p}_golden_compare(uint32_t index, const float *logits);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {P}_H */",
        "",
    ]
    c: list[str] = [f"/* {origin} */", f'#include "{header_name}"', ""]
    if not incbin:
        c += [
            "/* The engine bytes are string literals (cheap for compilers, unlike {0x12, ...} lists), each exactly as",
            "   long as its array: no NUL is stored, which is valid C, but gcc >= 15 and clang >= 21 warn about it",
            "   (-Wextra) unless the array is marked nonstring: these arrays are bytes, not strings. */",
            "#if defined(__has_attribute)",
            "#if __has_attribute(nonstring)",
            f"#define {P}_NONSTRING __attribute__((nonstring))",
            "#endif",
            "#endif",
            f"#ifndef {P}_NONSTRING",
            f"#define {P}_NONSTRING",
            "#endif",
            "",
        ]
        for b in blobs:
            c += [
                f"/* engine/{b.name}: {len(b.data)} bytes, sha256 {b.sha256} */",
                f"_Alignas({align}) {P}_NONSTRING const unsigned char {b.ident}[{b.ident.upper()}_SIZE] = {{",
                c_string_rows(b.data),
                "};",
                "",
            ]
    else:
        c.append(f"/* The engine arrays are defined in {asm_name} (assembler .incbin). */")
        c.append("")
    classes = ", ".join(c_string(name) for name in m.classes)
    c += [f"static const char *const {p}_class_names[{P}_NUM_CLASSES] = {{{classes}}};", ""]
    if golden is not None:
        images, inputs, logits, _ = golden
        if images is not None:
            c += [f"static const uint8_t {p}_golden_images[{images.size}] = {{", hex_rows(images.tobytes()), "};"]
        c += [f"static const float {p}_golden_inputs[{inputs.size}] = {{", _floats(inputs.ravel()), "};"]
        c += [f"static const float {p}_golden_logits[{logits.size}] = {{", _floats(logits.ravel()), "};", ""]
    c.append(f"const {p}_blob_t {p}_blobs[{P}_NUM_BLOBS] = {{")
    for b in blobs:
        digest = ", ".join(f"0x{x:02x}" for x in bytes.fromhex(b.sha256))
        c.append(f"    {{{c_string(b.name)}, {b.ident}, {b.ident.upper()}_SIZE, 0x{b.crc32:08x}u, {{{digest}}}}},")
    c += ["};", ""]
    engine = m.engine
    mean = ", ".join(c_float(v) for v in m.input.mean)
    std = ", ".join(c_float(v) for v in m.input.std)
    c += [
        f"const {p}_metadata_t {p}_metadata = {{",
        f"    {m.version}u,",
        f"    {c_string(m.name)},",
        f"    {c_string(m.variant)},",
        f"    {c_string(str(m.target.get('name')))},",
        f"    {c_string(engine.runtime)},",
        f"    {c_string(str(data['engine'].get('runtime_version')))},",
        f"    {c_string(str(engine.precision))},",
        f"    {c_string(str(data.get('edgeres')))},",
        f"    {c_string(data['manifest_sha256'])},",
        f"    {{{', '.join(f'{d}u' for d in shape)}}},",
        '    "RGB",',
        f"    {{{mean}}}, /* {', '.join(f'{v:g}' for v in m.input.mean)} */",
        f"    {{{std}}}, /* {', '.join(f'{v:g}' for v in m.input.std)} */",
        f"    {P}_NUM_CLASSES,",
        f"    {p}_class_names,",
        f"    {P}_NUM_BLOBS,",
        f"    {p}_blobs,",
        f"    {P}_GOLDEN_COUNT,",
    ]
    if golden is not None:
        c += [
            f"    {p}_golden_images," if golden[0] is not None else "    NULL,",
            f"    {p}_golden_inputs,",
            f"    {p}_golden_logits,",
            f"    {c_float(golden[3])},",
        ]
    else:
        c += ["    NULL,", "    NULL,", "    NULL,", "    0.0f,"]
    c += ["};", ""]
    table = _crc_table()
    # Without golden inputs, `index >= 0u` is always true, which -Wextra (type-limits) refuses under -Werror; the
    # NULL golden_logits says -1 alone then.
    in_range = "" if golden is None else f"index >= {P}_GOLDEN_COUNT || "
    c += [
        f"static const uint32_t {p}_crc_table[256] = {{",
        *("    " + ", ".join(f"0x{v:08x}u" for v in table[i : i + 8]) + "," for i in range(0, 256, 8)),
        "};",
        "",
        f"uint32_t {p}_crc32(const void *data, size_t size) {{",
        "    const unsigned char *p = (const unsigned char *)data;",
        "    uint32_t crc = 0xFFFFFFFFu;",
        "    while (size--) {",
        f"        crc = {p}_crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);",
        "    }",
        "    return crc ^ 0xFFFFFFFFu;",
        "}",
        "",
        f"int {p}_check_blobs(void) {{",
        f"    for (uint32_t i = 0; i < {P}_NUM_BLOBS; i++) {{",
        f"        const {p}_blob_t *b = &{p}_blobs[i];",
        f"        if ((uintptr_t)b->data % {P}_ALIGNMENT != 0u || {p}_crc32(b->data, b->size) != b->crc32) {{",
        "            return (int)i + 1;",
        "        }",
        "    }",
        "    return 0;",
        "}",
        "",
        f"int {p}_golden_compare(uint32_t index, const float *logits) {{",
        f"    if ({in_range}{p}_metadata.golden_logits == NULL) {{",
        "        return -1;",
        "    }",
        f"    const float *want = &{p}_metadata.golden_logits[index * {P}_NUM_CLASSES];",
        "    uint32_t top_got = 0, top_want = 0;",
        f"    for (uint32_t c = 0; c < {P}_NUM_CLASSES; c++) {{",
        "        float d = logits[c] - want[c];",
        "        if (d < 0.0f) {",
        "            d = -d;",
        "        }",
        f"        if (!(d <= {p}_metadata.golden_max_abs_diff)) {{ /* NaN fails too */",
        "            return 1;",
        "        }",
        "        if (logits[c] > logits[top_got]) {",
        "            top_got = c;",
        "        }",
        "        if (want[c] > want[top_want]) {",
        "            top_want = c;",
        "        }",
        "    }",
        "    return top_got == top_want ? 0 : 2;",
        "}",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / header_name, out / source_name]
    write_text_atomic(out / header_name, "\n".join(h))
    write_text_atomic(out / source_name, "\n".join(c))
    if incbin:
        asm = [
            f"/* {origin} */",
            "/* ELF assemblers (GNU as, LLVM): each engine file's bytes, aligned. The assembler looks for the .dat",
            "   files in its working folder and then the include path, never beside this file: assemble it with",
            f"   -I <this folder> unless run from it, e.g. `cc -c -I fw/model fw/model/{asm_name}` (the {cmake_name}",
            "   snippet adds that folder to the include path). */",
        ]
        for b in blobs:
            raw = f"{b.ident}.dat"
            shutil.copyfile(opened.path(f"engine/{b.name}"), out / raw)
            written.append(out / raw)
            asm += [
                "",
                f'    .section .rodata.{b.ident},"a"',
                f"    .balign {align}",
                f"    .globl {b.ident}",
                f"    .type {b.ident}, %object",
                f"{b.ident}:",
                f'    .incbin "{raw}"',
                f"    .size {b.ident}, . - {b.ident}",
            ]
        asm += ["", '    .section .note.GNU-stack,"",%progbits', ""]
        write_text_atomic(out / asm_name, "\n".join(asm))
        written.append(out / asm_name)
    write_text_atomic(out / cmake_name, cmake_snippet(p, source_name, asm_name if incbin else None, blobs))
    written.append(out / cmake_name)
    return written


def cmake_snippet(p: str, source: str, asm: str | None, blobs: list[Blob]) -> str:
    """include() this from a firmware's CMakeLists.txt; it defines the library `<prefix>` to link."""
    lines = [
        f"# Generated by edgeres {__version__}: the embedded model as a static library.",
        "#   include(path/to/this/file.cmake)",
        f"#   target_link_libraries(firmware PRIVATE {p})",
        "# C11; the engine data is const (flash/rodata).",
    ]
    if asm is None:
        lines += [
            f'add_library({p} STATIC "${{CMAKE_CURRENT_LIST_DIR}}/{source}")',
        ]
    else:
        deps = ";".join(f"${{CMAKE_CURRENT_LIST_DIR}}/{b.ident}.dat" for b in blobs)
        lines += [
            "enable_language(ASM)",
            f'add_library({p} STATIC "${{CMAKE_CURRENT_LIST_DIR}}/{source}" "${{CMAKE_CURRENT_LIST_DIR}}/{asm}")',
            "# .incbin finds the .dat files through the include path; reassemble when they change.",
            f'set_source_files_properties("${{CMAKE_CURRENT_LIST_DIR}}/{asm}" PROPERTIES OBJECT_DEPENDS "{deps}")',
        ]
    lines += [
        f'target_include_directories({p} PUBLIC "${{CMAKE_CURRENT_LIST_DIR}}")',
        f"set_target_properties({p} PROPERTIES C_STANDARD 11 C_STANDARD_REQUIRED ON)",
        "",
    ]
    return "\n".join(lines)


def bin_image(blob: Blob, *, index: int, count: int, version: int, align: int) -> bytes:
    """One raw image: the 128-byte header (module docstring) and the blob at an aligned offset."""
    name = blob.name.encode("utf-8")
    if len(name) >= NAME_FIELD:
        raise BundleError(f"engine file name {blob.name!r} is longer than {NAME_FIELD - 1} bytes; cannot be stored")
    offset = max(HEADER_SIZE, -(-HEADER_SIZE // align) * align)
    fields = [MAGIC, BIN_VERSION, HEADER_SIZE, offset, len(blob.data), blob.crc32, version,
              bytes.fromhex(blob.sha256), name.ljust(NAME_FIELD, b"\0"), align, index, count]  # fmt: skip
    head = HEADER.pack(*fields, 0)
    head = head[:124] + struct.pack("<I", zlib.crc32(head[:124]))
    return head + bytes(offset - HEADER_SIZE) + blob.data


def embed_bin(opened: Opened, out: Path, *, prefix: str = "model", align: int = 64) -> list[Path]:
    """Write `<prefix>_<file>.bin` for each engine file into `out`; returns the paths."""
    p = check_options(prefix, align)
    blobs = engine_blobs(opened, p)
    written = []
    for i, b in enumerate(blobs):
        path = out / f"{b.ident}.bin"
        write_bytes_atomic(path, bin_image(b, index=i, count=len(blobs), version=opened.manifest.version, align=align))
        written.append(path)
    return written


def parse_bin_header(data: bytes) -> dict[str, Any]:
    """Read a raw image's header (as a bootloader would); raises BundleError when it is not one or is damaged."""
    if len(data) < HEADER_SIZE or data[:8] != MAGIC:
        raise BundleError("not an edgeres raw image (magic EDGRSBIN missing)")
    if zlib.crc32(data[:124]) != struct.unpack_from("<I", data, 124)[0]:
        raise BundleError("the raw image's header CRC-32 does not match: damaged header")
    (_, version, size, offset, length, crc, bundle_version, sha, name, align, index, count, _) = HEADER.unpack(
        data[:HEADER_SIZE]
    )
    payload = data[offset : offset + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise BundleError("the raw image's payload CRC-32 does not match: damaged or truncated payload")
    return {
        "format_version": version,
        "header_size": size,
        "payload_offset": offset,
        "payload_size": length,
        "crc32": crc,
        "bundle_version": bundle_version,
        "sha256": sha.hex(),
        "name": name.rstrip(b"\0").decode("utf-8"),
        "alignment": align,
        "index": index,
        "count": count,
        "payload": payload,
    }
