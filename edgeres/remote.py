"""A team's shared cache: committed cache entries on object storage (through fsspec), signed, verified before use.

Layout under the remote URL (`s3://bucket/prefix`, `gs://...`, `az://...`, `file:///shared/mount` or a plain path):

- `blobs/<sha256>`: every file of every entry, named by its content, so two uploaders of one file write the same
  bytes and an entry's files are never overwritten by different ones.
- `entries/<stage type>-<key>.json`: the signed envelope naming an entry's files. Written last, create-only (S3
  `If-None-Match: *`, fsspec's exclusive create; a hard link on a file system): a killed upload leaves blobs that
  nothing names, never a visible entry, and of two machines pushing one key the first wins and the second takes the
  winner's entry, so everything downstream agrees with it.
- `used/<stage type>-<key>`: a marker written on every pull; `edgeres cache clean --remote --older-than` reads its
  time as the entry's last use.

Envelope: `{"schema", "payload": base64 of canonical JSON, "signature": base64 DER ECDSA P-256 / SHA-256 over the
payload bytes, "key_id": sha256 of the signer's PEM public key}`. The payload holds the entry's name, its local
sidecar (artifact.json: key material, files and their sha256, metrics), each file's size, and where edgeres' code
came from (version, git commit or installed release, and the sha256 of its package files): training keys do not
hash edgeres' own source, so only unmodified code pushes.

Look-up order (edgeres.pipeline): local entry, then remote entry (downloaded into the local cache, every file
re-hashed against the signed sidecar before use), then run the stage, commit locally and upload. A remote entry
whose signature no trusted key verifies, or whose sidecar is malformed or names paths outside its folder, is refused
(CacheError, exit 6, naming it). A missing or corrupted remote file is refused with a warning and the stage runs here.
Network errors are retried with backoff; then the build goes on without the remote (a warning, not a failure).
Credentials come from each storage library's usual chain (environment, profiles, instance roles), never a recipe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgeres import faults
from edgeres.artifact import SIDECAR, Artifact, is_inside, read_artifact, sha256_file, write_json_atomic
from edgeres.deps import require
from edgeres.errors import CacheError, UsageError
from edgeres.remote_trust import check_public_key, sign, signer_of, source_state

ENV_URL = "EDGERES_REMOTE_CACHE"
ENV_KEY = "EDGERES_CACHE_KEY"
ENV_TRUSTED = "EDGERES_CACHE_TRUSTED_KEYS"
ATTEMPTS = 4  # one try and three retries, waiting BACKOFF_S, then twice, then four times as long
BACKOFF_S = 0.5
# Protocols whose create-only write (the entry, written last) is tested: S3 through s3fs (If-None-Match: *, HTTP 412),
# a file system (a hard link). gcsfs and adlfs implement exclusive creates too, untested: they pull only.
PUSH_PROTOCOLS = ("s3", "file", "local")
MAX_ENVELOPE_BYTES = 16 << 20  # an entry's signed JSON: a few kB to a few MB (its key material and metrics)
BLOB_GRACE_S = 3600.0  # clean never collects a blob younger than this: an upload in progress may be about to name it
PURPOSE = "use a remote cache"
T = TypeVar("T")


class RemoteUnavailable(CacheError):
    """The remote could not be reached (after retries) or refused the request: a build goes on without it (a cache
    command exits 6 saying so)."""


class _Corrupt(Exception):
    """A remote entry's file is missing or differs from its signed hash: the stage runs here instead."""


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    push: bool = True
    trusted_keys: tuple[Path, ...] = ()
    signing_key: Path | None = None
    origin: str = "--remote"  # where the URL came from, for messages


