"""Usage meta-tests: help for every command, man pages complete and fresh, light start-up, layers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer

from neimsctl.cli import main as cli_main

cli_main.load_commands()
COMMANDS = dict(typer.main.get_command(cli_main.app).commands)  # type: ignore[attr-defined]
HEAVY = ("torch", "torch_geometric", "rdkit", "h5py", "matplotlib")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.cli
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_0_on_stdout(neimsctl_exe, name):
    proc = run(neimsctl_exe, name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"neimsctl {name}" in proc.stdout and proc.stderr == ""
    assert run(neimsctl_exe, "help", name).stdout == proc.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_man_page_mentions_every_option(repo_root, name):
    page = repo_root / "man" / f"neimsctl-{name}.1"
    assert page.is_file(), f"missing {page}: run python tools/build_man.py"
    text = page.read_text().replace("\\-", "-")
    for param in COMMANDS[name].params:
        if param.param_type_name == "option":
            for opt in param.opts:
                assert opt in text, f"{page.name} does not mention {opt}"
    assert "EXIT STATUS" in text and "EXAMPLES" in text


def test_man_pages_show_choice_defaults_as_typed_and_name_no_page_after_itself(repo_root):
    # '--format' read "Default: OutFmt.msp." (the enum, not what one types), and
    # neimsctl-shards(1)'s NAME line ended "See neimsctl-shards(1)"
    for page in sorted((repo_root / "man").glob("*.1")):
        text = page.read_text().replace("\\-", "-")
        assert not re.search(r"Default: [A-Z][A-Za-z]*\.[a-z]", text), page.name
        name = text.split(".SH NAME\n", 1)[1].split("\n", 1)[0]
        assert "See neimsctl" not in name, page.name
    predict = (repo_root / "man" / "neimsctl-predict.1").read_text()
    assert "Output format. Default: msp." in predict


def test_man_pages_are_fresh(repo_root):
    proc = run(sys.executable, str(repo_root / "tools" / "build_man.py"), "--check")
    assert proc.returncode == 0, proc.stderr
    umbrella = (repo_root / "man" / "neimsctl.1").read_text()
    for name in COMMANDS:
        assert f"neimsctl\\-{name}" in umbrella


@pytest.mark.parametrize("name", ["pretrain", "finetune", "distill"])
def test_man_exit_status_of_an_interrupted_training_matches_the_code(repo_root, name):
    """A training run stopped by SIGTERM exits 143, by Ctrl-C 130 (``finish_run``: 128 + the
    signal), as --help says: its page's EXIT STATUS must not say 130 for both."""
    page = (repo_root / "man" / f"neimsctl-{name}.1").read_text().replace("\\-", "-")
    status = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    training = status.split("the training commands", 1)[1]
    assert "130 after either" not in training
    assert "130 after Ctrl-C" in training and "143 after SIGTERM" in training
    assert "143 (SIGTERM)" in COMMANDS[name].help


