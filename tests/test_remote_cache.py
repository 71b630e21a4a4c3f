"""The team's shared cache (edgeres.remote) against a real S3 server: moto's standalone server in a subprocess,
speaking S3 over HTTP to s3fs, the client edgeres uses. The fixture first checks that the server refuses a second
create-only PUT of one key (HTTP 412) and that s3fs's exclusive create sees that refusal: without both, the
conditional-write tests below would prove nothing.

Builds are the tiny recipe in-process, each with its own empty local cache (two machines). What this cannot show:
GCS's and Azure's conditional writes (gcsfs, adlfs: not installed here), latency over a real network, IAM policies.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import finetune_only, run_cli, run_pipeline, statuses, tiny_recipe

from edgeres import faults, remote
from edgeres.artifact import read_artifact
from edgeres.errors import CacheError, UsageError
from edgeres.keys import TEST_HOST, host_facts
from edgeres.remote import RemoteCache, RemoteSettings, sign

BUCKET = "team-cache"
SOURCE_STATE = remote.source_state  # the real check (the autouse fixture below replaces the module's name)
CLEAN_SOURCE = {"version": "test", "source_sha256": "0" * 64, "commit": "f" * 40, "modified": []}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free local port; the AWS variables point botocore (and so s3fs) at it."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        _check_conditional_writes(endpoint)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "",
}


def _check_conditional_writes(endpoint: str) -> None:
    import botocore.exceptions
    import botocore.session
    import s3fs

    client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="probe", Body=b"1", IfNoneMatch="*")
    try:
        client.put_object(Bucket=BUCKET, Key="probe", Body=b"2", IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412, exc.response
    else:
        pytest.fail("the S3 test server accepted a second create-only PUT: it cannot test conditional writes")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with pytest.raises(FileExistsError), fs.open(f"{BUCKET}/probe", "xb") as f:
        f.write(b"3")
    assert fs.cat_file(f"{BUCKET}/probe") == b"1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeres.bundle.sign import generate_key

    folder = tmp_path_factory.mktemp("keys")
    generate_key(folder / "team.pem", folder / "team.pub")
    generate_key(folder / "other.pem", folder / "other.pub")
    return {name: folder / name for name in ("team.pem", "team.pub", "other.pem", "other.pub")}


@pytest.fixture(autouse=True)
def _clean_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds here push as if edgeres' code were a clean commit (a developer's edits would stop every push);
    test_modified_code_is_not_pushed checks the real check."""
    monkeypatch.setattr(remote, "source_state", lambda package=None: CLEAN_SOURCE)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def tier(url: str, keys: dict[str, Path], *, push: bool = True, key: str | None = "team.pem") -> RemoteCache:
    settings = RemoteSettings(
        url=url, push=push, trusted_keys=(keys["team.pub"],), signing_key=keys[key] if key else None
    )
    logs: list[str] = []
    cache = RemoteCache(settings, log=logs.append)
    cache.logs = logs  # type: ignore[attr-defined]
    return cache


def build(recipe: dict[str, Any], cache: Path, t: RemoteCache | None, **kw: Any) -> tuple[Any, str]:
    faults.reset()
    result, log = run_pipeline(recipe, cache, remote=t, **kw)
    return result, log + "\n".join(getattr(t, "logs", []))


def entries(url: str) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/entries", detail=False))
    except FileNotFoundError:
        return []


FINETUNE = finetune_only()


