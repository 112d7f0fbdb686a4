"""The pieces of the task loop on their own: harness argv and env, budgets, failure names."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion.config import ConfigError, HarnessConfig, parse_config
from hyperion.tasks.failure import failure_fingerprint, normalise
from hyperion.tasks.harness import HarnessEnvError, RunFiles, harness_argv, harness_env
from hyperion.tasks.limits import HOUR_S, reserve_start, take_slot


def files(tmp_path: Path, iteration: int = 1) -> RunFiles:
    return RunFiles(task_file=tmp_path / "task.json", instructions_file=tmp_path / "i.md",
                    feedback_file=tmp_path / "feedback.txt", worktree=tmp_path / "wt",
                    iteration=iteration, has_feedback=iteration > 1)


def test_placeholders_are_substituted_per_item_and_never_twice(tmp_path: Path) -> None:
    weird = tmp_path / "{iteration}"
    config = HarnessConfig(run=["agent", "--prompt-file={instructions_file}", "{worktree}",
                                "-n", "{iteration}", "{task_file}", "literal {x"])
    argv = harness_argv(config, RunFiles(
        task_file=weird, instructions_file=tmp_path / "i.md", feedback_file=tmp_path / "f",
        worktree=tmp_path / "wt", iteration=2, has_feedback=True))
    assert argv == ["agent", f"--prompt-file={tmp_path / 'i.md'}", str(tmp_path / "wt"),
                    "-n", "2", str(weird), "literal {x"]


def test_env_has_only_what_the_config_names(tmp_path: Path) -> None:
    config = HarnessConfig(run=["x"], env={"API_KEY": "${DAEMON_KEY}", "MODE": "fast-${M}"})
    daemon = {"DAEMON_KEY": "k-123", "M": "1", "OTHER_SECRET": "s", "PATH": "/bin",
              "GIT_DIR": "/x", "PYTHONPATH": "/y"}
    env = harness_env(config, files(tmp_path), "h", daemon_env=daemon)
    assert env["API_KEY"] == "k-123" and env["MODE"] == "fast-1" and env["PATH"] == "/bin"
    assert "OTHER_SECRET" not in env and "GIT_DIR" not in env and "PYTHONPATH" not in env
    assert "DAEMON_KEY" not in env
    assert "HYPERION_FEEDBACK_FILE" not in env
    later = harness_env(config, files(tmp_path, 2), "h", daemon_env=daemon)
    assert later["HYPERION_FEEDBACK_FILE"] == str(tmp_path / "feedback.txt")
    assert later["HYPERION_ITERATION"] == "2"


def test_a_missing_variable_is_named_without_any_value(tmp_path: Path) -> None:
    config = HarnessConfig(run=["x"], env={"API_KEY": "${NOT_SET_ANYWHERE}"})
    with pytest.raises(HarnessEnvError) as err:
        harness_env(config, files(tmp_path), "h", daemon_env={"SECRET": "v"})
    assert "NOT_SET_ANYWHERE" in str(err.value) and "harnesses.h.env" in str(err.value)


def test_config_refuses_unknown_placeholders_and_reserved_names(tmp_path: Path) -> None:
    source = tmp_path / "hyperion.yaml"
    with pytest.raises(ConfigError) as err:
        parse_config("harnesses:\n  a:\n    run: [agent, '{instruction_file}']\n", source)
    assert "line 3" in str(err.value) and "instruction_file" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("harnesses:\n  a:\n    run: [agent]\n    env: {HYPERION_X: y}\n", source)
    assert "HYPERION_X" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("harnesses:\n  a:\n    run: [agent]\n    sandbox: true\n", source)
    assert "unknown key" in str(err.value)


def test_wip_slots_are_exclusive_across_threads_and_freed_on_release(tmp_path: Path) -> None:
    first = take_slot(tmp_path, "h", 2)
    second = take_slot(tmp_path, "h", 2)
    assert first is not None and second is not None
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(take_slot(tmp_path, "h", 2)))
    thread.start()
    thread.join()
    assert found == [None]
    first.release()
    third = take_slot(tmp_path, "h", 2)
    assert third is not None
    assert take_slot(tmp_path, "other", 1) is not None      # per harness
    second.release()
    third.release()


def test_starts_per_hour(tmp_path: Path) -> None:
    t = 1_000_000.0
    assert reserve_start(tmp_path, "h", 2, now=t) is None
    assert reserve_start(tmp_path, "h", 2, now=t + 10) is None
    wait = reserve_start(tmp_path, "h", 2, now=t + 20)
    assert wait == pytest.approx(HOUR_S - 20)
    assert reserve_start(tmp_path, "h", 2, now=t + HOUR_S + 1) is None
    assert reserve_start(tmp_path, "h", None, now=t) is None


def test_failures_that_differ_only_in_noise_have_one_name() -> None:
    one = ("FAILED test_x.py::test_round - assert 3 == 2 at 0x7f3a9c2b1e40\n"
           "/srv/wt/demo~123~abc/test_x.py:14: AssertionError\n"
           "1 failed in 0.52s at 2026-11-21T07:12:32Z")
    two = ("FAILED test_x.py::test_round - assert 3 == 2 at 0x7f00deadbeef\n"
           "/srv/wt/demo~999~fff/test_x.py:14: AssertionError\n"
           "1 failed in 1.07s at 2026-11-22 08:00:01")
    assert failure_fingerprint("check_failed", one, ["/srv/wt/demo~123~abc"]) == \
        failure_fingerprint("check_failed", two, ["/srv/wt/demo~999~fff"])
    assert failure_fingerprint("check_failed", one) != \
        failure_fingerprint("check_failed", one.replace("test_round", "test_other"))
    assert failure_fingerprint("check_failed", one) != failure_fingerprint("no_changes", one)


@given(st.text(max_size=300), st.integers(min_value=0, max_value=10**9))
def test_normalise_ignores_numbers(text: str, number: int) -> None:
    assert normalise(f"{text} took {number} ms") == normalise(f"{text} took 7 ms")


def test_the_shipped_harness_examples_are_valid_configuration(tmp_path: Path) -> None:
    import yaml

    from hyperion.scaffold import init_dir

    root = Path(__file__).resolve().parent.parent
    examples = (root / "inbox-example" / "harnesses.yaml").read_text()
    config = parse_config(examples, tmp_path / "hyperion.yaml")
    assert {"script", "claude", "codex", "aider"} <= set(config.harnesses)
    # The commented entries `hyperion init` writes parse once uncommented.
    init_dir(tmp_path / "new", repo=None, target="main")
    text = (tmp_path / "new" / "hyperion.yaml").read_text()
    block = text.split("harnesses: {}\n", 1)[1].split("policy:", 1)[0]
    uncommented = "harnesses:\n" + "".join(line[1:] + "\n" for line in block.splitlines())
    parsed = yaml.safe_load(uncommented)
    assert set(parse_config(yaml.safe_dump(parsed), tmp_path / "h.yaml").harnesses) == \
        {"script", "claude", "codex"}


def test_doctor_names_a_missing_harness_program_and_variable(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from hyperion.doctor import diagnose

    monkeypatch.delenv("HYPERION_TEST_UNSET_KEY", raising=False)
    config = parse_config(
        "harnesses:\n"
        "  gone: {run: [no-such-agent-cli-xyz]}\n"
        "  keyless: {run: [python3], env: {K: '${HYPERION_TEST_UNSET_KEY}'}}\n"
        "  fine: {run: [python3]}\n", tmp_path / "hyperion.yaml")
    found = {f.name: f for f in diagnose(config) if f.name.startswith("harness")}
    assert not found["harness gone"].ok and "harnesses.gone.run" in found["harness gone"].message
    assert not found["harness keyless"].ok
    assert "HYPERION_TEST_UNSET_KEY" in found["harness keyless"].message
    assert found["harness fine"].ok


def test_a_worktree_snapshot_diff_carries_every_kind_of_change(tmp_path: Path) -> None:
    import os
    import subprocess

    from conftest import git, make_repo

    from hyperion.gate.patch import Operation, parse_patch
    from hyperion.gitops import GitRepo

    repo_path = make_repo(tmp_path / "r", {"keep.txt": "a\nb\n", "gone.txt": "bye\n",
                                           "old name.txt": "moved content\n" * 20,
                                           "run.sh": "echo hi\n", ".gitignore": "*.log\n"})
    repo = GitRepo(repo_path)
    tip = repo.branch_commit("main")
    assert tip is not None
    wt = tmp_path / "wt"
    repo.worktree_add(wt, tip)
    (wt / "keep.txt").write_text("a\nB\n")
    (wt / "gone.txt").unlink()
    os.rename(wt / "old name.txt", wt / "new näme.txt")
    os.chmod(wt / "run.sh", 0o755)
    (wt / "blob.bin").write_bytes(bytes(range(256)) * 4)
    os.symlink("keep.txt", wt / "link")
    (wt / "sub").mkdir()
    (wt / "sub" / "new.py").write_text("X = 1\n")
    (wt / "debug.log").write_text("ignored\n")
    commit = repo.snapshot(wt, tip, "t\n", ("h", "h@x.invalid"))
    patch = repo.diff_text(tip, commit)
    ops = {(f.path, f.operation, f.old_path) for f in parse_patch(patch)}
    assert ops == {
        ("keep.txt", Operation.UPDATE, None), ("gone.txt", Operation.DELETE, None),
        ("new näme.txt", Operation.RENAME, "old name.txt"), ("run.sh", Operation.UPDATE, None),
        ("blob.bin", Operation.ADD, None), ("link", Operation.ADD, None),
        ("sub/new.py", Operation.ADD, None)}
    # Applied to the tip elsewhere, the diff makes exactly the snapshot's tree.
    other = tmp_path / "other"
    repo.worktree_add(other, tip)
    subprocess.run(["git", "apply", "--index", "-"], cwd=other, input=patch.encode(),
                   check=True)
    tree = git(other, "write-tree").strip()
    assert tree == git(repo_path, "rev-parse", f"{commit}^{{tree}}").strip()
    # A change carried onto a moved tip keeps what it did; the checks' leftovers go away.
    (repo_path / "unrelated.txt").write_text("meanwhile\n")
    git(repo_path, "add", "unrelated.txt")
    git(repo_path, "commit", "-qm", "meanwhile")
    new_tip = repo.branch_commit("main")
    assert new_tip is not None
    third = tmp_path / "third"
    repo.worktree_add(third, new_tip)
    assert repo.carry(third, tip, commit)
    assert (third / "new näme.txt").exists() and (third / "unrelated.txt").exists()
    (third / "junk.tmp").write_text("left by a check\n")
    assert repo.worktree_reset(third, new_tip) is None
    assert not (third / "junk.tmp").exists() and not (third / "new näme.txt").exists()
