"""The `edgeres` commands that work on deploy bundles: keygen, sign, verify, eval, embed (registered on the CLI
group by edgeres.cli). Imports nothing heavy at module level."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from edgeres.errors import UsageError


@click.command(
    "eval",
    help="Reproduce the report's top-1 from a bundle here: the recipe's split as uint8 images through the bundle's "
    "own preprocessing and engine (as on the device); exit 3 if the count of correct images differs from the "
    "build's by more than --tolerance.",
)
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--recipe", required=True, type=click.Path(exists=True, dir_okay=False), help="The recipe it was built from."
)
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False), help="Public key (PEM; repeatable).")
@click.option("--integrity-only", is_flag=True, help="Check the files, not the signature (unsigned bundles).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads.")
@click.option(
    "--tolerance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="IMAGES",
    help="Images that may differ from the build's count (another CPU may flip images at a decision boundary).",
)
def eval_bundle(
    bundle: str, recipe: str, split: str, keys: tuple[str, ...], integrity_only: bool, threads: int, tolerance: int
) -> None:
    from edgeres.bundle.load import load
    from edgeres.errors import StageError
    from edgeres.evaluation import describe, evaluate

    with load(bundle, public_keys=list(keys), integrity_only=integrity_only, threads=threads) as model:
        result = evaluate(model, recipe, split)
        name = model.opened.manifest.variant
    for line in describe(name, result):
        click.echo(line)
    if result.measured_correct is not None and abs(result.correct - result.measured_correct) > tolerance:
        raise StageError(
            f"{bundle}: {result.correct}/{result.images} correct here, the build measured "
            f"{result.measured_correct}/{result.measured_images}: more than --tolerance {tolerance} images apart"
        )


@click.command(help="Make a signing key pair (ECDSA P-256, PEM): NAME.key (private, mode 0600) and NAME.pub.")
@click.argument("name", type=click.Path(dir_okay=False))
@click.option("--password-env", metavar="VAR", help="Encrypt the private key with the password in this variable.")
def keygen(name: str, password_env: str | None) -> None:
    from edgeres.bundle.sign import generate_key

    password = _password(password_env)
    base = Path(name)
    kid = generate_key(
        base.with_suffix(".key"), base.with_suffix(".pub"), password=password.encode() if password else None
    )
    click.echo(f"private key {base.with_suffix('.key')} (keep it secret: never put it in a bundle or a repository)")
    click.echo(f"public key {base.with_suffix('.pub')} (install it on devices), key id {kid}")


def _password(env: str | None) -> str | None:
    import os

    if env is None:
        return None
    if env not in os.environ:
        raise UsageError(f"--password-env {env}: the variable is not set")
    return os.environ[env]


@click.command(help="Sign a bundle (OpenSSF model-signing format, every file covered); replaces an earlier signature.")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM).")
@click.option("--out", type=click.Path(dir_okay=False), help="Signed bundle [default: replace BUNDLE].")
@click.option("--password-env", metavar="VAR", help="The private key's password is in this variable.")
def sign(bundle: str, key: str, out: str | None, password_env: str | None) -> None:
    from edgeres.bundle.sign import sign_bundle

    t0 = time.monotonic()
    kid = sign_bundle(Path(bundle), Path(key), out=Path(out) if out else None, password=_password(password_env))
    click.echo(f"signed {out or bundle} with key {kid} in {time.monotonic() - t0:.2f}s")


def _verify_options(f: Any) -> Any:
    f = click.option(
        "--target", help="Refuse a bundle for another target than this one (a target edgeres knows, or the bundle's)."
    )(f)
    f = click.option(
        "--min-version",
        type=click.IntRange(0, 2**32 - 1),
        help="Refuse a bundle older than this version (anti-rollback; 0 to 2^32-1, as bundle versions).",
    )(f)
    f = click.option("--integrity-only", is_flag=True, help="No key: check only that files match the manifest.")(f)
    f = click.option(
        "--key",
        "keys",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Public key (PEM) of a trusted signer (repeatable: any may have signed).",
    )(f)
    return f


@contextmanager
def _opened_bundle(
    bundle: str,
    purpose: str,
    keys: tuple[str, ...],
    integrity_only: bool,
    min_version: int | None,
    target: str | None = None,
) -> Iterator[Any]:
    """The bundle checked (signature unless integrity_only, manifest, version) and unpacked into a temporary folder
    that lives as long as the `with` block. A `target` edgeres does not know (not built in, not the bundle's own
    recipe-defined target) is a usage error."""
    import tempfile

    from edgeres.bundle.verify import open_bundle

    with tempfile.TemporaryDirectory(prefix=f"edgeres-{purpose}-") as tmp:
        opened = open_bundle(
            Path(bundle), Path(tmp), public_keys=[Path(k) for k in keys], integrity_only=integrity_only,
            min_version=min_version,
        )  # fmt: skip
        if target is not None:
            from edgeres.targets import builtin_targets

            known = sorted({*builtin_targets(), str(opened.manifest.target.get("name"))})
            if target not in known:
                raise UsageError(
                    f"--target {target!r} is not a target edgeres knows: pass one of {', '.join(known)} (the "
                    "built-in targets, and this bundle's own; a recipe's own target is known only to its bundles)"
                )
        yield opened


def _signature_warning(opened: Any) -> str | None:
    """With integrity only: a warning when the bundle carries a signature that was not checked (and whether it
    can even be read), else None."""
    if opened.signature is None or opened.signed_by is not None:
        return None
    from edgeres.bundle.manifest import SIGNATURE
    from edgeres.bundle.sign import read_signature

    try:
        read_signature(opened.signature)
        state = "it was not checked"
    except ValueError:
        state = "it was not checked, and it cannot even be read as a model-signing signature (damaged or not one)"
    return (
        f"warning: {opened.source} carries a signature ({SIGNATURE}) and --integrity-only was asked, so {state}: the "
        "files match the manifest, but who made them is unknown. Pass --key PUBLIC.pem to check the signature"
    )


@click.command(help="Check a bundle before use: safe archive, signature, manifest and every file's sha256, version.")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_verify_options
@click.option("--load", "load_too", is_flag=True, help="Also load the engine here and run the golden self-test.")
def verify(
    bundle: str,
    keys: tuple[str, ...],
    integrity_only: bool,
    min_version: int | None,
    target: str | None,
    load_too: bool,
) -> None:
    from edgeres.bundle.load import device_differences

    t0 = time.monotonic()
    # Nothing is printed until every check passed: a refusal is never preceded by an OK.
    with _opened_bundle(bundle, "verify", keys, integrity_only, min_version, target) as opened:
        m = opened.manifest
        if opened.signed_by:
            by = f"signed by {opened.signed_by}"
        elif opened.signature is not None:
            by = "integrity only (signature present, not checked)"
        else:
            by = "integrity only (signature not checked)"
        ok = (
            f"{bundle}: OK, {len(m.files) + 1} files match the manifest; {by}; {m.name}/{m.variant} version "
            f"{m.version}, target {m.target.get('name')}, {m.engine.format} {m.engine.precision}"
        )
        warning = _signature_warning(opened)
        if target is not None or load_too:
            differences = device_differences(opened, target=target)
            if differences:
                from edgeres.errors import BundleError

                raise BundleError(f"{bundle} was not built for this device: " + "; ".join(differences) + ". Refused")
    loaded: list[str] = []
    if load_too:
        from edgeres.bundle.load import load

        with load(
            Path(bundle), public_keys=[Path(k) for k in keys], integrity_only=integrity_only, min_version=min_version,
            target=target, self_test=False,
        ) as model:  # fmt: skip
            loaded = _load_summary(model, model.self_test())
    click.echo(f"{ok} ({time.monotonic() - t0:.2f}s)")
    for line in loaded:
        click.echo(line)
    if warning is not None:
        click.echo(warning, err=True)


def _load_summary(model: Any, result: dict[str, Any]) -> list[str]:
    """`verify --load`'s report of the loaded engine and its boot self-test, in words."""
    e = model.opened.manifest.engine
    effective = model.runner.effective() if model.runner is not None else {}
    ran_as = f", runs as {effective['inference_precision']}" if effective.get("inference_precision") else ""
    lines = [f"loaded: {e.format} engine {e.primary} on {e.runtime} {model.runner.version()} ({e.precision}{ran_as})"]
    if not result.get("ran"):
        return [*lines, f"self-test: not run: {result.get('reason', 'no golden data')}"]
    checks = [
        f"logits within {result['max_abs_diff']:.3g} of the golden ones (allowed {result['tolerance']:g})",
        "top-1 class the same on every image" if result["top1_match"] else "top-1 class changed",
    ]
    if "preprocessing_matches" in result:
        checks.append(
            "preprocessing of the golden images gives the golden inputs"
            if result["preprocessing_matches"]
            else "preprocessing differs"
        )
    return [*lines, f"self-test: passed on {result['images']} golden images: " + "; ".join(checks)]


