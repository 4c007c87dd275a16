"""The systemd units in deploy/ are valid, and run the pdsync commands the README shows."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service")) + sorted(DEPLOY.glob("*.timer"))
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_unit_is_in_the_readme():
    assert UNITS
    for unit in UNITS:
        assert f"deploy/{unit.name}" in README


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # The units name /srv/pdsync/.venv/bin/pdsync; verify checks that it is executable, so
    # point them at this venv's pdsync.
    venv_bin = Path(sys.executable).parent
    for unit in UNITS:
        text = unit.read_text().replace("/srv/pdsync/.venv/bin/", f"{venv_bin}/")
        (tmp_path / unit.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_units_run_commands_that_exist():
    from click.testing import CliRunner

    from pdsync.cli import cli

    for unit in UNITS:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart=") and "/bin/pdsync " in line:
                args = line.split("/bin/pdsync ", 1)[1].split()
                # --help after the real arguments: click checks every option name first.
                result = CliRunner().invoke(cli, [args[0], *args[2:], "--help"])
                assert result.exit_code == 0, (unit.name, result.output)


LITESTREAM = Path(sys.executable).parent / "litestream"


@pytest.mark.skipif(not LITESTREAM.exists(), reason="no litestream: pip install -e '.[replica]'")
def test_the_litestream_config_is_one_litestream_reads(tmp_path):
    config = (DEPLOY / "litestream.yml").read_text()
    assert "deploy/litestream.yml" in README and "/srv/pdsync/pipedrive.db" in config
    out = subprocess.run(
        [str(LITESTREAM), "databases", "-config", str(DEPLOY / "litestream.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "/srv/pdsync/pipedrive.db" in out.stdout and "s3" in out.stdout