@pytest.fixture(scope="module")
def pushed(s3_server: str, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Machine A: the finetune-only tiny recipe built with an empty cache and pushed to s3://team-cache/base."""
    mp = pytest.MonkeyPatch()
    mp.setattr(remote, "source_state", lambda package=None: CLEAN_SOURCE)
    try:
        cache = tmp_path_factory.mktemp("machine-a") / "cache"
        url = f"s3://{BUCKET}/base"
        result, log = build(FINETUNE, cache, tier(url, keys))
    finally:
        mp.undo()
    assert statuses(result) == [("main", "finetune", "ran")], log
    return {"url": url, "cache": cache, "result": result, "log": log}


def copy_remote(src: str, name: str) -> str:
    """A private copy of a remote prefix (tests that damage it)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(src)
    dest = f"{root.rsplit('/', 1)[0]}/{name}"
    fs.invalidate_cache()
    for path in fs.find(root):
        fs.copy(path, dest + path[len(root) :])
    return f"s3://{dest}"


# ------------------------------------------------------------------------------------------------ the happy path


@pytest.mark.parametrize("protocol", ["s3", "file"])
def test_a_second_create_only_write_is_refused(s3_server: str, tmp_path: Path, protocol: str) -> None:
    """Store.create on S3 (the server answers HTTP 412, s3fs raises FileExistsError) and on a file system (a hard
    link fails on an existing name): the first writer's bytes stay, the second is told it lost."""
    url = f"s3://{BUCKET}/probe-{tmp_path.name}" if protocol == "s3" else (tmp_path / "mount").as_uri()
    store = remote.Store(url)
    assert store.create("entries/x.json", b"first") is True
    assert store.create("entries/x.json", b"second") is False
    assert store.read("entries/x.json") == b"first"


def test_transient_errors_are_retried_with_backoff_and_refusals_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four tries with doubling waits for a connection error; a refusal (403) or a missing file is not retried."""
    store = remote.Store("memory://retries")
    waits: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.5)
    calls: list[int] = []

    def flaky(fails: int, exc: BaseException) -> Any:
        def fn() -> str:
            calls.append(1)
            if len(calls) <= fails:
                raise exc
            return "ok"

        return fn

    assert store.call("x", flaky(3, ConnectionError("reset"))) == "ok" and len(calls) == 4
    assert waits == [0.5, 1.0, 2.0]
    calls.clear()
    with pytest.raises(remote.RemoteUnavailable, match="failed 4 times: ConnectionError"):
        store.call("x", flaky(99, ConnectionError("reset")))
    assert len(calls) == 4
    for refusal, raised in (
        (PermissionError("403 Forbidden"), remote.RemoteUnavailable),  # a refusal: the remote is given up
        (FileNotFoundError("no such key"), FileNotFoundError),  # an answer: nothing there
        (TypeError("a bug"), TypeError),  # not the remote's state: never hidden as "unavailable"
    ):
        calls.clear()
        with pytest.raises(raised):
            store.call("x", flaky(99, refusal))
        assert len(calls) == 1


def test_a_second_machine_trains_nothing_and_measures_again(
    s3_server: str, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine A builds finetune -> export -> benchmark and pushes; machine B (another host by the test hook, an
    empty local cache) pulls finetune and export, verified, and runs only the benchmark, keyed by its host."""
    url = f"s3://{BUCKET}/two-machines"
    recipe = tiny_recipe()
    a, log_a = build(recipe, tmp_path / "a", tier(url, keys))
    assert [s for *_, s in statuses(a)] == ["ran", "ran", "ran"], log_a
    assert len(entries(url)) == 3
    monkeypatch.setenv(TEST_HOST, "machine-b")
    host_facts.cache_clear()
    try:
        b, log_b = build(recipe, tmp_path / "b", tier(url, keys))
    finally:
        host_facts.cache_clear()
    assert statuses(b) == [("main", "finetune", "pulled"), ("main", "export", "pulled"), ("*", "benchmark", "ran")]
    assert "signed by team.pub" in log_b
    for mine, theirs in zip(a.lineage["main"], b.lineage["main"], strict=True):
        assert mine.files == theirs.files and mine.key == theirs.key
    assert b.report is not None and b.report.key != a.report.key  # measured on "machine B"
    assert len(entries(url)) == 4  # B's benchmark entry joins A's


def test_a_file_remote_on_a_second_folder(keys: dict[str, Path], tmp_path: Path) -> None:
    """file:// on a shared mount: the same protocol, blobs renamed into place, the entry hard-linked (create-only)."""
    url = (tmp_path / "mount").as_uri()
    a, _ = build(FINETUNE, tmp_path / "a", tier(url, keys))
    b, log = build(FINETUNE, tmp_path / "b", tier(url, keys))
    assert statuses(a) == [("main", "finetune", "ran")] and statuses(b) == [("main", "finetune", "pulled")], log
    assert a.lineage["main"][0].files == b.lineage["main"][0].files
    assert not list((tmp_path / "mount").rglob(".*"))  # no temporary files left beside blobs or entries


# -------------------------------------------------------------------------------------------------------- trust


def _rewrite(url: str, name: str, change: Any) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root}/entries/{name}"
    envelope = json.loads(fs.cat_file(path))
    fs.pipe_file(path, json.dumps(change(envelope)).encode())


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(envelope["payload"]))


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda e, k: {**e, "signature": ""}, "it is unsigned"),
        (lambda e, k: {k: v for k, v in e.items() if k != "signature"}, "it is unsigned"),
        (lambda e, k: sign(base64.b64decode(e["payload"]), k["other.pem"]), "none of the trusted keys"),
        (
            lambda e, k: {**e, "payload": base64.b64encode(base64.b64decode(e["payload"]) + b" ").decode()},
            "none of the trusted keys",
        ),
    ],
    ids=["empty-signature", "no-signature", "untrusted-signer", "payload-changed"],
)
def test_an_unsigned_or_badly_signed_entry_is_refused_with_exit_6(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path, damage: Any, says: str
) -> None:
    url = copy_remote(pushed["url"], f"bad-{tmp_path.name}")
    (name,) = entries(url)
    _rewrite(url, name, lambda e: damage(e, keys))
    with pytest.raises(CacheError, match=f"remote cache entry {name[:-5]} .* is refused: {says}") as exc:
        build(FINETUNE, tmp_path / "b", tier(url, keys))
    assert exc.value.exit_code == 6
    assert not list((tmp_path / "b").glob("finetune-*[!k]"))  # nothing kept (only the entry's lock file)


