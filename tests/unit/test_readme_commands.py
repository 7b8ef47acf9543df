"""Every `sideformer ...` command shown in README.md and README.ko.md exists in the real parser, with every
flag it shows, and every `--set KEY=VALUE` names a real setting: a renamed command or flag fails here
instead of in a reader's terminal."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from sideformer.cli import build_parser
from sideformer.config import load_config
from sideformer.errors import UserError

REPO = Path(__file__).resolve().parents[2]
READMES = ("README.md", "README.ko.md")


def shown_commands(markdown: str) -> Iterator[list[str]]:
    """The arguments after `sideformer` in each shell line of the code blocks (a `torchrun ... -m
    sideformer ...` or a `docker run IMAGE ...` of the sideformer image included), and in inline code."""
    for block in shell_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # not shell (JSON, YAML)
                continue
            for i, token in enumerate(tokens):
                image = re.fullmatch(r"sideformer:(cpu|cuda)", token) and tokens[:2] == ["docker", "run"]
                if token == "sideformer" or image:
                    yield tokens[i + 1 :]
                    break
    for span in re.findall(r"`(sideformer [^`]+)`", markdown):
        yield shlex.split(span)[1:]


def shell_blocks(markdown: str) -> Iterator[str]:
    """The text of each fenced code block in a shell language (or none given)."""
    language, lines = None, []
    for line in markdown.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip() or "sh", []
            else:
                if language in ("sh", "bash", "console", "shell"):
                    yield "\n".join(lines) + "\n"
                language = None
        elif language is not None:
            lines.append(line)


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def check(args: list[str]) -> None:
    """AssertionError naming the command, flag or setting the parser does not know."""
    parser, path = build_parser(), ["sideformer"]
    rest = list(args)
    while (commands := subparsers(parser)) is not None and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        if word == "...":  # `sideformer search ... --nproc-per-node auto`: the flags are still search's
            break
        if word.isupper():  # a placeholder: `sideformer COMMAND --help`
            return
        if word not in commands.choices:
            raise AssertionError(f"`{' '.join(path)} {word}`: no such command")
        parser = commands.choices[word]
        path.append(word)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for i, token in enumerate(rest):
        if not token.startswith("-") or token == "-":
            continue
        flag = token.split("=", 1)[0]
        if flag not in flags:
            raise AssertionError(f"`{' '.join(path)}` has no flag {flag}")
        if flag == "--set" and i + 1 < len(rest):
            try:
                load_config(None, [rest[i + 1]])
            except UserError as exc:
                raise AssertionError(f"`{' '.join(path)} --set {rest[i + 1]}`: {exc}") from None


@pytest.mark.parametrize("readme", READMES)
def test_every_command_shown_exists(readme: str) -> None:
    commands = list(shown_commands((REPO / readme).read_text(encoding="utf-8")))
    assert len(commands) >= 15, f"{readme}: expected its usage examples, found {len(commands)} commands"
    failures = []
    for args in commands:
        try:
            check(args)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{readme}:\n" + "\n".join(failures)


def test_the_korean_readme_shows_what_the_issue_asked_for() -> None:
    text = (REPO / "README.ko.md").read_text(encoding="utf-8")
    shown = {" ".join(args[:2]) for args in shown_commands(text)}
    for command in ("train --data", "tune --data", "convert-aihub --src", "search --data", "final --data"):
        assert command in shown, command
    for needed in (
        "make demo",
        "make test",
        "metadata.json",
        "--skip-hyperopt",
        "--hyperparams-file",
        "helm install",
        "k8s/final-pytorchjob.yaml",
        "optuna-dashboard",
        "0.42",
        "0.86",
    ):
        assert needed in text, needed
    assert "README.ko.md" in (REPO / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0]


@pytest.mark.parametrize(
    "args",
    [
        ["trian", "--data", "D"],
        ["train", "--no-such-flag"],
        ["study", "bset"],
        ["train", "--set", "train.epoch=3"],
    ],
)
def test_the_check_catches_what_no_longer_exists(args: list[str]) -> None:
    with pytest.raises(AssertionError):
        check(args)