@pytest.mark.parametrize("args", [["--help"], *[[n, "--help"] for n in sorted(COMMANDS)]])
def test_help_does_not_import_heavy_libraries(args):
    code = ("import sys, atexit\n"
            f"atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules),"
            " file=sys.stderr))\n"
            "from neimsctl.cli.main import main\nmain(sys.argv[1:])\n")
    proc = run(sys.executable, "-c", code, *args)
    assert proc.returncode == 0
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_a_command_registers_only_itself():
    """``neimsctl search ...`` builds only the search command (typer builds every registered
    command's parameters at start-up; all thirteen cost ~70 ms per command of a pipeline);
    ``neimsctl --help`` still lists them all."""
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('CLI=' + ','.join(sorted(m for m in sys.modules if "
            "m.startswith('neimsctl.cli.') and m.split('.')[-1] in "
            "__import__('neimsctl.cli.main').cli.main.COMMAND_MODULES)), file=sys.stderr))\n"
            "from neimsctl.cli.main import main\nmain(sys.argv[1:])\n")
    proc = run(sys.executable, "-c", code, "search", "--help")
    assert proc.returncode == 0 and "CLI=neimsctl.cli.search\n" in proc.stderr, proc.stderr
    proc = run(sys.executable, "-c", code, "--help")
    assert proc.returncode == 0 and all(f"neimsctl.cli.{n}" in proc.stderr for n in COMMANDS)
    assert all(n in proc.stdout for n in COMMANDS)


def test_no_args_prints_usage(neimsctl_exe):
    proc = run(neimsctl_exe)
    assert proc.returncode in (0, 2)
    assert "Usage" in proc.stdout + proc.stderr


def test_unknown_command_is_usage_error(neimsctl_exe):
    assert run(neimsctl_exe, "no-such-command").returncode == 2


@pytest.mark.parametrize("cmd, args", [
    ("pretrain", ["x.smi", "-o", "run"]),
    ("finetune", ["x.h5", "-o", "run"]),
    ("distill", ["x.h5", "--no-kd", "-o", "run"]),
])
def test_a_missing_config_is_a_usage_error(neimsctl_exe, tmp_path, cmd, args):
    """``--config`` naming nothing, or a directory: exit 2 and one line naming it, no run
    directory (finetune and distill said exit 1 after 'cannot read')."""
    for config, why in (("none.yaml", "no such file"), (".", "is a directory")):
        proc = run(neimsctl_exe, cmd, *args, "-c", config, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"neimsctl {cmd}: --config {config}: {why}"
        assert not (tmp_path / "run").exists()


def test_layers(repo_root):
    proc = run(sys.executable, str(repo_root / "tools" / "check_layers.py"))
    assert proc.returncode == 0, proc.stderr


def test_version_and_shell_completion(neimsctl_exe):
    from neimsctl import __version__

    for flag in ("--version", "-V"):
        res = subprocess.run([neimsctl_exe, flag], capture_output=True, text=True, check=False)
        assert res.returncode == 0 and res.stdout == f"neimsctl {__version__}\n"
    env = {**__import__("os").environ, "_NEIMSCTL_COMPLETE": "complete_bash",
           "COMP_WORDS": "neimsctl pred", "COMP_CWORD": "1"}
    res = subprocess.run([neimsctl_exe], capture_output=True, text=True, env=env, check=False)
    assert res.stdout.split() == ["predict"]
    env.update(COMP_WORDS="neimsctl predict --out-of", COMP_CWORD="2")
    res = subprocess.run([neimsctl_exe], capture_output=True, text=True, env=env, check=False)
    assert res.stdout.split() == ["--out-of-domain"]
    res = subprocess.run([neimsctl_exe, "--show-completion", "bash"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0 and "_NEIMSCTL_COMPLETE" in res.stdout


FLOATS = [(name, param.opts[0]) for name, cmd in sorted(COMMANDS.items()) for param in cmd.params
          if param.param_type_name == "option" and getattr(param.type, "name", "") in ("float", "float range")]


def test_number_options_refuse_nan_and_inf():
    """Every float option of every command is a usage error (exit 2) for nan/inf: `search
    --mass-filter nan` ran and found nothing, `--mz-power 1e308` overflowed (hostile pass)."""
    from typer.testing import CliRunner

    assert ("search", "--mass-filter") in FLOATS and ("msp2jsonl", "--min-mw") in FLOATS
    for name, opt in FLOATS:
        for bad in ("nan", "inf", "-inf"):
            res = CliRunner().invoke(cli_main.app, [name, opt, bad, "x"])
            assert res.exit_code == 2, (name, opt, bad, res.output)
            assert opt in res.output and ("finite" in res.output or "range" in res.output), res.output


@pytest.mark.parametrize("cmd, args", [
    ("pretrain", ["adir", "-c", "{repo}/configs/pretrain/teacher-cpu-small.yaml", "-o", "run"]),
    ("finetune", ["adir", "-c", "{repo}/configs/finetune/teacher-cpu-small.yaml", "-o", "run"]),
    ("distill", ["adir", "--no-kd", "-o", "run"]),
])
def test_training_inputs_that_are_directories_are_named_so(neimsctl_exe, tmp_path, repo_root, cmd, args):
    """A directory given as the training input: 'is a directory', exit 2 (the training commands
    said 'no such file'), no run directory."""
    (tmp_path / "adir").mkdir()
    proc = run(neimsctl_exe, cmd, *[a.format(repo=repo_root) for a in args], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"neimsctl {cmd}: adir: is a directory", proc.stderr
    assert not (tmp_path / "run").exists()


def test_shards_split_refuses_stdin(neimsctl_exe):
    """HDF5 shards cannot come from stdin: a usage error (exit 1 'cannot open as HDF5' before)."""
    proc = run(neimsctl_exe, "shards", "split", "-", input="")
    assert proc.returncode == 2 and "HDF5 shards are read from files, not stdin" in proc.stderr