def remote_settings(
    *,
    flag_url: str | None,
    recipe_url: str | None = None,
    recipe_push: bool = True,
    recipe_trusted: tuple[str, ...] = (),
    flag_key: str | None = None,
    flag_trusted: tuple[str, ...] = (),
    push: bool | None = None,
) -> RemoteSettings | None:
    """The remote tier's settings: URL from --remote, else $EDGERES_REMOTE_CACHE, else the recipe's cache.remote;
    trusted public keys from $EDGERES_CACHE_TRUSTED_KEYS (colon-separated paths), else the recipe's
    cache.trusted_keys; the signing key from --cache-key, else $EDGERES_CACHE_KEY (never the recipe). None: no
    remote. A remote without trusted keys is refused: nothing it holds could be verified."""
    env_url = os.environ.get(ENV_URL) or None
    url, origin = next(
        ((u, o) for u, o in ((flag_url, "--remote"), (env_url, ENV_URL), (recipe_url, "cache.remote")) if u),
        (None, ""),
    )
    if url is None:
        return None
    env_trusted = [p for p in os.environ.get(ENV_TRUSTED, "").split(os.pathsep) if p]
    trusted = tuple(Path(p) for p in (flag_trusted or env_trusted or recipe_trusted))
    if not trusted:
        raise UsageError(
            f"the remote cache {url} (from {origin}) has no trusted keys, so none of its entries could be verified; "
            f"set {ENV_TRUSTED} to the team's public key file(s) (colon-separated), or cache.trusted_keys in the "
            "recipe (`edgeres keygen` writes a key pair)"
        )
    for p in trusted:
        if not p.is_file():
            raise UsageError(f"trusted cache key {p} does not exist; check {ENV_TRUSTED} or cache.trusted_keys")
        check_public_key(p)
    key_path = flag_key or os.environ.get(ENV_KEY) or None
    key = Path(key_path) if key_path else None
    if key is not None and not key.is_file():
        raise UsageError(f"cache signing key {key} does not exist; check --cache-key or {ENV_KEY}")
    return RemoteSettings(
        url=url, push=recipe_push if push is None else push, trusted_keys=trusted, signing_key=key, origin=origin
    )


# --------------------------------------------------------------------------------------------------- the store


