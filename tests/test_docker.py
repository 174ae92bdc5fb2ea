"""The Dockerfile installs synthseg the way the README does, and its entry point is train.py (no Docker engine
needed: the files are parsed)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pip_installs(command_line: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a shell command line (``&&``/``;`` chains)."""
    found = []
    for part in re.split(r"&&|;|\|\|", command_line):
        words = shlex.split(part)
        for i, word in enumerate(words[1:], start=1):
            if word == "install" and words[i - 1] in ("pip", "pip3"):
                found.append(words[i + 1 :])
    return found


def project_targets(args: list[str]) -> list[str]:
    """What an install argument list installs from the repository itself (``-e .``, ``-e ".[dev]"``)."""
    targets = []
    for i, word in enumerate(args):
        if word in ("-e", "--editable") and i + 1 < len(args):
            targets.append(args[i + 1])
    return [t for t in targets if t == "." or t.startswith(".[")]


def readme_install_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)
    # A shell line continued with a trailing backslash is one command.
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [args for line in lines for args in pip_installs(line)]
    # The README's GPU note: the CUDA torch first, "and then `pip install -e .`".
    commands += [pip_installs(m)[0] for m in re.findall(r"`(pip install [^`]+)`", text)]
    return commands


def test_parsers_see_what_they_should() -> None:
    assert pip_installs(
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2 -e '.[dev]'"
    ) == [["torch==2", "-e", ".[dev]"]]
    assert pip_installs("python -m pip install -e .") == [["-e", "."]]
    assert project_targets(["torch==2", "-e", ".[dev]"]) == [".[dev]"]
    assert project_targets(["numpy"]) == []
    assert dockerfile_instructions("FROM a\n# c\nRUN x \\\n  y\n") == [("FROM", "a"), ("RUN", "x    y")]


def test_readme_installs_the_project_editable_from_the_repository() -> None:
    targets = [t for args in readme_install_commands() for t in project_targets(args)]
    assert "." in [t.split("[")[0] for t in targets], "the README no longer installs with pip install -e ."


def test_dockerfile_installs_the_project_as_the_readme_does() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = [args for word, args in instructions if word == "RUN"]
    docker_installs = [args for run in runs for args in pip_installs(run)]
    docker_targets = [t for args in docker_installs for t in project_targets(args)]
    readme_targets = {t for args in readme_install_commands() for t in project_targets(args)}
    assert docker_targets, "the Dockerfile does not install the project with pip install -e"
    # Same install as the README (runtime extras only: the image is for training, not for tests).
    assert set(docker_targets) <= readme_targets | {"."}
    assert "." in docker_targets
    # The CUDA torch comes from the base image; a torch from PyPI here would replace it.
    assert not any(a.startswith("torch") for args in docker_installs for a in args)

    # `.` is the repository: the whole build context is copied into the working directory.
    workdirs = [args for word, args in instructions if word == "WORKDIR"]
    copies = [shlex.split(args) for word, args in instructions if word == "COPY"]
    assert [".", "."] in copies or [".", workdirs[-1]] in copies
    install_at = next(i for i, (w, a) in enumerate(instructions) if w == "RUN" and "-e" in a)
    copy_at = next(i for i, (w, a) in enumerate(instructions) if w == "COPY")
    assert copy_at < install_at, "the project must be copied before it is installed"


def test_dockerfile_uses_a_cuda_pytorch_base_image() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 1
    base = froms[0]
    if base.startswith("${"):
        name = base.strip("${}")
        base = next(a.split("=", 1)[1] for w, a in instructions if w == "ARG" and a.startswith(f"{name}="))
    assert re.fullmatch(r"pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda[\d.]+-cudnn\d+-(runtime|devel)", base), base
    major, minor = (int(x) for x in re.match(r"pytorch/pytorch:(\d+)\.(\d+)", base).groups())
    assert (major, minor) >= (2, 3)  # pyproject: torch>=2.3,<3


def test_entrypoint_is_train_py() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    entry = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert len(entry) == 1
    command = json.loads(entry[0])  # exec form, so `docker run IMAGE key=value` passes overrides through
    assert command[0] in ("python", "python3") and command[1:] == ["train.py"]
    assert (ROOT / "train.py").is_file()


@pytest.mark.parametrize("path", ["README.md", "Dockerfile.dockerignore"])
def test_docker_folder_is_complete(path: str) -> None:
    text = (ROOT / "docker" / path).read_text()
    if path == "README.md":
        assert "docker build -f docker/Dockerfile" in text
        assert "--gpus" in text and "-v " in text and "6006" in text
    else:
        assert {".venv", "logs", "data", ".git"} <= set(text.split())
