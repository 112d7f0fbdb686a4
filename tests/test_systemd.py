"""The systemd integration files in systemd/: every unit passes `systemd-analyze verify` without
a single line of output, the two system units keep their sandbox (exposure <= 2.5 by
`systemd-analyze security --offline=true`), the units agree with the daemon's contract
(Type=notify, watchdog, drain), and the sysusers.d/tmpfiles.d snippets parse (and, as root,
create what they promise in a scratch root).

Units name /usr/local/bin/hyperion, which verify insists exists: each test checks a copy in a
temporary folder with that path replaced by this environment's hyperion."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SYSTEM_UNITS = ("hyperion.service", "hyperion@.service")
USER_UNIT = "user/hyperion.service"
ALL_UNITS = (*SYSTEM_UNITS, USER_UNIT)
INSTALLED_PATH = "/usr/local/bin/hyperion"
MAX_EXPOSURE = 2.5
SYSUSERS = SYSTEMD / "hyperion.sysusers.conf"
TMPFILES = SYSTEMD / "hyperion.tmpfiles.conf"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


# ---------------------------------------------------------------- helpers

def hyperion_executable() -> str:
    """An existing executable to stand in for /usr/local/bin/hyperion."""
    beside_python = Path(sys.executable).parent / "hyperion"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("hyperion") or sys.executable


def staged(unit: str, folder: Path) -> Path:
    """A copy of ``unit`` in ``folder`` whose ExecStart/ExecReload name an existing program."""
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED_PATH in text, f"{unit} no longer names {INSTALLED_PATH}"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / Path(unit).name
    copy.write_text(text.replace(INSTALLED_PATH, hyperion_executable()))
    return copy


def instance_path(copy: Path) -> Path:
    """verify and security check a template through an instance; the template's folder
    supplies it."""
    return copy.with_name(copy.name.replace("@.", "@demo.")) if "@." in copy.name else copy


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    base = {**os.environ, "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, check=False)


def directives(unit: str) -> dict[str, list[str]]:
    """Section.Key -> values in order (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in (SYSTEMD / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit}: not a Key=Value line: {raw!r}"
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    values = directives(unit).get(key)
    assert values, f"{unit}: no {key}"
    return values[-1]


def seconds(span: str) -> float:
    """A systemd time span such as "15min", "2min 30s", "90"."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600,
             "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


def default_drain_timeout_s() -> float:
    from hyperion.config import Config

    field = Config.model_fields.get("drain_timeout_s")
    return float(field.default) if field is not None else 600.0


# ---------------------------------------------------------------- systemd-analyze verify

@needs_analyze
@pytest.mark.parametrize("unit", SYSTEM_UNITS)
def test_system_unit_verifies_without_any_output(unit: str, tmp_path: Path) -> None:
    # verify exits 0 on warnings ("Unknown key", "not executable"), so any output fails.
    copy = instance_path(staged(unit, tmp_path))
    result = analyze("verify", "--man=no", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_user_unit_verifies_without_any_output(tmp_path: Path) -> None:
    copy = staged(USER_UNIT, tmp_path / "units")
    result = analyze("verify", "--man=no", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # As a user manager would load it (%h, default.target); that needs a runtime dir only.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = analyze("verify", "--user", "--man=no", str(copy),
                     env={"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_verify_would_notice_a_broken_unit(tmp_path: Path) -> None:
    """The check above is worth something: a typo and a missing program both produce output."""
    copy = staged("hyperion.service", tmp_path)
    copy.write_text(copy.read_text().replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed")
                    .replace(hyperion_executable(), str(tmp_path / "missing")))
    result = analyze("verify", "--man=no", str(copy))
    output = result.stdout + result.stderr
    assert "KilMode" in output
    assert "missing" in output


# ---------------------------------------------------------------- systemd-analyze security

@needs_analyze
@pytest.mark.parametrize("unit", SYSTEM_UNITS)
def test_system_unit_exposure_is_at_most_2_5(unit: str, tmp_path: Path) -> None:
    copy = instance_path(staged(unit, tmp_path))
    result = analyze("security", "--offline=true", "--no-pager", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(2))
    assert exposure <= MAX_EXPOSURE, (
        f"{unit}: exposure {exposure} > {MAX_EXPOSURE}\n{result.stdout}")


# ---------------------------------------------------------------- the units' contract

@pytest.mark.parametrize("unit", ALL_UNITS)
def test_units_follow_the_daemon_contract(unit: str) -> None:
    d = directives(unit)
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.NotifyAccess") == "main"
    assert seconds(one(unit, "Service.WatchdogSec")) >= 10
    assert one(unit, "Service.Restart") == "on-failure"
    # The configuration is passed explicitly: a ./hyperion.yaml in the working directory
    # would otherwise win over $HYPERION_CONFIG.
    exec_start = one(unit, "Service.ExecStart").split()
    assert exec_start[:2] == [INSTALLED_PATH, "run"]
    assert exec_start[2:] == ["--config", "${HYPERION_CONFIG}"]
    assert d["Service.ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    # Draining: SIGTERM to the daemon alone (its checks keep running), for longer than the
    # drain timeout.
    assert one(unit, "Service.KillMode") == "mixed"
    assert d.get("Service.KillSignal", ["SIGTERM"])[-1] == "SIGTERM"
    assert seconds(one(unit, "Service.TimeoutStopSec")) > default_drain_timeout_s() + 30
    assert one(unit, "Service.OOMPolicy") == "continue"
    assert one(unit, "Service.NoNewPrivileges") == "yes"
    assert "@system-service" in d["Service.SystemCallFilter"]
    assert set(one(unit, "Service.RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6"}


def test_config_and_state_locations() -> None:
    assert "HYPERION_CONFIG=/etc/hyperion/hyperion.yaml" in directives(
        "hyperion.service")["Service.Environment"]
    assert one("hyperion.service", "Service.StateDirectory") == "hyperion"
    assert "HYPERION_CONFIG=/etc/hyperion/%i.yaml" in directives(
        "hyperion@.service")["Service.Environment"]
    assert one("hyperion@.service", "Service.StateDirectory") == "hyperion/%i"
    assert "HYPERION_CONFIG=%h/.config/hyperion/hyperion.yaml" in directives(
        USER_UNIT)["Service.Environment"]
    assert one(USER_UNIT, "Install.WantedBy") == "default.target"


@pytest.mark.parametrize("unit", SYSTEM_UNITS)
def test_system_units_sandbox(unit: str) -> None:
    d = directives(unit)
    assert one(unit, "Service.User") == "hyperion"
    expected = {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
                "SystemCallArchitectures": "native", "SystemCallErrorNumber": "EPERM"}
    for key, value in expected.items():
        assert one(unit, f"Service.{key}") == value, key
    # The gated repositories come from the admin's drop-in, never from the shipped unit.
    assert "Service.ReadWritePaths" not in d
    assert one(unit, "Install.WantedBy") == "multi-user.target"


def test_template_differs_from_the_service_only_where_it_must() -> None:
    """The two system units keep the same sandbox; only names and paths differ."""
    per_instance = {"Unit.Description", "Service.Environment", "Service.WorkingDirectory",
                    "Service.StateDirectory"}
    single = {k: v for k, v in directives("hyperion.service").items() if k not in per_instance}
    template = {k: v for k, v in directives("hyperion@.service").items()
                if k not in per_instance}
    assert single == template


def test_user_unit_uses_no_option_a_user_manager_cannot_apply() -> None:
    """Mount namespaces, capabilities and user switching need a system manager."""
    system_only = {"User", "Group", "ProtectSystem", "ProtectHome", "PrivateTmp",
                   "PrivateDevices", "PrivateMounts", "PrivateNetwork", "PrivateUsers",
                   "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                   "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
                   "CapabilityBoundingSet", "AmbientCapabilities", "ReadWritePaths",
                   "RemoveIPC", "StateDirectory"}
    used = {key.split(".", 1)[1] for key in directives(USER_UNIT)}
    assert not used & system_only


# ---------------------------------------------------------------- sysusers.d, tmpfiles.d

def tmpfiles_lines() -> list[list[str]]:
    return [line.split() for line in TMPFILES.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_snippets_agree_with_the_units() -> None:
    sysusers = [line.split() for line in SYSUSERS.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert sysusers[0][:3] == ["u", "hyperion", "-"]
    groups = {"hyperion"} | {fields[1] for fields in sysusers if fields[0] == "g"}
    entries = {fields[1]: fields for fields in tmpfiles_lines()}
    state = entries["/var/lib/hyperion"]
    assert state[:5] == ["d", "/var/lib/hyperion", one("hyperion.service",
                         "Service.StateDirectoryMode"), "hyperion", "hyperion"]
    assert one("hyperion@.service", "Service.StateDirectoryMode") == state[2]
    for fields in tmpfiles_lines():
        assert fields[0] == "d"
        assert fields[3] in {"root", "hyperion"} and fields[4] in groups, fields
        assert fields[5:] == ["-"], f"{fields[1]}: an age would let tmpfiles clean it"


def _supports(tool: str, option: str) -> bool:
    out = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=30,
                         check=False)
    return option in out.stdout + out.stderr


def test_sysusers_snippet_parses(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None or not _supports(tool, "--dry-run"):
        pytest.skip("systemd-sysusers with --dry-run is not available")
    # A scratch root: the host's user database is neither read nor written.
    result = subprocess.run([tool, "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
                            capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert SYSUSERS.name not in output, output       # parse errors name file:line
    assert "hyperion" in output                      # "Creating user 'hyperion' ..."


def _scratch_root_with_users(tmp_path: Path) -> Path:
    """A scratch root whose /etc/passwd and /etc/group hold what hyperion.sysusers.conf makes."""
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    made = subprocess.run([sysusers, f"--root={root}", str(SYSUSERS)], capture_output=True,
                          text=True, timeout=30, check=False)
    if made.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"systemd-sysusers --root needs root here: {made.stderr.strip()}")
    assert made.returncode == 0, made.stderr
    return root


def test_tmpfiles_snippet_parses(tmp_path: Path) -> None:
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None or not _supports(tmpfiles, "--dry-run"):
        pytest.skip("systemd-tmpfiles with --dry-run is not available (newer systemd)")
    root = _scratch_root_with_users(tmp_path)
    result = subprocess.run([tmpfiles, "--dry-run", "--create", f"--root={root}",
                             str(TMPFILES)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert TMPFILES.name not in result.stdout + result.stderr


def test_tmpfiles_snippet_creates_what_it_promises(tmp_path: Path) -> None:
    """Without --dry-run (systemd < 256), create for real in a scratch root; chown needs root."""
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating the directories with their owners needs root")
    root = _scratch_root_with_users(tmp_path)
    result = subprocess.run([tmpfiles, "--create", f"--root={root}", str(TMPFILES)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    passwd = [f.split(":") for f in (root / "etc/passwd").read_text().splitlines()]
    group = [f.split(":") for f in (root / "etc/group").read_text().splitlines()]
    uids = {"root": 0} | {f[0]: int(f[2]) for f in passwd}
    gids = {"root": 0} | {f[0]: int(f[2]) for f in group}
    for _, path, mode, user, grp, _age in tmpfiles_lines():
        st = (root / path.lstrip("/")).stat()
        assert stat.S_ISDIR(st.st_mode), path
        assert (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid) == (
            oct(int(mode, 8)), uids[user], gids[grp]), path
    # hyperion reads group-readable request files through its membership of hyperion-submit.
    members = {f[0]: f[3].split(",") for f in group}
    assert "hyperion" in members["hyperion-submit"]