def _transient(exc: BaseException) -> bool:
    """Worth another try: a connection or server failure, not a missing file, a lost race or a refusal."""
    if isinstance(exc, FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    return _from_storage_library(exc) and "credential" not in type(exc).__name__.lower()


def _from_storage_library(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in (
        "botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "gcsfs", "azure", "adlfs", "s3fs"
    )  # fmt: skip


class Store:
    """The remote's files, by path relative to its root, through fsspec; every call retried on transient errors."""

    def __init__(self, url: str) -> None:
        fsspec = require("fsspec", purpose=PURPOSE)
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            protocol = url.split("://", 1)[0] if "://" in url else "file"
            extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
            hint = f"; install it with: pip install 'edgeres[remote]' {extra}" if extra else ""
            raise UsageError(f"remote cache {url}: {exc}{hint}") from exc
        self.url = url
        self.root = str(root).rstrip("/")
        self.local = type(self.fs).__name__ == "LocalFileSystem"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() with retries and backoff on transient errors; RemoteUnavailable when they run out or on refusals
        other than a missing file (FileNotFoundError) or a lost create-only write (FileExistsError)."""
        for attempt in range(ATTEMPTS):
            try:
                return fn()
            except (FileNotFoundError, FileExistsError):
                raise
            except Exception as exc:
                if not _transient(exc):
                    if not (isinstance(exc, OSError) or _from_storage_library(exc)):
                        raise  # a bug, not the remote's state
                    raise RemoteUnavailable(f"{what} at {self.url}: {type(exc).__name__}: {exc}") from exc
                if attempt == ATTEMPTS - 1:
                    raise RemoteUnavailable(
                        f"{what} at {self.url} failed {ATTEMPTS} times: {type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(BACKOFF_S * 2**attempt)
                self.fs.invalidate_cache()
        raise AssertionError("unreachable")

    def read(self, rel: str) -> bytes | None:
        try:
            return self.call(f"reading {rel}", lambda: self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            return None

    def size(self, rel: str) -> int | None:
        def info() -> int:
            self.fs.invalidate_cache(self.path(rel))
            return int(self.fs.info(self.path(rel))["size"])

        try:
            return self.call(f"looking up {rel}", info)
        except FileNotFoundError:
            return None

    def get(self, rel: str, dest: Path) -> None:
        self.call(f"downloading {rel}", lambda: self.fs.get_file(self.path(rel), str(dest)))

    def put(self, src: Path, rel: str) -> None:
        """Upload a file so readers see all of it or nothing: an object store's PUT (and multipart completion) is
        atomic; on a file system it is written beside its name and renamed into place."""
        if not self.local:
            self.call(f"uploading {rel}", lambda: self.fs.put_file(str(src), self.path(rel)))
            return
        dest = Path(self.path(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `data` at `rel` only if nothing is there (True), else leave what is there (False). Readers never see
        a part: an object store's conditional PUT is atomic; on a file system the file is written aside and hard
        linked into place (link fails if the name exists)."""
        if not self.local:

            def write() -> None:
                with self.fs.open(self.path(rel), "xb") as f:
                    f.write(data)

            try:
                self.call(f"creating {rel}", write)
                return True
            except FileExistsError:
                return False
        dest = Path(self.path(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, dest)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        if self.local:
            Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)
        self.call(f"writing {rel}", lambda: self.fs.pipe_file(self.path(rel), data))

    def listing(self, prefix: str) -> dict[str, dict[str, Any]]:
        """name -> fsspec info (size, and a modification time under a protocol-specific field) under `prefix`/."""

        def ls() -> dict[str, dict[str, Any]]:
            self.fs.invalidate_cache(self.path(prefix))
            try:
                infos = self.fs.ls(self.path(prefix), detail=True)
            except FileNotFoundError:
                return {}
            return {str(i["name"]).rstrip("/").rsplit("/", 1)[-1]: i for i in infos if i.get("type") != "directory"}

        return self.call(f"listing {prefix}/", ls)

    def remove(self, rel: str) -> None:
        try:
            self.call(f"removing {rel}", lambda: self.fs.rm_file(self.path(rel)))
        except FileNotFoundError:
            pass


def modified_time(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time (seconds since the epoch), whatever the protocol calls it."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


# ------------------------------------------------------------------------------------------------ the remote tier


@dataclass
class RemoteEntry:
    name: str
    size: int
    last_used: float | None
    signer: str
    stage: str


@dataclass
class RemoteCache:
    """The remote tier of one build (or one `edgeres cache` command)."""

    settings: RemoteSettings
    log: Callable[[str], None] = print
    store: Store = field(init=False)
    down: str | None = None  # why the remote was given up for the rest of this process
    pulled_s: float = 0.0  # seconds spent downloading (the build prints it)
    pulled_bytes: int = 0
    _repair: set[str] = field(default_factory=set)  # blobs found corrupt on pull: re-uploaded on push
    _why_not_push: str | None = None
    _push_checked: bool = False

    def __post_init__(self) -> None:
        self.store = Store(self.settings.url)

    def _give_up(self, exc: RemoteUnavailable) -> None:
        self.down = str(exc)
        self.log(f"warning: remote cache unavailable ({exc}); building without it from here on")

    # ----------------------------------------------------------------------------------------------- pull

    def verified(self, name: str, raw: bytes) -> tuple[dict[str, Any], str]:
        """The payload of entry `name`'s envelope and who signed it; CacheError (exit 6) when it is unsigned, signed
        by no trusted key, or not a well-formed entry of that name."""
        where = f"remote cache entry {name} at {self.settings.url}"
        fix = (
            f"Remove it with `edgeres cache clean --remote {self.settings.url} --entry {name}` (or add its signer's "
            f"public key to {ENV_TRUSTED} if you trust it)"
        )
        try:
            signer, payload_bytes = signer_of(json.loads(raw), self.settings.trusted_keys)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CacheError(f"{where} is refused: {exc}. {fix}") from exc
        if signer is None:
            names = ", ".join(str(p) for p in self.settings.trusted_keys)
            raise CacheError(f"{where} is refused: none of the trusted keys ({names}) verifies its signature. {fix}")
        try:
            payload = json.loads(payload_bytes)
            sidecar, sizes = payload["sidecar"], payload["sizes"]
            files = sidecar["files"]
            listed = [sidecar["primary"], *sidecar.get("deliverables", [])]
            ok = (
                payload["entry"] == name
                and f"{sidecar['stage_type']}-{sidecar['key']}" == name
                and _plain_paths(files)
                and bool(files)
                and isinstance(sizes, dict)
                and set(sizes) == set(files)
                and all(isinstance(n, int) and n >= 0 for n in sizes.values())
                and all(
                    isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef") for v in files.values()
                )
                and all(isinstance(rel, str) and rel in files for rel in listed)
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheError(f"{where} is refused: its signed payload is malformed ({exc}). {fix}") from exc
        if not ok:
            raise CacheError(
                f"{where} is refused: its signed payload does not describe an entry of that name with files inside "
                f"its folder (another entry's signature replayed, or paths outside). {fix}"
            )
        return payload, signer.name

    def fetch(self, final: Path) -> Artifact | None:
        """Download the remote entry for `final` (a local entry's folder, absent) into the local cache, every file
        re-hashed against the signed sidecar; None when the remote has none, is down, or its files are damaged."""
        if self.down is not None:
            return None
        staging = self._pull(final)
        if staging is None:
            return None
        try:
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return read_artifact(final)

    def _pull(self, final: Path) -> Path | None:
        """The remote entry for `final` downloaded, verified and readable as an artifact in a staging folder beside
        it (the caller renames it into place), or None (no entry, remote down, a damaged or unreadable entry: a
        warning). CacheError when the entry is refused for its signature or its paths."""
        name = final.name
        try:
            size = self.store.size(f"entries/{name}.json")
            if size is not None and size > MAX_ENVELOPE_BYTES:
                self.log(f"warning: remote cache entry {name} is {size} bytes, not an entry edgeres writes; ignored")
                return None
            raw = self.store.read(f"entries/{name}.json") if size is not None else None
        except RemoteUnavailable as exc:
            self._give_up(exc)
            return None
        if raw is None:
            return None
        payload, signer = self.verified(name, raw)
        staging = final.with_name(f"{name}.pull-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        t0 = time.monotonic()
        try:
            staging.mkdir(parents=True)
            size = self._download(payload, staging)
            write_json_atomic(staging / SIDECAR, payload["sidecar"])
            if read_artifact(staging) is None:
                raise _Corrupt("its sidecar is not one this edgeres reads (another schema version?)")
        except _Corrupt as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.log(f"warning: remote cache entry {name} is refused: {exc}; running the stage here")
            return None
        except RemoteUnavailable as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._give_up(exc)
            return None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        seconds = time.monotonic() - t0
        self.pulled_s += seconds
        self.pulled_bytes += size
        with contextlib.suppress(RemoteUnavailable):
            self.store.write(f"used/{name}", f"{time.time():.0f}\n".encode())
        self.log(
            f"pulled {name[:40]} ({size / 1e6:.1f} MB in {seconds:.1f}s) from {self.settings.url}, signed by {signer}"
        )
        return staging

    def _download(self, payload: dict[str, Any], folder: Path) -> int:
        total = 0
        for rel, sha in sorted(payload["sidecar"]["files"].items()):
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            remote_size = self.store.size(f"blobs/{sha}")
            if remote_size is None:
                raise _Corrupt(f"its file {rel} (blob {sha[:12]}) is missing from the remote")
            if remote_size != payload["sizes"][rel]:
                self._repair.add(sha)
                raise _Corrupt(
                    f"its file {rel} is {remote_size} bytes on the remote where the signed entry says "
                    f"{payload['sizes'][rel]} (corrupted or truncated on the remote); not downloaded"
                )
            try:
                self.store.get(f"blobs/{sha}", dest)
            except FileNotFoundError:
                raise _Corrupt(f"its file {rel} (blob {sha[:12]}) is missing from the remote") from None
            got = sha256_file(dest)
            if got != sha:
                self._repair.add(sha)
                raise _Corrupt(
                    f"its file {rel} has sha256 {got[:12]}... where the signed sidecar says {sha[:12]}... "
                    "(corrupted or truncated on the remote)"
                )
            total += dest.stat().st_size
        return total

    # ----------------------------------------------------------------------------------------------- push

    def why_not_push(self) -> str | None:
        """Why this process pushes nothing (said once), or None."""
        if not self._push_checked:
            self._push_checked = True
            self._why_not_push = self._push_refusal()
            if self._why_not_push:
                self.log(f"remote cache: pulling only; {self._why_not_push}")
        return self._why_not_push

    def _push_refusal(self) -> str | None:
        if not self.settings.push:
            return "push is off (cache.remote.push: false)"
        protocol = self.settings.url.split("://", 1)[0] if "://" in self.settings.url else "file"
        if protocol not in PUSH_PROTOCOLS:
            return (
                f"pushing to {protocol}:// is not supported: its create-only writes are untested here "
                f"(pushes go to {', '.join(p + '://' for p in PUSH_PROTOCOLS)}); pulls work"
            )
        if self.settings.signing_key is None:
            return f"no signing key to push with (--cache-key or {ENV_KEY})"
        state = source_state()
        if state["modified"]:
            shown = ", ".join(state["modified"][:5]) + (" ..." if len(state["modified"]) > 5 else "")
            base = f"commit {str(state.get('commit'))[:12]}" if "commit" in state else "its installed release"
            return (
                f"edgeres' own code differs from {base} ({shown}): entries built with unreleased code are not "
                "shared (commit it, or install a release)"
            )
        return None

    def publish(self, final: Path, *, forced: bool = False) -> None:
        """Upload the committed local entry `final` (blobs first, the signed envelope last, create-only). When
        another machine pushed this key first, its entry replaces the local one (unless the stage was forced), so
        the stages after it build on what the team has."""
        if self.down is not None or self.why_not_push() is not None:
            return
        art = read_artifact(final)
        if art is None:
            return
        name = final.name
        try:
            sizes = {}
            for rel, sha in sorted(art.files.items()):
                sizes[rel] = (final / rel).stat().st_size
                if sha in self._repair or self.store.size(f"blobs/{sha}") != sizes[rel]:
                    self.store.put(final / rel, f"blobs/{sha}")
                    self._repair.discard(sha)
            faults.point("remote:blobs-uploaded", art.stage_type)
            payload = {
                "entry": name,
                "sidecar": art.metadata,
                "sizes": sizes,
                "source": source_state(),
                "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            assert self.settings.signing_key is not None
            envelope = sign(json.dumps(payload, sort_keys=True).encode(), self.settings.signing_key)
            created = self.store.create(f"entries/{name}.json", json.dumps(envelope).encode())
        except RemoteUnavailable as exc:
            self._give_up(exc)
            return
        except OSError as exc:  # a missing bucket, a read-only mount, a full one: the build goes on without pushing
            self._give_up(RemoteUnavailable(f"pushing {name[:40]} to {self.settings.url}: {type(exc).__name__}: {exc}"))
            return
        if created:
            self.log(f"pushed {name[:40]} ({sum(sizes.values()) / 1e6:.1f} MB) to {self.settings.url}")
            return
        self._lost(final, art, forced=forced)

    def _lost(self, final: Path, mine: Artifact, *, forced: bool) -> None:
        name = final.name
        if forced:
            self.log(
                f"remote cache already holds {name[:40]}; --force kept this build's entry here, and the remote "
                "keeps its own"
            )
            return
        staging = self._pull(final)  # downloaded beside ours first: readers of ours never find it missing for long
        if staging is None:  # damaged or unreachable: keep ours
            self.log(
                f"remote cache: another build pushed {name[:40]} first, and its entry cannot be used; kept this one"
            )
            return
        aside = final.with_name(f"{name}.old-{os.getpid()}")  # `cache clean` knows .old-PID leftovers
        try:
            os.rename(final, aside)
            os.rename(staging, final)
        finally:
            if not final.exists() and aside.exists():
                os.rename(aside, final)
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
        theirs = read_artifact(final)
        assert theirs is not None
        same = "the same files" if theirs.files == mine.files else "different files (non-deterministic kernels?)"
        self.log(
            f"remote cache: another build pushed {name[:40]} first, with {same}; using its entry so that everything "
            "downstream agrees with the team's"
        )

    # ---------------------------------------------------------------------------------------- listing, cleaning

    def entries(self) -> list[RemoteEntry]:
        """Every remote entry with its size, last use (pull marker, else upload) and signer (a trusted key's file
        name, or why none)."""
        listed = self.store.listing("entries")
        used = self.store.listing("used")
        out = []
        for fname, info in sorted(listed.items()):
            if not fname.endswith(".json"):
                continue
            name = fname[: -len(".json")]
            raw = self.store.read(f"entries/{fname}")
            size, signer, stage = 0, "?", name.split("-", 1)[0]
            try:
                payload, signer = self.verified(name, raw or b"")
                size = sum(payload["sizes"].values())
            except CacheError as exc:
                signer = "REFUSED: " + str(exc).split(" is refused: ", 1)[-1].split(". Remove", 1)[0]
            times = [t for t in (modified_time(info), modified_time(used.get(name, {}))) if t is not None]
            out.append(RemoteEntry(name, size, max(times) if times else None, signer, stage))
        return out

    def remove_entry(self, name: str) -> None:
        self.store.remove(f"entries/{name}.json")
        self.store.remove(f"used/{name}")

    def collect_blobs(self) -> tuple[int, int]:
        """Remove blobs no entry names (older than BLOB_GRACE_S: an upload may be about to name a newer one).
        Returns (count, bytes) removed."""
        named: set[str] = set()
        for fname in self.store.listing("entries"):
            raw = self.store.read(f"entries/{fname}")
            try:
                payload = json.loads(base64.b64decode(json.loads(raw or b"{}").get("payload", "")))
                named.update(payload["sidecar"]["files"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # an entry that cannot be read names nothing it could protect
        count = size = 0
        now = time.time()
        for blob, info in self.store.listing("blobs").items():
            t = modified_time(info)
            if blob in named or t is None or now - t < BLOB_GRACE_S:
                continue
            self.store.remove(f"blobs/{blob}")
            count += 1
            size += int(info.get("size") or 0)
        return count, size


def _plain_paths(files: Any) -> bool:
    """Every file name a relative path of plain parts: no absolute path, `..`, `.`, empty part or backslash, and no
    two names for one file."""
    if not isinstance(files, dict):
        return False
    for rel in files:
        if not isinstance(rel, str) or not is_inside(rel) or rel == SIDECAR:
            return False
        if any(part in ("", ".", "..") for part in rel.split("/")):
            return False
    return True


def local_entries(cache_dir: Path) -> Iterator[Path]:
    """The committed entries of a local cache (folders with a valid sidecar)."""
    if not cache_dir.is_dir():
        return
    for p in sorted(cache_dir.iterdir()):
        if p.is_dir() and "." not in p.name and read_artifact(p) is not None:
            yield p
