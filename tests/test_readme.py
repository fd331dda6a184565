"""The README's command synopsis matches the real CLI (every subcommand and option exists)."""

from __future__ import annotations

import os
import re

from tests.conftest import ROOT


def _readme_block(heading: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    return section.split("```", 2)[1]


def _subcommand_help(parser, name: str) -> str:  # type: ignore[no-untyped-def]
    for action in parser._subparsers._group_actions:  # noqa: SLF001
        if name in action.choices:
            return action.choices[name].format_help()
    raise AssertionError(f"README names subcommand {name!r}, which the CLI does not have")


def test_vmu_synopsis_matches_parser() -> None:
    from prover.cli import build_parser

    parser = build_parser()
    lines = [ln for ln in _readme_block("## The `vmu` command").splitlines() if ln.strip()]
    current = None
    seen = 0
    for ln in lines:
        m = re.match(r"vmu (\w+)", ln)
        if m:
            current = m.group(1)
        assert current is not None
        help_text = _subcommand_help(parser, current)
        for opt in re.findall(r"--[a-z][a-z-]*", ln):
            assert opt in help_text, f"README shows {opt} for 'vmu {current}', the CLI has no such option"
            seen += 1
    assert seen >= 15


def test_vmu_verify_synopsis_matches_parser() -> None:
    from verifier.cli import build_parser

    help_text = build_parser().format_help()
    block = _readme_block("## Proof bundles and the independent verifier")
    text = block[block.index("vmu-verify") :]
    opts = re.findall(r"--[a-z][a-z-]*", text)
    assert len(opts) >= 15
    for opt in opts:
        assert opt in help_text, f"README shows {opt} for vmu-verify, the CLI has no such option"
    # and every option the CLI has is in the README
    for opt in set(re.findall(r"(--[a-z][a-z-]*)", help_text)) - {"--help"}:
        assert opt in text, f"vmu-verify has {opt}, the README synopsis does not show it"
