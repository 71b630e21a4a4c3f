"""Deploy bundles: one signed archive per variant holding what a device needs to run the model as it was measured.

- `manifest`: the manifest schema (edgeres.bundle/1), its self-digest, and the check of every file against it;
- `tarsafe`: reading archives without trusting them (regular files with safe relative names only) and writing them
  deterministically;
- `pack`: writing a bundle from a compiled deliverable, with golden self-test data;
- `sign`: key generation, and signatures in the OpenSSF model-signing format (ECDSA P-256, offline);
- `verify`: opening a bundle - extraction, signature, manifest, files, anti-rollback - before anything is loaded;
- `embed`: C arrays (or assembler .incbin), a CMake snippet and raw images with a fixed header, for firmware;
- `load`: `edgeres.load(bundle).predict(images)`, with the benchmark's runner and preprocessing.

The package stage (edgeres.stages.package) writes bundles in a build; the CLI has `package`, `keygen`, `sign`,
`verify` and `embed`. Nothing here imports a runtime or a crypto package until it is used.
"""