@click.command(help="Write a verified bundle's engine for firmware: C arrays (or .incbin) + CMake, or raw images.")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["c", "bin"]), required=True, help="C sources, or raw images.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--prefix", default="model", show_default=True, help="Prefix of C names and files.")
@click.option("--align", type=int, default=64, show_default=True, help="Alignment of engine data in bytes.")
@click.option("--incbin", is_flag=True, help="C: the engine bytes through an assembler .incbin file (large engines).")
@_verify_options
def embed(
    bundle: str,
    fmt: str,
    out: str,
    prefix: str,
    align: int,
    incbin: bool,
    keys: tuple[str, ...],
    integrity_only: bool,
    min_version: int | None,
    target: str | None,
) -> None:
    from edgeres.bundle.embed import check_options, embed_bin, embed_c
    from edgeres.errors import BundleError

    check_options(prefix, align)  # before the bundle is opened
    t0 = time.monotonic()
    with _opened_bundle(bundle, "embed", keys, integrity_only, min_version, target) as opened:
        warning = _signature_warning(opened)
        if target is not None and opened.manifest.target.get("name") != target:
            raise BundleError(f"{bundle} is for target {opened.manifest.target.get('name')}, not {target}; refused")
        if fmt == "c":
            written = embed_c(opened, Path(out), prefix=prefix, align=align, incbin=incbin)
        else:
            written = embed_bin(opened, Path(out), prefix=prefix, align=align)
    for p in written:
        click.echo(f"wrote {p}")
    click.echo(f"embedded in {time.monotonic() - t0:.2f}s")
    if warning is not None:
        click.echo(warning, err=True)


COMMANDS = (keygen, sign, verify, eval_bundle, embed)
