"""Every command README.md and docs/*.md give works as written, and every link and path they name is there.

The commands are read from the pages themselves: fenced `bash` and `console` blocks, indented command lines,
and inline `code` that starts with a program. Each is checked by the program it runs, as cheaply as that
program allows: the cheap ones run for real in a fresh copy of the repository (`litpipe experiments`,
`litpipe dag --check`, the params errors the README shows, `snakemake` with `--dry-run`, `dvc status`,
`dvc remote modify --local`, ...); the rest are parsed by the tool's own parser or matched against its
`--help` (`dvc exp run -S ...`, `litpipe fit --seed S`), and `make -n` for each target. A line of a shell
block whose program this file does not know fails, so a new kind of command cannot go unchecked.
"""

import contextlib
import difflib
import functools
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, copy_repo, require_tool, run, tool_env

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 360

# Programs the pages may give commands for that are not checked here, and why.
UNCHECKED = {
    "cp": "a file copy in the data walk-through",
    "cat": "prints a file",
    "ssh": "port forwarding from a cluster node",
    "mamba": "no conda on the reference machine (the README says so)",
    "conda": "no conda on the reference machine (the README says so)",
    ".": "activates the environment `make install` creates",
    "python": "imports Lightning (9 s) to time its imports",
}
CHECKED = {
    "litpipe",
    "dvc",
    "snakemake",
    "make",
    "tensorboard",
    "optuna-dashboard",
    "wandb",
    "pytest",
    "git",
    "bash",
    "pip",
}
PROGRAMS = CHECKED | set(UNCHECKED)
SERVERS = ("tensorboard", "optuna-dashboard")


# --- reading the pages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # one command, its comment, environment settings and `time`/`sudo` taken off
    where: str  # page:line

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def stages() -> list[str]:
    """The stage names, read from dvc.yaml itself."""
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def without_fences(text: str) -> str:
    """The page with every fenced block's lines emptied (line numbers kept)."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def command_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of each command line a page gives: in fenced shell and console blocks, in indented
    code, and as inline code starting with a program."""
    text = page.read_text()
    found = []
    language, previous = None, ""
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            language = stripped[3:].strip() or "text" if language is None else None
        elif language in ("bash", "sh", "shell"):
            if stripped and not stripped.startswith("#"):
                found.append((number, stripped))
        elif language == "console":
            if stripped.startswith("$ "):
                found.append((number, stripped[2:]))
        elif language is None and line.startswith("    ") and not previous.strip():
            if stripped.split(" ")[0] in PROGRAMS:
                found.append((number, stripped))
        previous = line if language is None else "x"
    prose = without_fences(text)
    for span in re.finditer(r"`([^`]+)`", prose):
        code = " ".join(span[1].split())
        first = split_commands(code)[:1]
        if first and first[0][0] in PROGRAMS and len(first[0]) > 1:
            found.append((prose.count("\n", 0, span.start()) + 1, code))
    return found


