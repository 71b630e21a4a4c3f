"""The pipeline engine: runs each variant's stages in recipe order over a content-addressed cache.

Every stage output lives in `<cache>/<stage type>-<key>/`, where the key is the sha256 of the stage type and
registry version, the stage's resolved inputs object (edgeres.inputs, built once by edgeres.resolve: its config, the
runtime settings it measures with, referenced files' digests, the data fingerprint, host facts where its output
depends on the host), its input artifacts' content hashes and the versions of the tools it uses. A stage whose key
has a committed entry is not run again, so variants that share stages run them once, a second recipe reuses a first
one's stages, and a killed build resumes.

Commit protocol: a stage writes into `<entry>.partial/` (kept across a kill so long stages can resume from their
checkpoints), the pipeline hashes the files and writes `artifact.json` last, then renames the folder into place.
A lock file per entry keeps two builds from writing one entry; the second waits (at most --lock-timeout) and then
reuses it. The holder writes its PID into the lock file; `edgeres cache clean` skips entries whose lock is held.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres import __version__, dist, faults
from edgeres.artifact import (
    SCHEMA_VERSION,
    SIDECAR,
    Artifact,
    default_cache_dir,
    hash_files,
    read_artifact,
    sha256_json,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from edgeres.config import STAGE_IO, DataConfig
from edgeres.deps import versions
from edgeres.errors import CacheError, EdgeresError, RecipeError, StageError, StorageError, write_failure
from edgeres.inputs import DataInputs, StageInputs, keyed, recorded
from edgeres.keys import host_facts, stage_key
from edgeres.locks import held
from edgeres.progress import Reporter
from edgeres.recipe import Recipe, dump_recipe, variant_recipe
from edgeres.remote import RemoteCache
from edgeres.resolve import Resolver
from edgeres.stages import REGISTRY, load_stage
from edgeres.stages.base import SCRATCH, StageContext, StageOutput

LOCK_TIMEOUT_S = 3600.0
USE_RESOLUTION_S = 3600.0  # an entry's last-use time (its folder's) is renewed when older than this: few writes


def key_material(
    stage_type: str, *, version: int, tools: tuple[str, ...], inputs: Any, artifacts: dict[str, str]
) -> dict[str, Any]:
    """Everything a stage's key hashes: its type and registry version, its inputs object (the keyed part), the
    identities of its input artifacts and its tools' versions."""
    return {
        "stage": stage_type,
        "impl": version,
        "inputs": keyed(inputs),
        "artifacts": artifacts,
        "tools": versions(*tools),
    }


@contextlib.contextmanager
def entry_lock(
    path: Path, reporter: Reporter, *, timeout_s: float = LOCK_TIMEOUT_S, remove: bool = False
) -> Iterator[None]:
    """Exclusive lock on `path`, holding this process's PID; waits (saying so) while another build holds it, for at
    most `timeout_s` seconds, then raises CacheError naming the holder's PID. With `remove`, the lock file is
    deleted before the lock is released (a waiter then locks a new file: see try_lock)."""

    def waiting(pid: str) -> None:
        reporter.log(
            f"waiting for another build (PID {pid}) that is writing {path.stem}, at most {timeout_s:g} s "
            "(--lock-timeout) ..."
        )

    def timed_out(pid: str) -> CacheError:
        return CacheError(
            f"cache entry {path.stem} is being written by another build (PID {pid}), which still held its lock "
            f"{path} after {timeout_s:g} s (--lock-timeout). Wait for that build to finish, stop it, or raise "
            "--lock-timeout"
        )

    with held(path, timeout_s=timeout_s, waiting=waiting, timed_out=timed_out, remove=remove):
        yield


@dataclass(frozen=True)
class Planned:
    """A stage output that a dry run (or a stage after one that would run) has not made: known by its key."""

    key: str
    format: str

    @property
    def content_sha256(self) -> str:
        return f"planned:{self.key}"


Input = Artifact | Planned


def identity(inp: Input) -> str:
    """How a stage input enters a key: the content hash of a made artifact, the upstream key of a planned one."""
    return inp.content_sha256


