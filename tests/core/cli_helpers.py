"""Run the sdglass CLI in-process and read its one-line errors (shared by the CLI tests)."""

from core import cli


def run(capsys, *argv):
    """Exit code, stdout and stderr of `sdglass ARGV...`."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The single `sdglass: error:` line of stderr."""
    lines = [line for line in err.splitlines() if line.startswith("sdglass: error:")]
    assert len(lines) == 1, err
    return lines[0]
