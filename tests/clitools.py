"""Running the `leukodx` command in-process in tests: (exit code, output or the one-line error message)."""

from __future__ import annotations


def run_cli(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from leukodx.cli import app
    from leukodx.errors import LeukodxError

    try:
        r = CliRunner().invoke(app, args, catch_exceptions=True)
    except LeukodxError as exc:  # pragma: no cover - typer re-raises in some versions
        return 2, exc.message
    if isinstance(r.exception, LeukodxError):
        return 2, r.exception.message
    return r.exit_code, r.output
