"""README.md and docs/*.md kept true: every command they show gets as far as its --help with every flag they use
(argparse checks the values it was given before it prints the help), every path they name exists, the layout lists
core/ and apps/ as they are, the tabs come in the app's order, the README's Python snippet runs, and its test
command is the one CI runs (.ci/run).

The `python -m core.X` / `python bench/X.py` commands run in one child interpreter (`HELPER`, the venv's python,
runpy as `python -m` does) rather than one process each: each start costs 3 s of imports on a 2-core machine, and
the pages hold about 60 commands."""
import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
CONSOLE_SCRIPTS = ("hf", "accelerate", "torchrun", "streamlit")    # the venv's own commands the pages use
UNCHECKED = ("sudo", "export", "pip", "docker")     # set-up and deployment: run by CI (.ci/run) or not at all here
FILE = re.compile(r"(?<![\w/.$<-])(?:[\w-]+/)*[\w-]+\.(?:py|c|md|json|txt|toml|yaml|cfg)(?![\w/])")
FOLDER = re.compile(r"(?<![\w/.$<-])(?:[\w.-]+/)+(?![\w<])")


# --------------------------------------------------------------------------------------------- reading the pages
def fences(path: Path, languages: tuple[str, ...]) -> list[str]:
    """The fenced code blocks of a Markdown page in one of `languages`."""
    return [body for language, body in re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.M | re.S)
            if language in languages]


def section(path: Path, heading: str) -> str:
    """The text under the `## heading...` of a page, to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(heading)}.*?\n(.*?)(?=^## |\Z)", path.read_text(), re.M | re.S)
    assert match, f"{path.name} has no section '## {heading}'"
    return match.group(1)


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a shell block as tokens: continuation lines joined, comments dropped, `&&` chains split,
    a leading VAR=value dropped, `...` (the pages' "and the other options") dropped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            end = tokens.index("&&") if "&&" in tokens else len(tokens)
            command = [t for t in tokens[:end] if t != "..."]
            while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                command = command[1:]
            if command:
                commands.append(command)
            tokens = tokens[end + 1:]
    return commands


def page_commands(pages=PAGES) -> list[tuple[str, list[str]]]:
    return [(path.name, command) for path in pages for block in fences(path, ("bash", "sh", "shell"))
            for command in shell_commands(block)]


# ------------------------------------------------------------------------------------ commands -> --help runs
def python_part(command: list[str]) -> tuple[str, str, list[str]] | None:
    """("module", "core.train", args) or ("script", "bench/x.py", args) for a genlab command, else None; the python
    after `accelerate launch ... -m` or `torchrun ... -m` counts too."""
    program = Path(command[0]).name
    if program in ("python", "python3"):
        rest = command[1:]
    elif program in ("accelerate", "torchrun") and "-m" in command:
        rest = command[command.index("-m"):]
    else:
        return None
    if rest[:1] == ["-m"] and rest[1].startswith("core."):
        return "module", rest[1], rest[2:]
    if rest and rest[0].endswith(".py"):
        return "script", rest[0], rest[1:]
    return None


def uses_argparse(script: str) -> bool:
    return "ArgumentParser" in (ROOT / script).read_text()


def help_runs(commands) -> list[tuple[str, str, list[str]]]:
    """Every distinct genlab command to run with --help, scripts without argparse (the sampler) left out."""
    runs = []
    for _, command in commands:
        part = python_part(command)
        if part and not (part[0] == "script" and not uses_argparse(part[1])) and part not in runs:
            runs.append(part)
    return runs


HELPER = r"""
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)        # runpy: "found in sys.modules" when a module runs twice
runs, out_file = json.loads(sys.argv[1]), sys.argv[2]
results = []
for kind, target, args in runs:
    text = io.StringIO()
    sys.argv = [target, *args, "--help"]
    code = "ran to its end without exiting: no --help"
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as stop:
            code = stop.code or 0
        except BaseException as error:
            code = f"raised {error!r}"
    results.append([code, text.getvalue()])