@pytest.mark.parametrize("rel", ["../escape.pt", "/abs/model.pt", "artifact.json"])
def test_a_signed_entry_naming_paths_outside_its_folder_is_refused(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path, rel: str
) -> None:
    """Signed by the team's key, but its sidecar names a path outside the entry (or the sidecar itself)."""
    url = copy_remote(pushed["url"], f"paths-{tmp_path.name}")
    (name,) = entries(url)

    def outside(envelope: dict[str, Any]) -> dict[str, Any]:
        payload = _payload(envelope)
        (first, sha), *_ = payload["sidecar"]["files"].items()
        payload["sidecar"]["files"][rel] = sha
        payload["sizes"][rel] = payload["sizes"][first]
        return sign(json.dumps(payload, sort_keys=True).encode(), keys["team.pem"])

    _rewrite(url, name, outside)
    with pytest.raises(CacheError, match="files inside its folder"):
        build(FINETUNE, tmp_path / "b", tier(url, keys))
    assert not (tmp_path / "b" / "escape.pt").exists()  # where ../escape.pt from the staging folder would land
    assert [p.name.rsplit(".", 1)[-1] for p in (tmp_path / "b").iterdir()] == ["lock"]


@pytest.mark.parametrize(
    "change, refused",
    [
        (lambda side: side.update(primary="not-a-file.pt"), True),
        (lambda side: side.update(deliverables=["model.pt", "../x"]), True),
        (lambda side: side.update(files={**side["files"], "./dup": next(iter(side["files"].values()))}), True),
        (lambda side: side.update(schema=99), False),  # a newer edgeres's sidecar: not readable here, not a threat
    ],
    ids=["primary-not-a-file", "deliverable-outside", "dot-path", "other-schema"],
)
def test_a_signed_entry_this_edgeres_cannot_use_is_refused_or_skipped(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path, change: Any, refused: bool
) -> None:
    url = copy_remote(pushed["url"], f"shape-{tmp_path.name}")
    (name,) = entries(url)

    def resign(envelope: dict[str, Any]) -> dict[str, Any]:
        payload = _payload(envelope)
        change(payload["sidecar"])
        payload["sizes"] = {rel: payload["sizes"].get(rel, 1) for rel in payload["sidecar"]["files"]}
        return sign(json.dumps(payload, sort_keys=True).encode(), keys["team.pem"])

    _rewrite(url, name, resign)
    if refused:
        with pytest.raises(CacheError, match="is refused"):
            build(FINETUNE, tmp_path / "b", tier(url, keys, push=False))
        return
    b, log = build(FINETUNE, tmp_path / "b", tier(url, keys, push=False))
    assert statuses(b) == [("main", "finetune", "ran")] and "not one this edgeres reads" in log
    assert sorted(p.name.split(".")[-1] for p in (tmp_path / "b").iterdir() if "." in p.name) == ["lock"]


