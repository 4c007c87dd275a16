"""Docs that cannot rot: every command, option, canned query and hook is in the README."""

import re
from pathlib import Path

import pytest

import pdsync
from pdsync import hookspecs
from pdsync.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command):
    assert f"## `pdsync {command}`" in README


@pytest.mark.parametrize(
    "command, option",
    [
        (name, opt)
        for name, command in sorted(cli.commands.items())
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    ],
)
def test_every_long_option_is_documented(command, option):
    assert option in README, f"pdsync {command} {option}"


@pytest.mark.parametrize("name", sorted(q["name"] for q in pdsync.queries()))
def test_every_canned_query_is_documented(name):
    assert f"`{name}`" in README


@pytest.mark.parametrize("hook", sorted(n for n in dir(hookspecs) if n.startswith("pdsync_")))
def test_every_hook_is_documented(hook):
    assert re.search(rf"`{hook}\(", README)


def test_readme_starts_with_the_two_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith("pdsync demo")
    assert blocks[1].endswith("pytest")
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert blocks[1] in ci  # CI runs exactly the README's test command


def test_every_path_the_architecture_page_names_exists():
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"(?<![\w/-])(?:pdsync|tests|datasette_plugins)/[\w/.-]*\w/?", text))
    paths |= {"metadata.yml"} if "`metadata.yml`" in text else set()
    # modules named alone, in a table under their package's heading
    folders = ["pdsync", "pdsync/fake", "pdsync/datasette_plugin"]
    alone = set(re.findall(r"`(\w+\.(?:py|html))`", text))
    missing = [p for p in sorted(paths) if not (root / p).exists()]
    missing += [n for n in sorted(alone) if not any((root / f / n).exists() for f in folders)]
    assert not missing and len(paths) > 20