open(out_file, "w").write(json.dumps(results))
"""


def console_help(command: list[str]) -> list[str]:
    """`hf auth login --token X` -> the venv's `hf auth login --help`: the subcommand words, no options (accelerate
    leaves out of its help the options that a given one rules out)."""
    words = [command[0]]
    for word in command[1:]:
        if not re.fullmatch(r"[a-z][\w-]*", word):
            break
        words.append(word)
    return [str(BIN / words[0]), *words[1:], "--help"]


def console_options(command: list[str]) -> list[str]:
    """The options a console command gets itself: not those after `-m MODULE` (accelerate, torchrun) or `--`."""
    for end in ("-m", "--"):
        command = command[:command.index(end)] if end in command else command
    return flags(command)


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    """{command key: (exit code, output)} for every genlab and console command of the pages, run with --help."""
    commands = page_commands()
    runs = help_runs(commands)
    out_file = tmp_path_factory.mktemp("helps") / "helps.json"
    consoles, found_missing = {}, {}
    for _, command in commands:
        if Path(command[0]).name in CONSOLE_SCRIPTS:
            argv = console_help(command)
            if not Path(argv[0]).is_file():
                found_missing[json.dumps(argv)] = (None, f"{argv[0]} is not installed")
                continue
            consoles.setdefault(tuple(argv), subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                                                 stderr=subprocess.STDOUT, text=True))
    helper = subprocess.run([sys.executable, "-c", HELPER, json.dumps(runs), str(out_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert helper.returncode == 0, helper.stderr[-3000:]
    found = {json.dumps(run): tuple(result) for run, result in zip(runs, json.loads(out_file.read_text()))}
    found.update(found_missing)
    for argv, process in consoles.items():
        output = process.communicate(timeout=60)[0]
        found[json.dumps(argv)] = (process.returncode, output)
    return found


def declared_options(help_text: str) -> set[str]:
    """The option strings a --help declares: its usage lines and the first column of its option lines (not the
    description's prose, which may mention options of other commands)."""
    options = set()
    usage = help_text.split("\n\n")[0] if help_text.lower().startswith("usage") else ""
    options |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
    for line in help_text.splitlines():
        if re.match(r"\s+-", line):
            options |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", re.split(r"\s{2,}", line.strip())[0]))
    return options


def flags(args: list[str]) -> list[str]:
    return [arg.split("=")[0] for arg in args if arg.startswith("-") and arg not in ("-", "--")]


def command_id(item) -> str:
    return " ".join(item[1])[:80]


ALL_COMMANDS = page_commands()


@pytest.mark.parametrize("page, command", ALL_COMMANDS, ids=[command_id(item) for item in ALL_COMMANDS])
def test_every_command_gets_to_its_help_with_every_flag_it_uses(page, command, helps):
    part = python_part(command)
    program = Path(command[0]).name
    assert program in ("python", "python3", *CONSOLE_SCRIPTS, *UNCHECKED), f"{page}: `{program}` is not a known command"
    if program in CONSOLE_SCRIPTS:
        code, text = helps[json.dumps(console_help(command))]
        assert code == 0, f"{page}: `{' '.join(console_help(command))}` exited {code}:\n{text[-2000:]}"
        missing = [f for f in console_options(command) if f not in declared_options(text)]
        assert not missing, f"{page}: {program} does not know {missing}:\n{text[-3000:]}"
    if part is None:
        if program in ("python", "python3"):
            assert command[1:] in (["-m", "pytest"], ["-m", "venv", ".venv"]), f"{page}: unchecked python command"
        return
    kind, target, args = part
    if kind == "script":
        assert (ROOT / target).is_file(), f"{page}: {target} does not exist"
        if not uses_argparse(target):                   # the sampler app: no options, starts when run as a script
            assert not flags(args), f"{page}: {target} takes no options, the page gives it {flags(args)}"
            assert re.search(r'^if __name__ == "__main__":', (ROOT / target).read_text(), re.M), target
            return
    code, text = helps[json.dumps(list(part))]
    assert code == 0, f"{page}: `{target} {' '.join(args)} --help` exited {code}:\n{text[-3000:]}"
    missing = [f for f in flags(args) if f not in declared_options(text)]
    assert not missing, f"{page}: `{target} {' '.join(args[:2])}` does not know {missing}:\n{text[-3000:]}"
    for arg in args:                                    # a shipped checkpoint named on the command line exists
        if arg.startswith("checkpoints/"):
            assert (ROOT / arg).exists(), f"{page}: {arg} does not exist"


def test_the_monitor_takes_the_options_the_pages_give_it():
    """`streamlit run apps/monitor.py -- --runs DIR`: the options after `--` are the app's own (apps/monitor.py
    parses them with add_help=False, so there is no --help to ask)."""
    seen = [c for _, c in ALL_COMMANDS if c[:2] == ["streamlit", "run"]]
    assert seen, "no page shows how to start the monitor"
    for command in seen:
        script = command[2]
        declared = {node.args[0].value for node in ast.walk(ast.parse((ROOT / script).read_text()))
                    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"}
        app_args = command[command.index("--") + 1:] if "--" in command else []
        assert set(flags(app_args)) <= declared, (script, flags(app_args), declared)


# ------------------------------------------------------------------------------------------ set-up and CI agree
def ci_test_command() -> str:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    marker = next(i for i, line in enumerate(lines) if line.startswith("# The README's test command"))
    return lines[marker + 1]


def test_the_readme_test_command_is_the_one_ci_runs():
    setup = fences(README, ("bash",))
    chains = [block.strip() for block in setup if "-m pytest" in block]
    assert len(chains) == 1, "the README shows one test command"
    steps = [part.strip() for part in chains[0].split("&&")]
    assert steps[-1] == ci_test_command() == ".venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    ci_packages = re.search(r"apt-get install -y -qq (.*?) >", ci).group(1).split()
    install = next(step for step in steps if "apt-get install" in step).split("-y", 1)[1].split()
    assert install == ci_packages, (install, ci_packages)
    assert "pip install -r requirements-dev.txt -e ." in chains[0] and "-r requirements-dev.txt -e ." in ci


def test_the_first_command_installs_and_starts_the_sampler():
    first = next(block.strip() for block in fences(README, ("bash",)) if "apps/sampler.py" in block)
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e .")
    assert first.endswith(".venv/bin/python apps/sampler.py")
    assert "sudo apt install python3-venv" in README.read_text()       # what a bare Debian/Ubuntu lacks


# ------------------------------------------------------------------------------------------ what the pages name
def layout_entries() -> dict[str, set[str]]:
    """{folder: names listed in it} from the README's layout block: a line starting at column 0 names a folder,
    the file and folder names after it (and on its indented lines) are in that folder."""
    blocks = [b for b in fences(README, ("",)) if re.match(r"core/\s", b)]
    assert len(blocks) == 1, "the README's Layout section has one plain code block starting with core/"
    listed, folder = {}, None
    for line in blocks[0].splitlines():
        if line and not line[0].isspace():
            folder = line.split()[0]
            listed.setdefault(folder, set())
            line = line[len(folder):]
        listed[folder] |= set(FILE.findall(line)) | set(FOLDER.findall(line))
    return listed


def test_the_layout_names_only_what_exists():
    for folder, names in layout_entries().items():
        assert folder.endswith("/") and (ROOT / folder).is_dir(), folder
        for name in names:
            assert (ROOT / folder / name).exists() or list((ROOT / folder).glob(f"*/{name}")), f"{folder}{name}"


def committed(folder: str) -> list[Path]:
    """The files of a folder that git tracks (a module someone is still writing, not yet committed, is not listed
    yet); every file where the tree is not a git checkout."""
    listing = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True)
    if listing.returncode != 0:
        return list((ROOT / folder).iterdir())
    return [ROOT / line for line in listing.stdout.splitlines()]


@pytest.mark.parametrize("folder", ["core/", "core/models/", "core/schedulers/", "core/services/", "apps/"])
def test_the_layout_lists_every_module(folder):
    modules = {p.name for p in committed(folder)
               if p.parent == ROOT / folder.rstrip("/") and p.suffix in (".py", ".c") and p.name != "__init__.py"}
    assert modules, f"no modules found in {folder}"
    listed = layout_entries().get(folder, set())
    assert modules <= listed, f"README's Layout misses {sorted(modules - listed)} in {folder}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_paths_a_page_names_exist(page):
    """Backticked paths (`core/kernels.py`, `checkpoints/index.json`) and relative links with their #anchors."""
    text = page.read_text()
    for code in re.findall(r"`([^`\n]+)`", text):
        if re.fullmatch(r"(?:core|apps|bench|tests|docs|checkpoints|\.ci)/[\w./-]*", code):
            assert (ROOT / code).exists(), f"{page.name} names {code}"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name} links to {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name} links to {target}: no such heading in {linked.name}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces -> -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name}" in text, f"README does not link docs/{page.name}"


def test_the_tabs_come_in_the_apps_order():
    from core.services import SERVICES
    shown = re.findall(r"^\d+\. \*\*(.+?)\*\*", section(README, "The sampler's tabs"), re.M)
    assert shown == [service.tab for service in SERVICES]


def test_the_models_table_lists_the_shipped_checkpoints():
    manifest = json.loads((ROOT / "checkpoints" / "index.json").read_text())["models"]
    rows = re.findall(r"^\| `([\w-]+)` \|", section(README, "Shipped models"), re.M)
    assert sorted(rows) == sorted(model["name"] for model in manifest)
    assert all((ROOT / "checkpoints" / model["folder"] / "config.json").is_file() for model in manifest)


# ------------------------------------------------------------------------------------------------- Python code
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_compiles(page):
    for block in fences(page, ("python",)):
        compile(block, f"{page.name} python block", "exec")


def test_the_readme_python_snippet_runs(tmp_path):
    """The README's snippet defines everything it uses: it runs as it stands, in a scratch folder (it writes a PNG)."""
    snippets = fences(README, ("python",))
    assert len(snippets) == 1, "the README shows one Python snippet"
    run = subprocess.run([sys.executable, "-c", snippets[0]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the snippet writes a grid PNG"