def split_commands(line: str) -> list[list[str]]:
    """A shell line as its simple commands (split at && || ; |), each without its comment, placeholders like
    <name> made words (<stage> becomes every stage)."""
    line = re.sub(r"<(\w+)>", lambda m: m[1].upper(), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    expanded = []
    for argv in filter(None, commands):
        while argv and (re.fullmatch(r"[A-Z_]+=.*", argv[0]) or argv[0] in ("time", "/usr/bin/time", "sudo")):
            argv = argv[1:]
        if "STAGE" in argv:
            expanded += [[stage if word == "STAGE" else word for word in argv] for stage in stages()]
        elif argv:
            expanded.append(argv)
    return expanded


def all_commands() -> list[Command]:
    seen: dict[tuple[str, ...], Command] = {}
    for page in PAGES:
        for number, line in command_lines(page):
            for argv in split_commands(line):
                seen.setdefault(tuple(argv), Command(tuple(argv), f"{page.relative_to(ROOT)}:{number}"))
    return list(seen.values())


COMMANDS = all_commands()


def commands_of(program: str) -> list:
    """The program's commands as test parameters."""
    return [
        pytest.param(command, id=f"{command.text} ({command.where})")
        for command in COMMANDS
        if command.argv[0] == program
    ]


def test_every_command_is_one_this_file_checks():
    assert COMMANDS, "no commands found in the pages"
    unknown = [f"{c.where}: {c.text}" for c in COMMANDS if c.argv[0] not in PROGRAMS]
    assert not unknown, f"commands of programs test_docs.py does not check: {unknown}"
    for program in CHECKED - {"pip", "wandb", "git", "bash", "pytest"}:
        assert any(c.argv[0] == program for c in COMMANDS), f"no {program} command found: is the reader broken?"


# --- litpipe --------------------------------------------------------------------------------------------


def options_in(argv: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(option, the word after it) for each option a command line passes."""
    return [
        (word.split("=")[0], argv[i + 1] if i + 1 < len(argv) else None)
        for i, word in enumerate(argv)
        if word.startswith("-") and word != "-"
    ]


def assert_options_in_help(command: Command, options: list[tuple[str, str | None]], help_text: str) -> None:
    for option, value in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), (
            f"{command.where}: `{command.text}`: {option} is not an option here:\n{help_text}"
        )
        choices = re.search(rf"{re.escape(option)} \{{([\w,-]+)\}}", help_text)
        if choices and value is not None:
            assert value in choices[1].split(","), f"{command.where}: `{command.text}`: {option} takes {choices[1]}"


@functools.cache
def litpipe_help(*sub: str) -> str:
    result = run([require_tool("litpipe"), *sub, "--help"], ROOT)
    return result.stdout


@pytest.mark.parametrize("command", commands_of("litpipe"))
def test_litpipe_command_takes_the_options_written(command):
    """The sub-command exists (`litpipe --help` lists it) and takes every option written; the options of
    `litpipe experiments` are `dvc exp show`'s."""
    argv = list(command.argv[1:])
    if argv[:1] == ["--params"]:
        argv = argv[2:]
    if not argv or argv[0].startswith("-"):
        assert_options_in_help(command, options_in(tuple(argv)), litpipe_help())
        return
    sub, rest = argv[0], tuple(argv[1:])
    assert re.search(rf"^\s+{re.escape(sub)}\b", litpipe_help(), re.MULTILINE), f"{command.where}: no `litpipe {sub}`"
    help_text = litpipe_help(sub)
    if sub == "experiments":
        assert_dvc_parses(command, ["exp", "show", *rest])
    else:
        assert_options_in_help(command, options_in(rest), help_text)


def test_litpipe_help_lists_every_stage_with_its_description():
    """`litpipe --help` lists the stages of dvc.yaml with the `desc:` each has there."""
    listing = " ".join(litpipe_help().split())
    for name, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        assert f" {name} " in listing, f"litpipe --help does not list {name}"
        assert spec.get("desc"), f"dvc.yaml: stage {name} has no desc"
        assert " ".join(spec["desc"].split()) in listing, f"litpipe --help: {name}'s desc differs from dvc.yaml's"


def test_the_readme_stage_table_and_the_diagram_name_the_stages_of_dvc_yaml_in_order():
    """The stage names are a contract (DESIGN: identical in dvc.yaml, the CLI and the Snakefile): the README's
    table lists dvc.yaml's stages in their order, and its diagram draws each of them."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The stages")[1].split("\n## ")[0]
    listed = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert listed == stages
    diagram = readme.split("## Two commands")[0]
    assert all(re.search(rf"(-> {stage}\b|\b{stage} ->)", diagram) for stage in stages), diagram


@pytest.fixture
def fresh_copy(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


@pytest.mark.parametrize("argv", [["experiments"], ["dag"], ["dag", "--check"]], ids=" ".join)
def test_litpipe_command_runs_in_a_fresh_copy(fresh_copy, argv):
    assert any(c.argv[1:] == tuple(argv) for c in COMMANDS), f"the pages no longer give `litpipe {' '.join(argv)}`"
    result = run([require_tool("litpipe"), *argv], fresh_copy, timeout=120)
    if argv == ["experiments"]:
        assert "Experiment" in result.stdout and "workspace" in result.stdout, result.stdout


def console_examples() -> list:
    """The pages' `$ litpipe fit   # with KEY: VALUE` examples and the line each prints."""
    examples = []
    for page in PAGES:
        lines = page.read_text().split("\n")
        for number, line in enumerate(lines):
            if match := re.fullmatch(r"\$ (litpipe \w+)\s+# with (.+)", line.strip()):
                examples.append(pytest.param(match[1], match[2], lines[number + 1], id=f"{page.name}: {match[2]}"))
    return examples


def edited_params(change: str) -> str:
    """params.yaml with a page's change made to its text: `KEY: VALUE` sets a key (a misspelt key takes the
    place of the one it resembles), `KEY: VALUE in SECTION.KEY` adds an entry to that mapping, `KEY written
    twice` repeats its line."""
    text = (ROOT / "params.yaml").read_text().split("\n")

    def entries(start: int) -> dict[str, int]:
        """The keys of the mapping whose key is on line `start`, and their lines."""
        indent, found = len(text[start]) - len(text[start].lstrip()), {}
        for index in range(start + 1, len(text)):
            depth = len(text[index]) - len(text[index].lstrip())
            if text[index].strip() and depth <= indent:
                break
            if (key := re.match(r"\s+([\w.]+):", text[index])) and depth == indent + 2:
                found[key[1]] = index
        return found

    def line_of(dotted: str) -> int:
        section, *rest = dotted.split(".")
        index = text.index(next(line for line in text if line.startswith(f"{section}:")))
        for key in rest:
            index = entries(index)[key]
        return index

    if added := re.fullmatch(r"([\w.]+): (.+) in ([\w.]+)", change):
        parent = line_of(added[3])
        text.insert(parent + 1, " " * (len(text[parent]) - len(text[parent].lstrip()) + 2) + f"{added[1]}: {added[2]}")
        return "\n".join(text)
    twice = re.fullmatch(r"([\w.]+) written twice", change)
    dotted, value = (twice[1], None) if twice else change.split(": ", 1)
    parent, leaf = dotted.rsplit(".", 1)
    keys = entries(line_of(parent))
    index = keys[leaf if leaf in keys else difflib.get_close_matches(leaf, keys, n=1)[0]]
    if twice:
        text.insert(index + 1, text[index])
    else:
        indent = re.match(r"\s+", text[index])[0]
        text[index] = f"{indent}{leaf}: {value}"
    return "\n".join(text)


@pytest.mark.parametrize("command, change, expected", console_examples())
def test_params_error_shown_is_what_litpipe_prints(tmp_path, command, change, expected):
    (tmp_path / "params.yaml").write_text(edited_params(change))
    result = run([require_tool("litpipe"), *command.split()[1:]], tmp_path, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == expected.strip()


def test_out_of_order_message_is_what_litpipe_prints(fresh_copy):
    """The README's `litpipe fit` in a fresh clone after `litpipe prepare`: only the existence of the prepared
    data counts before the message, so an empty data/prepared stands for it."""
    readme = (ROOT / "README.md").read_text()
    expected = next(line.strip() for line in readme.split("\n") if line.strip().startswith("litpipe: fit needs"))
    (fresh_copy / "data" / "prepared").mkdir(parents=True)
    result = run([require_tool("litpipe"), "fit"], fresh_copy, check=False, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == expected


# --- dvc ------------------------------------------------------------------------------------------------

DVC_GROUPS = {"exp", "experiments", "queue", "remote", "cache", "plots", "stage", "metrics", "params", "data"}
# Subcommands cheap and harmless enough to run for real in a fresh copy.
DVC_RUN = {("status",), ("queue", "status"), ("exp", "show"), ("remote", "modify"), ("cache", "dir"), ("config",)}


def assert_dvc_parses(command: Command, argv: list[str]) -> None:
    """DVC's own parser accepts the arguments (hidden debugging options included)."""
    from dvc.cli import DvcParserError, parse_args

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            parse_args(argv)
    except (SystemExit, DvcParserError):
        pytest.fail(f"{command.where}: `{command.text}`: dvc refuses `dvc {' '.join(argv)}`\n{output.getvalue()}")


def dvc_subcommand(argv: tuple[str, ...]) -> tuple[str, ...]:
    words = [word for word in argv[1:3] if not word.startswith("-")]
    return tuple(words[:2]) if words and words[0] in DVC_GROUPS else tuple(words[:1])


@pytest.mark.parametrize("command", commands_of("dvc"))
def test_dvc_command_parses_and_its_help_runs(command, tmp_path):
    require_tool("dvc")
    assert_dvc_parses(command, list(command.argv[1:]))
    sub = dvc_subcommand(command.argv)
    run(["dvc", *sub, "--help"], ROOT, timeout=60)
    if sub in DVC_RUN:
        repo = copy_repo(tmp_path / "repo")
        run(list(command.argv), repo, timeout=120)


# --- snakemake, make, the servers, scripts ----------------------------------------------------------


@pytest.mark.parametrize("command", commands_of("snakemake"))
def test_snakemake_command_runs_dry_in_a_fresh_copy(command, fresh_copy):
    """As written, with --dry-run added (--lint runs as it is); an untracked profile a command names is made
    as the README says to make one."""
    require_tool("snakemake")
    argv = list(command.argv)
    if not {"--lint", "-n", "--dry-run", "--dryrun"} & set(argv):
        argv.append("--dry-run")
    for profile in [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--profile"]:
        if not (fresh_copy / profile).exists():
            (fresh_copy / profile).mkdir()
            (fresh_copy / profile / "config.yaml").write_text("jobs: 20\n")
    result = run(argv, fresh_copy, check=False, timeout=120)
    output = result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"{command.where}: `{shlex.join(argv)}`\n{output}"


@pytest.mark.parametrize("command", commands_of("make"))
def test_make_target_exists(command):
    result = subprocess.run(["make", "-n", *command.argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command.where}: `{command.text}`: {result.stderr}"


@pytest.mark.parametrize("command", commands_of("tensorboard") + commands_of("optuna-dashboard") + commands_of("wandb"))
def test_tool_takes_the_options_written(command):
    program = require_tool(command.argv[0])
    sub = [word for word in command.argv[1:2] if command.argv[0] == "wandb"]
    result = subprocess.run([program, *sub, "--help"], env=tool_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    options = options_in(command.argv[1 + len(sub) :])
    assert_options_in_help(command, options, result.stdout + result.stderr)


def test_every_server_command_binds_loopback():
    """TensorBoard and optuna-dashboard have no authentication: every page starts them on 127.0.0.1 only."""
    servers = [c for c in COMMANDS if c.argv[0] in SERVERS]
    assert servers
    for command in servers:
        host = next((command.argv[i + 1] for i, word in enumerate(command.argv[:-1]) if word == "--host"), None)
        assert host == "127.0.0.1" and "--bind_all" not in command.argv, f"{command.where}: `{command.text}`"


@pytest.mark.parametrize("command", commands_of("bash"))
def test_script_exists_and_parses(command):
    script = ROOT / command.argv[1]
    assert script.is_file(), f"{command.where}: no {command.argv[1]}"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize("command", commands_of("git"))
def test_git_subcommand_exists(command):
    result = subprocess.run(["git", command.argv[1], "-h"], capture_output=True, text=True)
    assert f"usage: git {command.argv[1]}" in result.stdout + result.stderr, f"{command.where}: `{command.text}`"


@pytest.mark.parametrize("command", commands_of("pip"))
def test_pip_installs_what_the_repository_declares(command):
    """An extra (`.[wandb]`) that pyproject.toml declares, a file that is there, a package that the lock pins."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = set(re.findall(r"^([\w.-]+)==", (ROOT / "requirements.lock").read_text(), re.MULTILINE))
    argv = command.argv[2:] if command.argv[1:2] == ("install",) else pytest.fail(f"{command.where}: not pip install")
    for previous, word in zip(("",) + argv, argv):
        if found := re.fullmatch(r"\.\[([\w,-]+)\]", word):
            assert set(found[1].split(",")) <= set(extras), f"{command.where}: `{command.text}`: extras are {extras}"
        elif previous == "-r":
            assert (ROOT / word).is_file(), f"{command.where}: no {word}"
        elif not word.startswith("-") and word != ".":
            assert word.lower() in {name.lower() for name in pinned}, f"{command.where}: {word} is not locked"


def pytest_markers() -> list:
    names = {
        name
        for command in COMMANDS
        if command.argv[0] == "pytest" or "PYTEST_ARGS" in command.text
        for expression in re.findall(r"-m\s+(?:\"([^\"]+)\"|'([^']+)'|(\S+))", command.text)
        for name in re.findall(r"\w+", " ".join(expression))
        if name not in ("and", "or", "not")
    }
    for page in PAGES:  # markers the pages name in prose (`needs_gpu`)
        names |= set(re.findall(r"marked `(\w+)`", page.read_text()))
    return sorted(names)


@pytest.mark.parametrize("marker", pytest_markers())
def test_pytest_marker_the_pages_name_is_registered(pytestconfig, marker):
    registered = {line.split(":")[0].split("(")[0].strip() for line in pytestconfig.getini("markers")}
    assert marker in registered, f"pytest marker {marker} is not registered: {sorted(registered)}"


# --- links, paths, the layout, the README's length --------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, counts = set(), {}
    for line in without_fences(page.read_text()).split("\n"):
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            found.add(base if base not in counts else f"{base}-{counts[base]}")
            counts[base] = counts.get(base, 0) + 1
    return found


def links() -> list:
    params = []
    for page in PAGES:
        prose = re.sub(r"`[^`]*`", "", without_fences(page.read_text()))
        for match in re.finditer(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", prose):
            target = match[1]
            if not re.match(r"[a-z]+:", target):
                params.append(pytest.param(page, target, id=f"{page.name}->{target}"))
    return params


@pytest.mark.parametrize("page, target", links())
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.relative_to(ROOT)}: {target}: no such file"
    if anchor:
        assert anchor in anchors(linked), f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} there"


REPOSITORY_PATH = r"(?<![\w./-])((?:src|tests|workflow|slurm|benchmarks|\.ci|docs)/[\w./:-]*[\w/])"


def named_paths() -> list:
    """Paths under the repository's own directories that the pages name, e.g. `src/litpipe/spread.py`,
    `tests/test_model.py::test_fit_is_reproducible_on_cpu` (a placeholder such as `<name>` ends a path)."""
    found = {match[1] for page in PAGES for match in re.finditer(REPOSITORY_PATH, page.read_text())}
    return [pytest.param(path, id=path) for path in sorted(found)]


@pytest.mark.parametrize("path", named_paths())
def test_named_path_exists(path):
    file, _, test = path.partition("::")
    assert (ROOT / file).exists(), f"{file} does not exist"
    if test:
        assert re.search(rf"^def {re.escape(test)}\(", (ROOT / file).read_text(), re.MULTILINE), f"no {test} in {file}"


def layout() -> set[str]:
    """The paths the README's Layout names: its top-level entries, and src/litpipe's under it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    names, parent = set(), ""
    for line in section.split("\n"):
        if not line.startswith("    ") or not line.strip() or line.startswith(" " * 12):
            continue
        nested = line.startswith("      ")
        entries = re.split(r"\s{2,}", line.strip())[0]
        for entry in entries.split(", "):
            entry = entry.strip()
            if not nested:
                parent = entry if entry.endswith("/") else parent
            names.add(parent + entry if nested else entry)
    return names


def test_layout_names_only_what_exists():
    missing = sorted(name for name in layout() if not (ROOT / name).exists())
    assert not missing, f"README Layout names what is not there: {missing}"


def test_layout_names_every_module_of_the_package():
    package = ROOT / "src" / "litpipe"
    entries = {
        f"src/litpipe/{path.name}" + ("/" if path.is_dir() else "")
        for path in package.iterdir()
        if path.name not in ("__init__.py", "__pycache__") and (path.is_dir() or path.suffix == ".py")
    }
    assert not entries - layout(), f"README Layout does not name: {sorted(entries - layout())}"


def test_readme_links_every_page_of_docs():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name}" in readme, f"README does not link docs/{page.name}"


def test_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().split("\n"))
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"
