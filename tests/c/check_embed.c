/* What firmware does with `edgeres embed` output, as a test: check the engine arrays' alignment and CRC-32 (with a
 * CRC written here, not the generated one), parse a raw image's header byte by byte (little-endian), compare its
 * payload with the array, run the golden comparison, and write the array's bytes out for the test to compare.
 *
 *   check_embed RAW_IMAGE.bin BLOB_INDEX OUT_FILE
 *
 * Built with: gcc -std=c11 -Wall -Wextra -Werror -I<embed dir> check_embed.c <prefix>.c [<prefix>_blobs.S]
 * with -DPREFIX_H="<prefix>.h" and the names below mapped by -D (see tests/test_bundle.py). Exit 0 when all holds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include PREFIX_H

static uint32_t crc32_bitwise(const unsigned char *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) {
            crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
        }
    }
    return crc ^ 0xFFFFFFFFu;
}

static uint64_t le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static int fail(const char *what) {
    fprintf(stderr, "FAIL: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        return fail("usage: check_embed RAW_IMAGE.bin BLOB_INDEX OUT_FILE");
    }
    unsigned long index = strtoul(argv[2], NULL, 10);
    if (index >= BLOBS_COUNT) {
        return fail("no such blob");
    }
    const BLOB_T *blob = &BLOBS[index];
    if ((uintptr_t)blob->data % ALIGNMENT != 0u) {
        return fail("engine array is not aligned");
    }
    uint32_t crc = crc32_bitwise(blob->data, blob->size);
    if (crc != blob->crc32) {
        return fail("engine array CRC-32 differs from the recorded one");
    }
    if (CHECK_BLOBS() != 0) {
        return fail("the generated check_blobs() refused the blobs");
    }
    /* the raw image: header fields at their documented offsets */
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        return fail("cannot open the raw image");
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *img = malloc((size_t)n);
    if (img == NULL || fread(img, 1, (size_t)n, f) != (size_t)n) {
        return fail("cannot read the raw image");
    }
    fclose(f);
    if (n < 128 || memcmp(img, "EDGRSBIN", 8) != 0 || le(img + 8, 2) != 1u || le(img + 10, 2) != 128u) {
        return fail("bad magic, version or header size");
    }
    if (crc32_bitwise(img, 124) != (uint32_t)le(img + 124, 4)) {
        return fail("header CRC-32");
    }
    uint64_t offset = le(img + 12, 4), size = le(img + 16, 8);
    if (offset % le(img + 112, 4) != 0u || offset + size != (uint64_t)n || size != blob->size) {
        return fail("payload offset or size");
    }
    if ((uint32_t)le(img + 24, 4) != crc || crc32_bitwise(img + offset, size) != crc) {
        return fail("payload CRC-32");
    }
    if (le(img + 28, 4) != BUNDLE_VERSION || memcmp(img + 32, blob->sha256, 32) != 0) {
        return fail("bundle version or sha256");
    }
    if (strncmp((const char *)img + 64, blob->name, 48) != 0 || memcmp(img + offset, blob->data, size) != 0) {
        return fail("file name or payload bytes");
    }
    /* the golden comparison: the expected logits pass, a shifted copy does not */
    if (METADATA.golden_count > 0u) {
        float *logits = malloc(METADATA.num_classes * sizeof(float));
        if (logits == NULL) {
            return fail("out of memory");
        }
        memcpy(logits, METADATA.golden_logits, METADATA.num_classes * sizeof(float));
        if (GOLDEN_COMPARE(0, logits) != 0) {
            return fail("golden compare refused the expected logits");
        }
        logits[0] += 2.0f * METADATA.golden_max_abs_diff + 1.0f;
        if (GOLDEN_COMPARE(0, logits) == 0) {
            return fail("golden compare accepted logits beyond the tolerance");
        }
        free(logits);
    }
    FILE *out = fopen(argv[3], "wb");
    if (out == NULL || fwrite(blob->data, 1, blob->size, out) != blob->size || fclose(out) != 0) {
        return fail("cannot write the bytes out");
    }
    free(img);
    printf("OK %s %lu bytes crc32 %08x version %u classes %u\n", blob->name, (unsigned long)blob->size,
           (unsigned)crc, (unsigned)METADATA.bundle_version, (unsigned)METADATA.num_classes);
    return 0;
}