@dataclass
class StageRecord:
    variant: str
    stage: str
    stage_type: str
    key: str
    status: str  # ran | cached | planned | missing
    seconds: float = 0.0
    path: str = ""
    # What the key hashed (edgeres.pipeline.key_material): `--dry-run --explain` compares it with an earlier entry's.
    material: dict[str, Any] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The record as build.json holds it (without the key material, which the entry's sidecar holds)."""
        return {k: v for k, v in self.__dict__.items() if k != "material"}


@dataclass
class BuildResult:
    variants: dict[str, Artifact] = field(default_factory=dict)
    lineage: dict[str, list[Artifact]] = field(default_factory=dict)
    report: Artifact | None = None
    bundles: dict[str, Artifact] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        recipe: Recipe,
        *,
        cache_dir: Path | None = None,
        out_dir: Path | None = None,
        from_stage: str | None = None,
        until_stage: str | None = None,
        force: tuple[str, ...] = (),
        reporter: Reporter | None = None,
        dry_run: bool = False,
        lock_timeout: float = LOCK_TIMEOUT_S,
        remote: RemoteCache | None = None,
    ) -> None:
        self.recipe = recipe
        self.remote = remote  # the team's shared tier (edgeres.remote): pulled before a stage runs, pushed after
        self.lock_timeout = lock_timeout
        self.cache_dir = cache_dir or default_cache_dir()
        self.out_dir = out_dir
        self.reporter = reporter or Reporter()
        self.dry_run = dry_run
        ids = [s.id for s in recipe.stages]
        for opt, value in (("--from", from_stage), ("--until", until_stage), *(("--force", f) for f in force)):
            if value is not None and value not in ids:
                raise RecipeError(f"{opt} {value!r} is not a stage of this recipe; stages: {', '.join(ids)}")
        self.from_stage, self.until_stage, self.force = from_stage, until_stage, set(force)
        self._forced_done: set[str] = set()
        self._data: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}
        self.resolver = Resolver(recipe, fingerprint=self.fingerprint, cache_dir=self.cache_dir)

    # ----------------------------------------------------------------------------------------------- keys & data

    def fingerprint(self, data: DataConfig, seed: int) -> str:
        """The data fingerprint (file contents and split rule) of a data config, computed once per build."""
        k = sha256_json([data.model_dump(mode="json"), seed])
        if k not in self._fingerprints:
            from edgeres.data import fingerprint

            self._fingerprints[k] = fingerprint(data, seed)
        return self._fingerprints[k]

    def load_data(self, data: DataInputs) -> Any:
        """The images an inputs object's `data` names, decoded once per build."""
        k = sha256_json(recorded(data))
        if k not in self._data:
            from edgeres.data import load_data, split_sizes

            t = time.monotonic()
            self._data[k] = bundle = load_data(data.config, seed=data.seed, cache_dir=self.cache_dir)
            sizes = split_sizes(bundle)
            self.reporter.log(
                f"data {data.config.type}: train {sizes['train']}, val {sizes['val']}, test {sizes['test']} "
                f"images, {len(bundle.classes)} classes ({time.monotonic() - t:.1f}s)"
                + (f"; {len(bundle.skipped)} unreadable files skipped" if bundle.skipped else "")
            )
        return self._data[k]

    def data_of(self, recipe: Recipe) -> Any:
        """The images a (variant's) recipe reads, as its stages see them: for scripts beside a build (benchmarks)."""
        return self.load_data(self.resolver.data(recipe))

    def plan(self, variant: str, stage: Any, artifacts: dict[str, str]) -> tuple[StageInputs, dict[str, Any]]:
        """The stage's resolved inputs object and what its key hashes (edgeres.pipeline.key_material)."""
        spec = REGISTRY[stage.type]
        inputs = self.resolver.inputs(variant, stage)
        material = key_material(stage.type, version=spec.version, tools=spec.tools, inputs=inputs, artifacts=artifacts)
        return inputs, material

    # ------------------------------------------------------------------------------------------------------ run

    def _last_training(self) -> int:
        """Under torchrun: the position, in run order, of the last stage that trains (every rank takes part in
        stages up to it; after it rank 0 goes on alone). -1 when no stage trains."""
        last, i = -1, 0
        for vname in self.recipe.variant_names():
            for st in variant_recipe(self.recipe, vname).chain(vname):
                if st.type == "benchmark":
                    continue
                if st.trains():
                    last = i
                i += 1
                if st.id == self.until_stage:
                    break
        return last

    def _collective(self) -> bool:
        """Whether the stage at the current position is one every torchrun rank walks through together."""
        return dist.active() and self._position <= self._collective_until

    def run(self) -> BuildResult:
        result = BuildResult()
        names = self.recipe.variant_names()
        bench = next((s for s in self.recipe.stages if s.type == "benchmark"), None)
        package = next((s for s in self.recipe.stages if s.type == "package"), None)
        planned: dict[str, Input] = {}
        self._position, self._collective_until = -1, self._last_training() if dist.active() else -1
        for vname in names:
            vrecipe = variant_recipe(self.recipe, vname)
            made: list[Input] = []
            for st in vrecipe.chain(vname):
                if st.type in ("benchmark", "package"):
                    continue
                self._position += 1
                if not dist.is_main() and not self._collective():
                    self.reporter.log(f"rank {dist.rank()}: the training stages are done; rank 0 goes on alone")
                    return result
                out = self._stage(result, vname, st, made)
                if out is None:
                    break
                made.append(out)
                if isinstance(out, Artifact):
                    result.lineage.setdefault(vname, []).append(out)
                if st.id == self.until_stage:
                    break
            if made and len(made) == len(result.lineage.get(vname, [])):
                result.variants[vname] = result.lineage[vname][-1]
            if made:
                planned[vname] = made[-1]
        last = [s.id for s in (bench, package) if s is not None]
        until_ok = self.until_stage is None or self.until_stage in last
        report: Input | None = None
        if bench is not None and until_ok and len(planned) == len(names):
            report = self._stage(result, "*", bench, [], variants=planned)
            result.report = report if isinstance(report, Artifact) else None
        if package is not None and report is not None and self.until_stage in (None, package.id):
            # After the report, per variant: a bundle carries its variant's measured figures (the report is keyed).
            for vname in names:
                vrecipe = variant_recipe(self.recipe, vname)
                st = next((s for s in vrecipe.chain(vname) if s.id == package.id), None)
                if st is None or vname not in planned:
                    continue
                out = self._stage(result, vname, st, [planned[vname]], extra={"report": report})
                if isinstance(out, Artifact):
                    result.bundles[vname] = out
        if self.out_dir is not None and not self.dry_run and dist.is_main():
            self._deliver(result)
        return result

    def _stage(
        self,
        result: BuildResult,
        vname: str,
        st: Any,
        made: list[Input],
        *,
        variants: dict[str, Input] | None = None,
        extra: dict[str, Input] | None = None,
    ) -> Input | None:
        """One stage: look its key up in the cache, else (unless a dry run) execute it and commit its output.
        A dry run returns a Planned input for a stage that would run, so the stages after it get planned keys."""
        inp = made[-1] if made else None
        inputs = {"input": identity(inp)} if inp is not None else {}
        if variants is not None:
            inputs = {f"variant:{k}": identity(a) for k, a in variants.items()}
        inputs.update({k: identity(a) for k, a in (extra or {}).items()})
        torch_source: Input | None = None
        if getattr(st, "uses_torch_model", lambda: False)():
            torch_source = next((a for a in reversed(made) if a.format == "torch"), None)
            if torch_source is None:
                raise RecipeError(
                    f"stage {st.id} trains the torch model (qat), but variant {vname} has no torch model before it; "
                    "keep a finetune or prune stage in the chain"
                )
            inputs["torch_model"] = identity(torch_source)
        resolved, material = self.plan(vname, st, inputs)
        key = stage_key(material)
        if self._collective() and not self.dry_run:
            # Every rank must use rank 0's entry: on another machine of a torchrun job this rank's host facts (a
            # latency probe's, quantize's kernels) can differ, and with them the key it would compute.
            key = dist.broadcast(key if dist.is_main() else None)
        final = self.cache_dir / f"{st.type}-{key}"
        rec = StageRecord(vname, st.id, st.type, key, "cached", path=str(final), material=material)
        result.records.append(rec)
        if self._collective() and not dist.is_main():
            assert inp is None or isinstance(inp, Artifact)
            assert torch_source is None or isinstance(torch_source, Artifact)
            return self._follow(final, vname, resolved, st, inp, rec, result, torch_source)
        forced = st.id in self.force and key not in self._forced_done
        existing = self._look_up(final, forced=forced, vname=vname, st=st, rec=rec)
        if existing is not None:
            self._announce("cached")
            return existing
        upstream = [*(variants or {}).values(), *(extra or {}).values()]
        if self.dry_run or isinstance(inp, Planned) or any(isinstance(a, Planned) for a in upstream):
            rec.status = "planned"
            self.reporter.log(f"[{vname}] {st.id}: would run ({key[:12]})")
            return Planned(key, STAGE_IO[st.type][1])
        with entry_lock(final.with_name(final.name + ".lock"), self.reporter, timeout_s=self.lock_timeout):
            existing = read_artifact(final)
            if existing is not None and not forced:
                existing.verify()
                self._announce("cached")
                return existing
            t0 = time.monotonic()
            pulled = self.remote.fetch(final) if self.remote is not None and not forced else None
            if pulled is not None:  # every file re-hashed against the signed sidecar on the way in
                rec.status, rec.seconds = "pulled", round(time.monotonic() - t0, 2)
                self._announce("cached")
                return pulled
            self._announce("run")
            assert inp is None or isinstance(inp, Artifact)
            assert torch_source is None or isinstance(torch_source, Artifact)
            real_variants = {k: a for k, a in (variants or {}).items() if isinstance(a, Artifact)}
            report = (extra or {}).get("report")
            assert report is None or isinstance(report, Artifact)
            with storage_errors(f"stage {st.id} of variant {vname}"):
                try:
                    work, out = self._execute(
                        vname, resolved, st, inp, rec, real_variants, result, torch_source, report
                    )
                except EdgeresError:  # bad data, a failed check: keep checkpoints to resume from, nothing else
                    drop_if_empty(final.with_name(final.name + ".partial"))
                    raise
                self._commit(work, final, out, st, resolved, key, inputs, rec)
            if self.remote is not None:  # another machine's entry for this key may replace this one
                self.remote.publish(final, forced=forced)
            if forced:
                self._forced_done.add(key)
        if self._collective():
            dist.barrier()  # committed: the other ranks may read it
        art = read_artifact(final)
        if art is None:
            raise CacheError(f"the entry {final} vanished right after it was written; is another process cleaning?")
        return art

    def _announce(self, decision: str) -> None:
        """Rank 0 tells the other torchrun ranks whether the stage runs or is in the cache."""
        if self._collective():
            dist.broadcast(decision)

    def _follow(
        self,
        final: Path,
        vname: str,
        resolved: StageInputs,
        st: Any,
        inp: Artifact | None,
        rec: StageRecord,
        result: BuildResult,
        torch_source: Artifact | None,
    ) -> Artifact:
        """A torchrun rank other than 0: take part in a stage that trains (in rank 0's work folder, writing nothing),
        else wait while rank 0 runs it; then read the entry rank 0 committed."""
        if dist.broadcast(None) == "run":
            if st.trains():
                dist.barrier()  # rank 0 has prepared the work folder and its checkpoints
                ctx = self._context(final.with_name(final.name + ".partial"), vname, resolved, {}, result, torch_source)
                self.reporter.log(f"[{vname}] {st.id}: training with rank 0 (rank {dist.rank()})")
                load_stage(st.type).run(ctx, resolved.config, inp)
            dist.barrier()  # rank 0 has committed the entry
            rec.status = "ran"
        art = read_artifact(final)
        if art is None:
            raise CacheError(f"rank 0 reported {final.name} done, but this rank cannot read it: is the cache shared?")
        return art

    def _look_up(self, final: Path, *, forced: bool, vname: str, st: Any, rec: StageRecord) -> Artifact | None:
        """The committed entry for this key (re-hashed before use), or None; --from needs earlier entries."""
        existing = read_artifact(final)
        if existing is not None and not forced:
            existing.verify()
            with contextlib.suppress(OSError):  # last use, for `cache clean --older-than/--max-size`: renewed like
                if not self.dry_run and time.time() - final.stat().st_mtime > USE_RESOLUTION_S:  # relatime, hourly
                    os.utime(final)
            self.reporter.log(f"[{vname}] {st.id}: cached ({rec.key[:12]})")
            return existing
        if self.from_stage is not None and self._is_before(st.id, self.from_stage):
            rec.status = "missing"
            raise CacheError(
                f"--from {self.from_stage} needs {st.id}'s output in the cache for variant {vname}, but there is "
                f"no entry {final.name}; run the build once without --from (or from an earlier stage)"
            )
        return None

    def _execute(
        self,
        vname: str,
        resolved: StageInputs,
        st: Any,
        inp: Artifact | None,
        rec: StageRecord,
        variants: dict[str, Artifact],
        result: BuildResult,
        torch_source: Artifact | None,
        report: Artifact | None = None,
    ) -> tuple[Path, StageOutput]:
        """Run the stage in `<entry>.partial/`, keeping only the checkpoints a killed run left to resume from."""
        work = Path(rec.path).with_name(Path(rec.path).name + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        for leftover in work.iterdir():
            if leftover.name != SCRATCH:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        ctx = self._context(work, vname, resolved, variants, result, torch_source, report)
        if self._collective() and st.trains():
            dist.barrier()  # the other ranks train too, reading checkpoints from this work folder
        self.reporter.log(f"[{vname}] {st.id}: running ({rec.key[:12]})")
        faults.point("stage:started", st.type)
        t0 = time.monotonic()
        out: StageOutput = load_stage(st.type).run(ctx, resolved.config, inp)
        rec.seconds = round(time.monotonic() - t0, 2)
        faults.point("stage:ran", st.type)
        shutil.rmtree(work / SCRATCH, ignore_errors=True)
        if not (work / out.primary).is_file():
            raise StageError(f"stage {st.id} reported {out.primary} but did not write it (a bug in edgeres)")
        return work, out

    def _context(
        self,
        work: Path,
        vname: str,
        resolved: StageInputs,
        variants: dict[str, Artifact],
        result: BuildResult,
        torch_source: Artifact | None,
        report: Artifact | None = None,
    ) -> StageContext[Any]:
        return StageContext(
            workdir=work,
            inputs=resolved,
            reporter=self.reporter,
            load_data=self.load_data,
            variants=variants,
            lineage=result.lineage if variants else ({vname: result.lineage[vname]} if report else {}),
            torch_source=torch_source,
            report=report,
        )

    def _commit(
        self,
        work: Path,
        final: Path,
        out: StageOutput,
        st: Any,
        resolved: StageInputs,
        key: str,
        inputs: dict[str, str],
        rec: StageRecord,
    ) -> None:
        """Hash the files, write the sidecar last (the commit marker), then rename the folder into place."""
        spec = REGISTRY[st.type]
        data = getattr(resolved, "data", None) or getattr(getattr(resolved, "kit", None), "data", None)
        sidecar = {
            "schema": SCHEMA_VERSION,
            "edgeres": __version__,
            "recipe": self.recipe.name,
            "variant": rec.variant,
            "stage": st.id,
            "stage_type": st.type,
            "stage_version": spec.version,
            "key": key,
            "format": out.format,
            "primary": out.primary,
            "deliverables": out.deliverables or [out.primary],
            "files": hash_files(work),
            "inputs": inputs,
            "config": st.model_dump(mode="json"),
            "resolved": recorded(resolved),  # the inputs object the stage was given, unkeyed fields too
            "key_material": rec.material,  # exactly what the key hashes (`--dry-run --explain` compares it)
            "data_fingerprint": data.fingerprint if isinstance(data, DataInputs) else None,
            "seed": resolved.seed,
            "tools": versions(*spec.tools),
            "host": host_facts(),
            "metrics": out.metrics,
            "seconds": rec.seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(work / SIDECAR, sidecar)
        faults.point("commit:sidecar-written", st.type)
        if final.exists():  # --force over a committed entry: swap, then drop the old one
            old = final.with_name(f"{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            faults.point("commit:swapped-out", st.type)
            os.rename(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(work, final)
        faults.point("commit:renamed", st.type)
        rec.status = "ran"
        self.reporter.log(f"[{rec.variant}] {st.id}: done in {rec.seconds:.1f}s")

    @staticmethod
    def _swap_in(folder: Path, copies: dict[str, Path]) -> None:
        """Fill a new `folder` with copies (relative name -> source), assembled beside the old one and swapped in."""
        staging = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for rel, src in copies.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)  # keeps modes: a kit's build.sh stays executable
        faults.point("deliver:staged", folder.name)
        old = folder.with_name(f".{folder.name}-old-{os.getpid()}")
        if folder.exists():
            os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)

    def _is_before(self, stage_id: str, ref: str) -> bool:
        ids = [s.id for s in self.recipe.stages]
        return ids.index(stage_id) < ids.index(ref)

    # ---------------------------------------------------------------------------------------------- deliverables

    def _deliver(self, result: BuildResult) -> None:
        """Copy each variant's deliverables and the reports to --out (each file atomically), and the build log. A lock
        on the out folder keeps two builds delivering into it from mixing their files; the last one wins, whole."""
        assert self.out_dir is not None
        out = self.out_dir
        # Every entry's deliverables are checked against its hashed files before anything is written.
        delivered = {vname: art.deliverables() for vname, art in result.variants.items()}
        reports = result.report.deliverables() if result.report is not None else []
        bundles = {vname: art.deliverables() for vname, art in result.bundles.items()}
        out.mkdir(parents=True, exist_ok=True)
        with (
            entry_lock(out / OUT_LOCK, self.reporter, timeout_s=self.lock_timeout, remove=True),
            storage_errors(f"delivering to {out}"),
        ):
            for stale in [*out.glob(".models-*"), *out.glob(".bundles-*")]:  # a killed delivery's staging
                shutil.rmtree(stale, ignore_errors=True)  # nobody else writes here while we hold the lock
            write_text_atomic(out / "recipe.resolved.yaml", dump_recipe(self.recipe))
            # models/ is assembled beside the old one and swapped in, so it never mixes two builds' variants.
            copies = {}
            for vname, art in result.variants.items():
                copies.update({f"{vname}/{rel}": art.path / rel for rel in [*delivered[vname], SIDECAR]})
            self._swap_in(out / "models", copies)
            if result.bundles:  # bundles/<variant>.tar
                tars = {f"{v}.tar": art.path / bundles[v][0] for v, art in result.bundles.items()}
                self._swap_in(out / "bundles", tars)
            if result.report is not None:
                for rel in reports:
                    write_bytes_atomic(out / rel, (result.report.path / rel).read_bytes())
            write_json_atomic(
                out / "build.json",
                {
                    "recipe": self.recipe.name,
                    "cache": str(self.cache_dir),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "stages": [r.row() for r in result.records],
                },
            )


OUT_LOCK = ".edgeres-out.lock"


def drop_if_empty(folder: Path) -> None:
    """Remove a stage's work folder that holds no file (the stage failed before writing any)."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def storage_errors(doing: str) -> Iterator[None]:
    """Turn a failed write (disk full, quota, file-size limit, read-only) into a StorageError that says what failed.
    Nothing half-written is committed: a stage's files stay in its .partial folder, every other file is replaced
    atomically, so earlier artifacts and the out folder's previous contents are intact."""
    try:
        yield
    except Exception as exc:
        failed = write_failure(exc)
        if failed is None:
            raise
        where = f" {failed.filename}" if failed.filename else ""
        raise StorageError(
            f"{doing} could not write{where}: {failed.strerror}. Committed stages and the files already delivered "
            "are intact; free some space (or lift the quota or limit) and re-run: completed stages are reused"
        ) from exc
