"""Result notes written in batches: one notes commit per repository and results ref per pass,
lines never written twice, notes findable by `git notes` at any fan-out, nothing lost to a
concurrent writer or to a repository that cannot be written. Real git repositories only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BASE_FILES, count_git_runs, git, make_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion import gitops
from hyperion import result_notes as rn
from hyperion.config import Config
from hyperion.gitinproc import InProcessGit
from hyperion.gitops import GitRepo
from hyperion.records import Record, Source, State
from hyperion.result_notes import ResultNotes

REF = "refs/notes/hyperion"


def _config(tmp_path: Path, repos: dict[str, Path]) -> Config:
    return Config.model_validate({
        "state_dir": str(tmp_path / "state"),
        "repos": {name: {"path": str(path)} for name, path in repos.items()},
    })


def _commits(repo: Path, count: int, tag: str = "c") -> list[str]:
    """``count`` new commits on a side branch, made by one `git fast-import`."""
    stream = "".join(
        f"commit refs/heads/side-{tag}\nmark :{i + 1}\n"
        f"committer T <t@example.invalid> {1_600_000_000 + i} +0000\n"
        f"data {len(f'{tag}{i}')}\n{tag}{i}\n\n" for i in range(count))
    marks_file = repo.parent / f"marks-{tag}"
    subprocess.run(["git", "fast-import", "--quiet", f"--export-marks={marks_file}"],
                   cwd=repo, input=stream, capture_output=True, text=True, check=True)
    marks = dict(line.split() for line in marks_file.read_text().splitlines())
    return [marks[f":{i + 1}"] for i in range(count)]


def _record(id: str, repo: str, landed: str, state: State = State.LANDED) -> Record:
    return Record(id=id, kind="change", state=state, repo=repo, landed_commit=landed,
                  source=Source(kind="inbox", name=f"{id}.json"), original_sha256="0" * 64,
                  created_at="2026-01-01T00:00:00Z", updated_at="2026-01-01T00:00:01Z")


def _show(repo: Path, commit: str, ref: str = REF) -> list[str]:
    out = subprocess.run(["git", "notes", f"--ref={ref}", "show", commit], cwd=repo,
                         capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else []


def _notes_commits(repo: Path, ref: str = REF) -> int:
    out = git(repo, "rev-list", "--count", ref, check=False).strip()
    return int(out) if out else 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "demo", BASE_FILES)


def _ask_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every question the in-process reader could answer goes to git instead."""
    monkeypatch.setattr(InProcessGit, "ref_target", lambda self, ref: (False, None))
    for name in ("folders", "blobs", "write_blob", "write_tree", "write_commit"):
        monkeypatch.setattr(InProcessGit, name, lambda self, *args: None)


