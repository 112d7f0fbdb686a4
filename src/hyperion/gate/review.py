"""The gate where it needs the repository and the signer: which policy applies, signatures, and
the target's tree.

:func:`review` is what intake (and ``validate``, ``requeue``) run on a typed request: the policy
of the request's repo (the configured one, or the file ``policy_from_target`` names read from the
tip of the target branch, never from the change under review), the pure :func:`judge` under it,
the signature check, and the symlink/submodule checks against the tip's tree.
:func:`tree_refusal` is the worker's last check against the exact commit it applies onto.

Policies read from a branch are cached per (repository, commit, path): a commit never changes,
so a policy read once at a tip is the policy of that tip for good. A missing or invalid policy
there refuses the request (``policy_denied``) with what to fix; it never falls back to another
policy, and the refusal is cached the same way.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from typing import Any

from hyperion.app import App
from hyperion.config import Config
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.gate.patch import parse_patch
from hyperion.gate.policy import Policy, parse_policy
from hyperion.gate.signatures import check_signature
from hyperion.gate.tree import check_against_tree
from hyperion.gate.verdict import Verdict, judge, repo_name
from hyperion.gitops import GitError, GitRepo
from hyperion.records import Record
from hyperion.requests import ChangeRequest, Request, TaskRequest

MAX_POLICY_BYTES = 1024 * 1024
_CACHE_SIZE = 64
_cache: OrderedDict[tuple[str, str, str], Policy | str] = OrderedDict()
_cache_lock = threading.Lock()


def tip_policy(repo: GitRepo, commit: str, path: str) -> Policy:
    """The policy file ``path`` as it is in ``commit``; ValueError says why it is unusable."""
    key = (str(repo.git_dir), commit, path)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is None:
        try:
            cached = _read_tip_policy(repo, commit, path)
        except ValueError as exc:
            cached = str(exc)
        with _cache_lock:
            _cache[key] = cached
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    if isinstance(cached, str):
        raise ValueError(cached)
    return cached


def _read_tip_policy(repo: GitRepo, commit: str, path: str) -> Policy:
    def blob(name: str, what: str) -> str:
        try:
            data = repo.read_blob(commit, name, MAX_POLICY_BYTES)
        except ValueError as exc:
            raise ValueError(f"{what} is too large ({exc})") from None
        if data is None:
            raise ValueError(f"{what} {name} does not exist there")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} {name} is not UTF-8") from None

    def read_signers(name: str) -> str:
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), name))
        if name.startswith("/") or joined == ".." or joined.startswith("../"):
            raise ValueError(f"{path}: signatures.allowed_signers must be a file of the "
                             f"repository, relative to the policy's folder (not {name!r})")
        return blob(joined, "the allowed_signers file")

    return parse_policy(blob(path, "the policy file"), path, read_signers)


def policy_at(config: Config, policy: Policy, repo_name: str, repo: GitRepo | None,
              commit: str | None, target: str) -> Policy:
    """The policy for a request to ``repo_name``'s ``target`` at ``commit`` (its tip): the
    configured ``policy`` unless the repo names ``policy_from_target``. GateError
    (``policy_denied``) when that file cannot be used."""
    path = config.repos[repo_name].policy_from_target
    if path is None:
        return policy
    where = f"{target} at {commit[:12]}" if commit else target
    if repo is None:
        raise GateError(Code.POLICY_DENIED, f"the policy comes from {path} in the repository "
                        f"{config.repos[repo_name].path}, which cannot be opened; fix the "
                        "repository path in the configuration", path="repo")
    if commit is None:
        raise GateError(Code.POLICY_DENIED, f"the policy comes from {path} on the target branch "
                        f"{target!r}, which does not exist; create the branch with its policy "
                        "or send the request to another target", path="target")
    try:
        return tip_policy(repo, commit, path)
    except ValueError as exc:
        raise GateError(Code.POLICY_DENIED, f"the policy {path} cannot be used from {where} "
                        f"({exc}); fix it on {target}, then `hyperion requeue` the request",
                        path="target") from None
    except GitError as exc:
        raise GateError(Code.INTERNAL_ERROR, f"cannot read {path} from {where}: {exc}; "
                        "check the repository, then `hyperion requeue` the request",
                        path="target") from None


def policy_for_record(config: Config, policy: Policy, record: Record) -> Policy:
    """The policy that governs a recorded request now: its repo's target tip policy with
    ``policy_from_target``, else the configured one. GateError when that cannot be used."""
    if record.repo is None or record.target is None or record.repo not in config.repos \
            or config.repos[record.repo].policy_from_target is None:
        return policy
    try:
        repo: GitRepo | None = GitRepo.at(config.repos[record.repo].path)
    except GitError:
        repo = None
    tip = repo.branch_commit(record.target) if repo is not None else None
    return policy_at(config, policy, record.repo, repo, tip, record.target)


def _agent(request: Request) -> str:
    return request.agent if isinstance(request, ChangeRequest) else request.requested_by


def review(config: Config, policy: Policy, request: Request, obj: dict[str, Any]) -> Verdict:
    """Accept (a Verdict) or raise GateError: the whole gate for one parsed request. ``obj``
    is the request's JSON object as received (its signature covers those exact values)."""
    name = repo_name(request, config)
    repo_config = config.repos[name]
    target = request.target or repo_config.target
    try:
        repo: GitRepo | None = GitRepo.at(repo_config.path)
    except GitError:
        repo = None   # the worker reports a missing repository; nothing here to check against
    tip = repo.branch_commit(target) if repo is not None else None
    applied = policy_at(config, policy, name, repo, tip, target)
    verdict = judge(request, config, applied)
    check_signature(obj, _agent(request), applied)
    if isinstance(request, TaskRequest) or repo is None or tip is None:
        return verdict
    try:
        check_against_tree(repo, tip, verdict.files, allow_submodules=applied.allow_submodules)
    except GitError as exc:
        raise GateError(Code.INTERNAL_ERROR, f"cannot read the tree of {target} at {tip[:12]}: "
                        f"{exc}; check the repository, then `hyperion requeue` the request",
                        path="target") from None
    return verdict


def tree_refusal(app: App, record: Record, repo: GitRepo, commit: str,
                 patch: str) -> ErrorInfo | None:
    """The worker's check just before applying onto ``commit``: why the patch must not be
    applied there (symlinks, submodules, or the policy of that commit unusable), else None."""
    assert record.repo is not None and record.target is not None
    try:
        applied = policy_at(app.config, app.policy, record.repo, repo, commit, record.target)
        check_against_tree(repo, commit, parse_patch(patch),
                           allow_submodules=applied.allow_submodules)
    except GateError as exc:
        return exc.info
    return None
