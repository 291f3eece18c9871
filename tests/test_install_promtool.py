"""ops/install-promtool.sh, run for real, without root.

Each test copies the script into a throwaway project directory and runs it as
an unprivileged user: as `nobody` (via setpriv or runuser) when the tests run
as root, else as the current user. The installs fetch Debian's `prometheus`
.deb over the network (about 19 MB) and check the unpacked promtool runs.
PROMTOOL_FORCE=1 makes them independent of any promtool already on PATH.
The failure paths use an empty apt package-lists directory (APT_CONFIG) and a
PATH without apt, so they need no network and change nothing on the machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "ops" / "install-promtool.sh"
TIMEOUT = 300  # seconds: a 19 MB download from Debian's mirror, with room to spare


def _drop_privileges() -> list[str]:
    """The command prefix that runs a command as an unprivileged user."""
    if os.geteuid() != 0:
        return []  # already unprivileged: run as ourselves
    # Absolute paths: the tests run the script with PATHs that lack these.
    if setpriv := shutil.which("setpriv"):
        return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "nobody", "--"]
    pytest.fail("running as root, but neither setpriv nor runuser can drop to `nobody`")


@dataclass
class Sandbox:
    """A throwaway project (with the script in ops/) and home, owned by the runner."""

    root: Path
    project: Path
    home: Path
    prefix: list[str]

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.home),
            "LANG": "C",
            **env,
        }
        script = self.project / "ops" / "install-promtool.sh"
        # `env -i` after the switch: runuser would otherwise reset HOME.
        settings = [f"{key}={value}" for key, value in full_env.items()]
        return subprocess.run(
            [*self.prefix, "/usr/bin/env", "-i", *settings, "/bin/sh", str(script)],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def uid(self) -> int:
        result = subprocess.run(
            [*self.prefix, "id", "-u"], capture_output=True, text=True, timeout=30, check=True
        )
        return int(result.stdout)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Not tmp_path: pytest makes it 0700 for root, so `nobody` could not enter it.
    root = Path(tempfile.mkdtemp(prefix="install-promtool-", dir="/tmp"))
    try:
        project = root / "project"
        (project / "ops").mkdir(parents=True)
        shutil.copy(SCRIPT, project / "ops" / "install-promtool.sh")
        (root / "home").mkdir()
        prefix = _drop_privileges()
        if prefix:
            nobody = pwd.getpwnam("nobody")
            for path in [root, *root.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        yield Sandbox(root=root, project=project, home=root / "home", prefix=prefix)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _assert_promtool_runs(path: Path) -> None:
    assert path.is_file(), f"{path} was not installed"
    assert os.access(path, os.X_OK), f"{path} is not executable"
    result = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promtool, version" in result.stdout + result.stderr


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_unprivileged_install_goes_into_the_project_venv_and_is_idempotent(
    sandbox: Sandbox,
) -> None:
    if os.geteuid() == 0:
        assert sandbox.uid() != 0, "the script must run unprivileged here"
    venv_bin = sandbox.project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    if sandbox.prefix:
        nobody = pwd.getpwnam("nobody")
        for path in (venv_bin.parent, venv_bin):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)

    first = sandbox.run(PROMTOOL_FORCE="1")
    assert first.returncode == 0, _output(first)
    _assert_promtool_runs(venv_bin / "promtool")
    assert "promtool, version" in first.stdout  # the script's own check
    assert not (sandbox.home / ".local").exists()  # only the venv was written to
    assert sorted(p.name for p in venv_bin.iterdir()) == ["promtool"]  # no temp file left

    again = sandbox.run(PROMTOOL_FORCE="1")
    assert again.returncode == 0, _output(again)
    assert f"promtool already installed: {venv_bin / 'promtool'}" in again.stdout


def test_unprivileged_install_without_a_venv_goes_into_home_local_bin(sandbox: Sandbox) -> None:
    result = sandbox.run(PROMTOOL_FORCE="1")
    assert result.returncode == 0, _output(result)
    _assert_promtool_runs(sandbox.home / ".local" / "bin" / "promtool")


def test_promtool_on_path_means_nothing_to_do(sandbox: Sandbox) -> None:
    fake_bin = sandbox.root / "fake-bin"
    fake_bin.mkdir()
    fake = fake_bin / "promtool"
    fake.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake.chmod(0o755)
    result = sandbox.run(PATH=f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin")
    assert result.returncode == 0, _output(result)
    assert f"promtool already installed: {fake}" in result.stdout
    assert not (sandbox.home / ".local").exists()


def test_no_package_lists_without_root_fails_with_directions(sandbox: Sandbox) -> None:
    lists = sandbox.root / "empty-lists"
    lists.mkdir()
    (lists / "partial").mkdir()
    apt_conf = sandbox.root / "apt.conf"
    apt_conf.write_text(f'Dir::State::Lists "{lists}/";\n', encoding="utf-8")
    target = sandbox.root / "target"
    result = sandbox.run(APT_CONFIG=str(apt_conf), PROMTOOL_PREFIX=str(target), PROMTOOL_FORCE="1")
    assert result.returncode != 0, _output(result)
    assert "package lists" in result.stderr
    assert "needs root" in result.stderr
    _assert_directions(result.stderr, target)
    assert not target.exists()


def test_no_apt_fails_with_directions(sandbox: Sandbox) -> None:
    # A PATH holding only `id`: no apt-get, apt-cache or dpkg-deb.
    only_id = sandbox.root / "only-id"
    only_id.mkdir()
    id_path = shutil.which("id")
    assert id_path is not None
    (only_id / "id").symlink_to(id_path)
    target = sandbox.root / "target"
    result = sandbox.run(PATH=str(only_id), PROMTOOL_PREFIX=str(target))
    assert result.returncode != 0, _output(result)
    assert "`apt-get` is not available" in result.stderr
    _assert_directions(result.stderr, target)
    assert not target.exists()


def _assert_directions(stderr: str, target: Path) -> None:
    assert "promtool was not installed" in stderr
    assert "as root" in stderr
    assert "PROMTOOL_PREFIX" in stderr
    assert str(target) in stderr
    assert "https://github.com/prometheus/prometheus/releases" in stderr
