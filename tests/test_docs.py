"""The README's command-line synopsis against the click commands, both ways (tests/docs_check.py; `make docs-check`
also runs the README's commands against a 1-epoch quickstart build)."""

from __future__ import annotations

import re

from docs_check import README, blocks, synopsis_problems


def test_the_readme_synopsis_matches_the_cli() -> None:
    assert synopsis_problems() == []


def test_the_synopsis_check_finds_drift_both_ways() -> None:
    text = README.read_text(encoding="utf-8")
    drifted = re.sub(
        r"edgeres cache ls \[--cache DIR\][^\n]*\n",
        "",
        text.replace("[--allow-missing]", "[--allow-nothing]", 1),
        count=1,
    )
    assert synopsis_problems(drifted) == [
        "`edgeres cache ls` exists but is not in the README synopsis",
        "`edgeres compare --allow-nothing` is documented but the command has no such option",
        "`edgeres compare --allow-missing` exists but the README synopsis does not show it",
    ]


def test_the_readme_has_runnable_blocks_for_the_daily_commands() -> None:
    """The blocks `make docs-check` runs cover bench, compare, keygen, sign, verify, eval and embed, and the Python
    API, on the quickstart's outputs."""
    runnable = [b for b in blocks(README.read_text(encoding="utf-8")) if b.lang in ("sh", "python")]
    text = "\n".join(b.text for b in runnable)
    for command in ("bench", "compare", "keygen", "sign", "verify", "eval", "embed"):
        assert f"edgeres {command} " in text, command
    assert "edgeres.load(" in text and "edgeres.split_images(" in text
    assert "out/quickstart/" in text
