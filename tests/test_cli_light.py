"""The CLI works with only the core installed: --help, validate and dry runs import no optional heavy package."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from conftest import PYTHON, run_cli, subprocess_env, tiny_recipe, write_recipe

BLOCKED = [
    "torch",
    "torchvision",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "nncf",
    "sklearn",
    "onnxscript",
    "torch_pruning",
    "model_signing",
    "cryptography",
    "OpenSSL",
]

SCRIPT = textwrap.dedent(
    """
    import json, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    from edgeres.cli import main

    results = []
    for argv in json.loads(sys.argv[2]):
        try:
            main(argv)
            code = "returned"
        except SystemExit as exc:
            code = exc.code
        results.append(code)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps({"codes": results, "loaded": loaded}))
    """
)


def run_blocked(tmp_path: Path, argvs: list[list[str]]) -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [PYTHON, "-c", SCRIPT, json.dumps(BLOCKED), json.dumps(argvs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), proc.stdout


def test_blocker_really_blocks(tmp_path: Path) -> None:
    script = SCRIPT.replace("from edgeres.cli import main", "import importlib; importlib.import_module('torch')")
    proc = subprocess.run(
        [PYTHON, "-c", script, json.dumps(BLOCKED), "[]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode != 0
    assert "ImportError: torch is blocked in this test" in proc.stderr


def test_help_validate_and_dry_run_without_optional_packages(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    cache, out = tmp_path / "cache", tmp_path / "out"
    result, stdout = run_blocked(
        tmp_path,
        [
            ["--help"],
            ["build", "--help"],
            ["validate", str(recipe)],
            ["build", str(recipe), "--dry-run", "--cache", str(cache), "--out", str(out)],
            ["cache", "ls", "--cache", str(cache)],
            *([cmd, "--help"] for cmd in ("package", "keygen", "sign", "verify", "embed")),
        ],
    )
    assert result == {"codes": [0] * 10, "loaded": []}
    assert "Usage: edgeres [OPTIONS] COMMAND [ARGS]..." in stdout
    assert "Usage: edgeres build [OPTIONS] RECIPE" in stdout
    assert "name: tiny" in stdout
    assert not cache.exists()
    assert not out.exists()


def test_help_lists_exit_codes() -> None:
    res = run_cli("--help")
    assert res.code == 0
    text = " ".join(res.stdout.split())
    assert "Exit codes: 0 success; 1 internal error; 2 bad usage or invalid recipe; " in text
    assert "6 the artifact cache is locked, corrupt or lacks an entry --from needs;" in text
    assert "8 a write failed" in text and "9 a bundle is refused" in text
    for cmd in ("build", "validate", "cache", "doctor", "package", "keygen", "sign", "verify", "embed"):
        assert f"  {cmd} " in res.stdout