@pytest.fixture(autouse=True, params=["in-process", "git"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: notes read and written in-process (dulwich), and by git processes
    (what happens where dulwich cannot answer exactly as git would)."""
    if request.param == "git":
        _ask_git(monkeypatch)
    return str(request.param)


def test_thirty_outcomes_make_one_notes_commit_that_git_notes_shows(tmp_path: Path,
                                                                     repo: Path) -> None:
    commits = _commits(repo, 30)
    notes = ResultNotes(_config(tmp_path, {"demo": repo}))
    records = [_record(f"r{i}", "demo", commit) for i, commit in enumerate(commits)]
    assert all(notes.queue(record) for record in records)
    assert notes.deliver_ready("test") == 30
    assert _notes_commits(repo) == 1
    for record, commit in zip(records, commits, strict=True):
        [line] = _show(repo, commit)
        assert json.loads(line)["id"] == record.id and json.loads(line)["landed"] == commit
    assert notes.outbox.counts()["done"] == 30
    # Delivered again (as the catch-up at start-up does): nothing new, no new commit.
    before = git(repo, "rev-parse", REF)
    redo = ResultNotes(_config(tmp_path / "again", {"demo": repo}))
    for record in records:
        redo.queue(record)
    assert redo.deliver_ready("test") == 30
    assert git(repo, "rev-parse", REF) == before
    assert all(len(_show(repo, commit)) == 1 for commit in commits)


def test_the_git_processes_of_a_pass_do_not_grow_with_its_notes(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    runs = count_git_runs(monkeypatch)
    GitRepo(repo).add_notes(REF, {c: ["earlier"] for c in _commits(repo, 20, "e")}, "t")
    used = []
    for n, tag in ((3, "a"), (120, "b")):
        commits = _commits(repo, n, tag)
        notes = ResultNotes(_config(tmp_path / tag, {"demo": repo}))
        for i, commit in enumerate(commits):
            notes.queue(_record(f"{tag}{i}", "demo", commit))
        runs.clear()
        assert notes.deliver_ready("test") == n
        used.append(len(runs))
    if writer == "git":
        # ref_value, two cat-file, hash-object, mktree per depth, commit-tree, update-ref
        assert max(used) <= 11 and used[1] <= used[0] + 1, used
    else:   # git only opens the repository (the first pass); the ref swap is in-process
        assert used == [1, 0], runs
    # The repository is opened once per process (GitRepo.at), not per pass or per note: the
    # first pass opened it, so this second one opens nothing.
    assert sum(1 for args in runs if "rev-parse" in args and "--absolute-git-dir" in args) == 0


def test_notes_go_where_git_looks_in_a_tree_git_fanned_out(tmp_path: Path, repo: Path) -> None:
    old = _commits(repo, 300, "old")
    for i, commit in enumerate(old):
        git(repo, "notes", f"--ref={REF}", "add", "-m", f"old {i}", commit)
    top = git(repo, "ls-tree", REF).splitlines()
    assert top and all(line.startswith("040000 tree ") for line in top)   # fan-out depth 1
    new = _commits(repo, 40, "new")
    notes = ResultNotes(_config(tmp_path, {"demo": repo}))
    for i, commit in enumerate(new):
        notes.queue(_record(f"n{i}", "demo", commit))
    for i, commit in enumerate(old[:5]):      # a second line on notes git wrote
        notes.queue(_record(f"o{i}", "demo", commit))
    assert notes.deliver_ready("test") == 45
    for i, commit in enumerate(new):
        assert [json.loads(line)["id"] for line in _show(repo, commit)] == [f"n{i}"]
    for i, commit in enumerate(old):
        shown = _show(repo, commit)
        assert shown[0] == f"old {i}"
        assert [json.loads(line)["id"] for line in shown[1:]] == ([f"o{i}"] if i < 5 else [])
    paths = git(repo, "ls-tree", "-r", "--name-only", REF).split()
    assert len(paths) == 340 and all(len(p.split("/")) == 2 for p in paths)
    assert git(repo, "fsck", "--no-dangling").strip() == ""
    # git itself still reads and writes the tree: add, then show, one of ours.
    git(repo, "notes", f"--ref={REF}", "append", "-m", "by hand", new[0])
    assert _show(repo, new[0])[-1] == "by hand" and len(_show(repo, new[1])) == 1


def test_a_new_notes_ref_fans_out_when_git_would(tmp_path: Path, repo: Path) -> None:
    commits = _commits(repo, 200)
    assert GitRepo(repo).add_notes(REF, {c: [f"line {c}"] for c in commits}, "t") == 200
    top = git(repo, "ls-tree", REF).splitlines()
    assert all(line.startswith("040000 tree ") for line in top)
    assert all(_show(repo, c) == [f"line {c}"] for c in commits)
    # The same 200 with `git notes` in another ref: git chose the same fan-out.
    for c in commits:
        git(repo, "notes", "--ref=refs/notes/by-git", "add", "-m", f"line {c}", c)
    assert git(repo, "rev-parse", f"{REF}^{{tree}}") == \
        git(repo, "rev-parse", "refs/notes/by-git^{tree}")


def test_a_note_keeps_its_place_and_lines_in_a_flat_tree(tmp_path: Path, repo: Path) -> None:
    commits = _commits(repo, 3)
    for commit in commits:
        git(repo, "notes", f"--ref={REF}", "add", "-m", "first\n\nsecond", commit)
    gr = GitRepo(repo)
    assert gr.add_notes(REF, {commits[0]: ["second", "third"], commits[1]: ["first"]},
                        "t") == 1
    assert _show(repo, commits[0]) == ["first", "second", "third"]
    assert _show(repo, commits[1]) == ["first", "", "second"]     # untouched
    assert sorted(git(repo, "ls-tree", "-r", "--name-only", REF).split()) == sorted(commits)
    with pytest.raises(gitops.GitError):
        gr.add_notes(REF, {"../../etc/passwd": ["x"]}, "t")


def test_a_concurrent_writer_between_read_and_swap_loses_nothing(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = _commits(repo, 2)
    git(repo, "notes", f"--ref={REF}", "add", "-m", "before", ours)
    real_set_ref = GitRepo.set_ref
    calls: list[str] = []

    def racing_set_ref(self: GitRepo, ref: str, new: str, old: str | None,
                       reason: str) -> bool:
        if not calls:   # another writer lands first, with both a new note and a changed one
            git(repo, "notes", f"--ref={REF}", "add", "-m", "theirs", theirs)
            git(repo, "notes", f"--ref={REF}", "append", "-m", "also theirs", ours)
        calls.append(ref)
        return real_set_ref(self, ref, new, old, reason)

    monkeypatch.setattr(GitRepo, "set_ref", racing_set_ref)
    notes = ResultNotes(_config(tmp_path, {"demo": repo}))
    notes.queue(_record("mine", "demo", ours))
    assert notes.deliver_ready("test") == 1
    assert len(calls) == 2                    # lost the first swap, won the second
    assert _show(repo, theirs) == ["theirs"]
    shown = _show(repo, ours)
    assert shown[:2] == ["before", "also theirs"]      # a rewritten note drops blank lines
    assert [json.loads(line)["id"] for line in shown[2:]] == ["mine"]


def test_a_repository_that_cannot_be_written_is_retried_not_lost(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rn, "RETRY_MIN_S", 0.0)
    other = make_repo(tmp_path / "other", BASE_FILES)
    mine, elsewhere = _commits(repo, 5), _commits(other, 1)
    config = _config(tmp_path, {"demo": repo, "other": other})
    notes = ResultNotes(config)
    for i, commit in enumerate(mine):
        notes.queue(_record(f"r{i}", "demo", commit))
    notes.queue(_record("o1", "other", elsewhere[0]))
    moved = tmp_path / "demo-moved"
    repo.rename(moved)
    assert notes.deliver_ready("test") == 1            # the other repository's note only
    assert len(_show(other, elsewhere[0])) == 1
    counts = notes.outbox.counts()
    assert counts["queued"] == 5 and counts["done"] == 1 and counts["dead"] == 0
    moved.rename(repo)
    assert notes.deliver_ready("test") == 5
    assert all(len(_show(repo, commit)) == 1 for commit in mine)
    assert notes.outbox.counts()["done"] == 6


def test_an_expired_item_is_buried_and_an_unconfigured_one_acked(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [commit] = _commits(repo, 1)
    other = make_repo(tmp_path / "other", BASE_FILES)
    notes = ResultNotes(_config(tmp_path, {"demo": repo}))
    notes.queue(_record("gone", "demo", commit))
    shutil.rmtree(repo)
    monkeypatch.setattr(rn.time, "time", lambda: 10.0 ** 10)   # long past notify.expire_h
    assert notes.deliver_ready("test") == 0
    assert notes.outbox.counts()["dead"] == 1
    # Items for a repository no longer configured (or with results_ref: null) are done.
    later = ResultNotes(_config(tmp_path / "later", {}))
    later.outbox.put("x.1.landed", rn.PendingNote(
        request_id="x", line="{}", targets=[rn.NoteTarget(repo="demo", commit=commit)],
        created_at=1.0).model_dump_json().encode())
    later.outbox.put("bad.1.landed", b"not json")
    assert later.deliver_ready("test") == 1
    assert later.outbox.counts()["done"] == 1 and later.outbox.counts()["dead"] == 1
    # A target that is no commit id is buried alone; the rest of its batch is written.
    again = ResultNotes(_config(tmp_path / "again", {"demo": other}))
    [good] = _commits(other, 1)
    for key, target in (("y.1.landed", "../../HEAD"), ("z.1.landed", good)):
        again.outbox.put(key, rn.PendingNote(
            request_id=key[0], line=f'{{"id":"{key[0]}"}}',
            targets=[rn.NoteTarget(repo="demo", commit=target)],
            created_at=1.0).model_dump_json().encode())
    assert again.deliver_ready("test") == 1
    assert _show(other, good) == ['{"id":"z"}'] and again.outbox.counts()["dead"] == 1


_IDS = st.builds(lambda prefix, rest: prefix + rest,
                 st.sampled_from(["ab", "abcd", "", "0f"]),
                 st.text("0123456789abcdef", min_size=40, max_size=40)).map(lambda s: s[:40])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.dictionaries(_IDS, st.lists(st.sampled_from("pqrs"), max_size=3),
                                       max_size=120), min_size=1, max_size=4))
def test_any_sequence_of_batches_keeps_every_line_once(
        tmp_path_factory: pytest.TempPathFactory, rounds: list[dict[str, list[str]]]) -> None:
    repo = tmp_path_factory.mktemp("prop")
    git(repo, "init", "-q", "--bare")
    gr, model = GitRepo(repo), {}
    for batch in rounds:
        before = {c: list(lines) for c, lines in model.items()}
        for commit, lines in batch.items():
            model.setdefault(commit, [])
            model[commit] += [line for line in dict.fromkeys(lines) if line not in model[commit]]
        model = {c: lines for c, lines in model.items() if lines}
        changed = sum(1 for c, lines in model.items() if before.get(c) != lines)
        assert gr.add_notes(REF, batch, "t") == changed
    if not model:
        assert git(repo, "rev-parse", "-q", "--verify", REF, check=False) == ""
        return
    # git's own lookup: one note per commit (none twice at two depths), with the model's lines
    listed = dict(reversed(line.split()) for line in
                  git(repo, "notes", f"--ref={REF}", "list").splitlines())
    assert set(listed) == set(model)
    blobs = sorted(set(listed.values()))
    out = subprocess.run(["git", "cat-file", "--batch"], cwd=repo, check=True,
                         input="".join(f"{b}\n" for b in blobs).encode(), capture_output=True)
    texts = dict(zip(blobs, (d.decode() for _, d in GitRepo._batch_objects(out.stdout,
                                                                           len(blobs))),
                     strict=True))
    assert {c: texts[b].splitlines() for c, b in listed.items()} == model
    some = sorted(model)[0]
    assert _show(repo, some) == model[some]


def test_a_folder_fans_out_a_level_deeper_and_notes_stay_where_they_are(tmp_path: Path) -> None:
    repo = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(repo))
    hexdigits = "0123456789abcdef"
    # Two notes per first hex digit at the root and in folder ab: git would fan both out.
    top = [f"{d}{k}" + "1" * 38 for d in hexdigits for k in "01"]
    in_ab = [f"ab{d}{k}" + "2" * 36 for d in hexdigits for k in "01"]
    gr = GitRepo(repo)
    assert gr.add_notes(REF, {c: ["one"] for c in top + in_ab}, "t") == 64
    paths = set(git(repo, "ls-tree", "-r", "--name-only", REF).split())
    assert all(f"{c[:2]}/{c[2:]}" in paths for c in top + in_ab)
    deeper = ["ab0f" + "3" * 36, "abff" + "4" * 36]
    assert gr.add_notes(REF, {deeper[0]: ["two"], deeper[1]: ["two"], in_ab[0]: ["two"]},
                        "t") == 3
    paths = set(git(repo, "ls-tree", "-r", "--name-only", REF).split())
    assert {f"ab/0f/{'3' * 36}", f"ab/ff/{'4' * 36}", f"ab/{in_ab[0][2:]}"} <= paths
    assert len(paths) == 66
    assert _show(repo, deeper[0]) == ["two"] and _show(repo, in_ab[0]) == ["one", "two"]
    assert gr.add_notes(REF, {deeper[0]: ["three"]}, "t") == 1
    assert f"ab/0f/{'3' * 36}" in git(repo, "ls-tree", "-r", "--name-only", REF).split()
    assert _show(repo, deeper[0]) == ["two", "three"]
    assert len(git(repo, "notes", f"--ref={REF}", "list").splitlines()) == 66


def test_notes_written_in_process_are_the_objects_git_writes(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    if writer == "git":
        pytest.skip("compares the two writers itself")
    commits = _commits(repo, 150)
    rounds = [{c: [f"first {c}"] for c in commits},          # enough to fan out
              {**{c: ["again"] for c in commits[:3]}, commits[3]: [f"first {commits[3]}"]}]
    gr = GitRepo(repo)
    for batch in rounds:
        gr.add_notes("refs/notes/inproc", batch, "hyperion: results of 2 requests")
        with monkeypatch.context() as patched:
            _ask_git(patched)
            gr.add_notes("refs/notes/git", batch, "hyperion: results of 2 requests")

        def commit(ref: str) -> list[str]:
            # Each ref has its own parent, and the dates differ by when each was written;
            # nothing else may differ (the tree, identities, message, its final newline).
            text = subprocess.run(["git", "cat-file", "commit", ref], cwd=repo, check=True,
                                  capture_output=True, text=True).stdout
            return [re.sub(r"> \d+ [+-]\d{4}$", ">", re.sub(r"^parent \w+$", "parent", line))
                    for line in text.split("\n")]

        assert commit("refs/notes/inproc") == commit("refs/notes/git")
        git(repo, "gc", "-q")     # the next round reads the notes trees from a pack
    assert git(repo, "ls-tree", "-r", "refs/notes/inproc") == \
        git(repo, "ls-tree", "-r", "refs/notes/git")
    assert any("/" in line for line in git(repo, "ls-tree", "-r", "--name-only",
                                           "refs/notes/inproc").splitlines())
    assert _show(repo, commits[0], "refs/notes/inproc") == [f"first {commits[0]}", "again"]
    assert git(repo, "fsck", "--strict", "--no-dangling") == ""
