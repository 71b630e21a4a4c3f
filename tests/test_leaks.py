"""No leaks: runners release their runtime's native objects on close, streamed splits end their DataLoader workers
as soon as the consumer stops, and those workers never fork from the (threaded) test or build process. The autouse
fixture in conftest.py (`_no_leaks`) then fails any test that leaves processes or open runners behind; the tests here
check the mechanisms it relies on, each with the thing it guards against done on purpose."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _leaked_children
from onnx_models import images, tiny_classifier
from test_stream import make_folder

from edgeres.config import ImageFolderData
from edgeres.data import load_data, worker_loader
from edgeres.errors import StageError
from edgeres.runtimes import base, open_runner


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_closing_a_runner_releases_its_runtime_and_refuses_to_run(tmp_path: Path, runtime: str) -> None:
    model = tiny_classifier(tmp_path / "m.onnx")
    with open_runner(runtime, model, fmt="onnx", threads=1) as runner:
        assert runner in base.OPEN
        assert runner.infer(images(2)).shape == (2, 3)
    assert runner.closed and runner not in base.OPEN
    native = runner.session if runtime == "onnxruntime" else runner._requests  # type: ignore[attr-defined]
    assert not native  # the session, or every compiled model's infer request, is gone
    with pytest.raises(StageError, match="is closed; open a new one"):
        runner.infer(images(1))
    runner.close()  # twice is harmless


def test_streamed_workers_start_from_the_fork_server_and_end_with_the_consumer(tmp_path: Path) -> None:
    """The workers of a streamed split are not forked from this process (which holds thread pools), and a consumer
    that stops after one batch leaves no worker behind: they are shut down when the generator is dropped, not when
    the garbage collector gets to it."""
    import psutil

    data = load_data(
        ImageFolderData(type="imagefolder", root=make_folder(tmp_path / "data"), stream="always", workers=2), seed=0
    )
    assert worker_loader([1, 2], 2).multiprocessing_context.get_start_method() == "forkserver"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    batches = data.batches(data.train, 4)
    next(batches)
    workers = [p for p in _leaked_children(before)]
    assert len(workers) == 2, workers  # two workers run while the consumer holds the generator
    del batches
    deadline = time.monotonic() + 10
    while _leaked_children(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leaked_children(before) == []


def test_the_leak_check_sees_a_process_left_running() -> None:
    """What `_no_leaks` looks for: a child left running is reported (and killed here, so this test leaks nothing)."""
    before: set[int] = set()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in {p.pid for p in _leaked_children(before)}
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {p.pid for p in _leaked_children(before)}