def test_a_signed_entry_replayed_under_another_key_is_refused(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path
) -> None:
    """A genuine envelope copied to the name of another stage's key would hand one stage's output to another."""
    import fsspec

    url = copy_remote(pushed["url"], f"replay-{tmp_path.name}")
    (name,) = entries(url)
    recipe = finetune_only(epochs=2)  # another key for the same stage
    key = remote_key_of(recipe, tmp_path)
    fs, root = fsspec.core.url_to_fs(url)
    fs.copy(f"{root}/entries/{name}", f"{root}/entries/finetune-{key}.json")
    with pytest.raises(CacheError, match="another entry's signature replayed"):
        build(recipe, tmp_path / "b", tier(url, keys))


def remote_key_of(recipe: dict[str, Any], tmp: Path) -> str:
    result, _ = run_pipeline(recipe, tmp / "dry", dry_run=True)
    return result.records[0].key


# -------------------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("how", ["changed", "truncated", "grown", "missing"])
def test_a_corrupted_remote_file_is_refused_and_the_stage_runs(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path, how: str
) -> None:
    import fsspec

    url = copy_remote(pushed["url"], f"corrupt-{how}-{tmp_path.name}")
    fs, root = fsspec.core.url_to_fs(url)
    art = pushed["result"].lineage["main"][0]
    sha = art.files[art.primary]
    blob = f"{root}/blobs/{sha}"
    data = fs.cat_file(blob)
    if how == "missing":
        fs.rm_file(blob)
    else:
        damaged = {"truncated": data[: len(data) // 2], "grown": data + bytes(1 << 20), "changed": data[:-1]}[how]
        fs.pipe_file(blob, damaged + (bytes([data[-1] ^ 1]) if how == "changed" else b""))
    t = tier(url, keys)
    b, log = build(FINETUNE, tmp_path / "b", t)
    assert statuses(b) == [("main", "finetune", "ran")]
    assert f"remote cache entry {art.path.name} is refused" in log
    assert ("is missing from the remote" if how == "missing" else "corrupted or truncated on the remote") in log
    if how in ("truncated", "grown"):  # the signed size is checked first: the damaged file is not downloaded
        assert "not downloaded" in log
    assert read_artifact(tmp_path / "b" / art.path.name) is not None
    if b.lineage["main"][0].files == art.files:  # deterministic here: this build repaired the team's blob
        fs.invalidate_cache()
        assert fs.cat_file(blob) == data


def test_a_killed_upload_leaves_no_visible_entry(
    s3_server: str, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the files went up and before the signed entry: readers see nothing and build it themselves."""
    url = f"s3://{BUCKET}/killed-{tmp_path.name}"
    monkeypatch.setenv(faults.ENV, "remote:blobs-uploaded:crash")
    with pytest.raises(faults.InjectedCrash):
        build(FINETUNE, tmp_path / "a", tier(url, keys))
    monkeypatch.delenv(faults.ENV)
    assert entries(url) == []
    b, _ = build(FINETUNE, tmp_path / "b", tier(url, keys, push=False))
    assert statuses(b) == [("main", "finetune", "ran")]


def test_concurrent_uploads_of_one_key_leave_one_entry_everyone_uses(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path
) -> None:
    """Two machines trained one key differently (non-deterministic kernels stand-in: a changed byte) and push at
    once: one create-only write wins, the other build takes the winner's entry, so both end with the same files."""
    url = f"s3://{BUCKET}/race-{tmp_path.name}"
    src = pushed["result"].lineage["main"][0].path
    caches = []
    for i in range(2):
        entry = tmp_path / f"m{i}" / src.name
        shutil.copytree(src, entry)
        _differ(entry, i)
        caches.append(entry)
    tiers = [tier(url, keys) for _ in caches]
    barrier = threading.Barrier(2)

    def push(i: int) -> None:
        barrier.wait()
        tiers[i].publish(caches[i])

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    logs = [" ".join(t.logs) for t in tiers]  # type: ignore[attr-defined]
    won = [any(m.startswith("pushed ") for m in t.logs) for t in tiers]  # type: ignore[attr-defined]
    assert sorted(won) == [False, True], logs
    assert any("another build pushed" in log and "different files" in log for log in logs)
    first, second = (read_artifact(c) for c in caches)
    assert first is not None and second is not None and first.files == second.files
    assert entries(url) == [f"{src.name}.json"]


def _differ(entry: Path, i: int) -> None:
    """Make this copy's output its own (a trailing byte in its primary file), re-hashed as a commit would."""
    from edgeres.artifact import hash_files, write_json_atomic

    art = read_artifact(entry)
    assert art is not None
    with open(entry / art.primary, "ab") as f:
        f.write(bytes([i]))
    meta = dict(art.metadata)
    meta["files"] = hash_files(entry)
    write_json_atomic(entry / "artifact.json", meta)


def test_a_read_only_consumer_pulls_and_pushes_nothing(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path
) -> None:
    url = copy_remote(pushed["url"], f"ro-{tmp_path.name}")
    recipe = tiny_recipe(stages=[FINETUNE["stages"][0], {"type": "export", "opset": 18}])
    b, log = build(recipe, tmp_path / "b", tier(url, keys, push=False))
    assert statuses(b) == [("main", "finetune", "pulled"), ("main", "export", "ran")]
    assert "pulling only; push is off" in log
    assert len(entries(url)) == 1
    _, log = build(recipe, tmp_path / "c", tier(url, keys, key=None))
    assert "no signing key to push with" in log and len(entries(url)) == 1


def test_an_unreachable_remote_is_retried_then_the_build_goes_on(keys: dict[str, Path], tmp_path: Path) -> None:
    """Nothing listens on the endpoint: each call is retried with backoff, then the remote is given up for the build
    with a warning, and the stage runs here."""
    import s3fs

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    t = tier(f"s3://{BUCKET}/down", keys)
    t.store.fs = s3fs.S3FileSystem(
        skip_instance_cache=True,
        key="test",
        secret="test",
        client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2},
    )
    t.store.fs.retries = 1  # s3fs's own retries (the test times edgeres' four attempts)
    t0 = time.monotonic()
    b, log = build(FINETUNE, tmp_path / "b", t)
    assert statuses(b) == [("main", "finetune", "ran")]
    assert "failed 4 times" in log and "building without it from here on" in log
    assert log.count("remote cache unavailable") == 1  # given up once, not retried for every stage
    assert time.monotonic() - t0 < 60


def test_modified_code_is_not_pushed(tmp_path: Path) -> None:
    """The real source check on a git checkout of a stand-in package: clean -> commit recorded, nothing modified;
    an edited or an untracked package file -> named; a file outside the package does not matter."""
    repo = tmp_path / "repo"
    pkg = repo / "edgeres"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("n\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=repo, check=True)
    state = SOURCE_STATE.__wrapped__  # type: ignore[attr-defined]  (uncached: the package changes in between)
    clean = state(pkg)
    assert clean["modified"] == [] and len(clean["commit"]) == 40
    (repo / "notes.txt").write_text("changed\n")
    assert state(pkg)["modified"] == []
    (pkg / "__init__.py").write_text("x = 2\n")
    (pkg / "new.py").write_text("\n")
    assert state(pkg)["modified"] == ["edgeres/__init__.py", "edgeres/new.py"]


# ------------------------------------------------------------------------------------------------ the commands


def test_cache_ls_remote_lists_size_age_and_signer(pushed: dict[str, Any], keys: dict[str, Path]) -> None:
    res = run_cli("cache", "ls", "--remote", pushed["url"], "--trusted-key", str(keys["team.pub"]))
    assert res.code == 0, res.stderr
    (row,) = [line for line in res.stdout.splitlines() if line.startswith("finetune")]
    entry = pushed["result"].lineage["main"][0].path
    size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and p.name != "artifact.json")
    assert re.fullmatch(rf"finetune +[0-9a-f]{{16}} +{size / 1e6:.1f} MB +\d+[smhd] +team\.pub", row), row
    res = run_cli("cache", "ls", "--remote", pushed["url"], "--trusted-key", str(keys["other.pub"]))
    assert "REFUSED: none of the trusted keys" in res.stdout


def test_cache_push_pull_and_clean_remote(
    pushed: dict[str, Any], keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{BUCKET}/cmd-{tmp_path.name}"
    local = pushed["cache"]
    res = run_cli("cache", "push", "--remote", url, "--cache", str(local), "--cache-key", str(keys["team.pem"]),
                  "--trusted-key", str(keys["team.pub"]))  # fmt: skip
    assert res.code == 0 and "pushed 1 of 1 entries" in res.stdout, res.stderr
    res = run_cli("cache", "pull", "--remote", url, "--cache", str(tmp_path / "b"), "--trusted-key",
                  str(keys["team.pub"]))  # fmt: skip
    assert res.code == 0 and "pulled 1 entries" in res.stdout, res.stderr
    name = pushed["result"].lineage["main"][0].path.name
    assert read_artifact(tmp_path / "b" / name) is not None
    res = run_cli("cache", "clean", "--remote", url, "--trusted-key", str(keys["team.pub"]), "--max-size", "1kb")
    assert res.code == 0 and f"removing {name[:40]} (over --max-size)" in res.stdout, res.stdout + res.stderr
    assert entries(url) == []
    res = run_cli("cache", "clean", "--entry", name, "--cache", str(tmp_path / "b"))
    assert res.code == 2 and "add --remote" in res.stderr


def test_push_only_where_create_only_writes_are_tested(keys: dict[str, Path]) -> None:
    t = tier("memory://team/cache", keys)
    assert "pushing to memory:// is not supported" in (t.why_not_push() or "")
    assert tier("s3://team-cache/x", keys).why_not_push() is None


def test_a_trusted_key_that_is_not_a_public_key_is_refused(keys: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="is not a PEM public key"):
        remote.remote_settings(flag_url="s3://b/p", flag_trusted=(str(keys["team.pem"]),))


def test_a_remote_without_trusted_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(remote.ENV_TRUSTED, raising=False)
    with pytest.raises(UsageError, match="has no trusted keys"):
        remote.remote_settings(flag_url="s3://b/p")
    monkeypatch.setenv(remote.ENV_URL, "s3://from-env/p")
    monkeypatch.setenv(remote.ENV_TRUSTED, "/nonexistent/team.pub")
    with pytest.raises(UsageError, match=r"trusted cache key /nonexistent/team\.pub does not exist"):
        remote.remote_settings(flag_url=None, recipe_url="s3://from-recipe/p")


def test_local_clean_by_last_use(pushed: dict[str, Any], tmp_path: Path) -> None:
    """`cache clean --older-than/--max-size` without --remote: committed local entries by last use (the folder's
    time, renewed when a build reuses the entry), without asking; the rest stays."""
    src = pushed["result"].lineage["main"][0].path
    root = tmp_path / "cache"
    now = time.time()
    for i, days in enumerate((40, 10, 1)):
        entry = root / f"finetune-{i:064x}"
        shutil.copytree(src, entry)
        os.utime(entry, (now - days * 86400, now - days * 86400))
    res = run_cli("cache", "clean", "--cache", str(root), "--older-than", "30d")
    assert res.code == 0, res.stderr
    assert sorted(p.name[-1] for p in root.iterdir() if p.is_dir()) == ["1", "2"]
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    res = run_cli("cache", "clean", "--cache", str(root), "--max-size", f"{size * 1.5:.0f}")
    assert res.code == 0, res.stderr
    assert [p.name[-1] for p in root.iterdir() if p.is_dir()] == ["2"]  # the most recently used
    b, _ = build(FINETUNE, tmp_path / "again", None)
    entry = b.lineage["main"][0].path
    os.utime(entry, (now - 86400 * 50, now - 86400 * 50))
    build(FINETUNE, tmp_path / "again", None)  # reused: its last use is now
    assert now - entry.stat().st_mtime < 60
