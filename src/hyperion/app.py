"""The wiring of one hyperion instance: configuration plus the stores every stage shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hyperion.config import Config, ConfigError
from hyperion.gate.policy import Policy, load_policy
from hyperion.records import RecordStore
from hyperion.report import Reporter
from hyperion.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class App:
    config: Config
    policy: Policy
    records: RecordStore
    spool: Spool
    reporter: Reporter
    dry_run: bool = False   # `hyperion run --dry-run`: apply and check, never land

    @classmethod
    def open(cls, config: Config) -> App:
        try:
            policy = load_policy(config.policy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls.with_policy(config, policy)

    @classmethod
    def with_policy(cls, config: Config, policy: Policy) -> App:
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        return cls(config=config, policy=policy, records=RecordStore(state),
                   spool=Spool(state / "spool"), reporter=Reporter(config))

    def warm_up(self) -> None:
        """Pay the first request's one-time costs now: the schema validators, the secret
        rules, and each repository opened (its in-process reader with it)."""
        from hyperion.gate.secrets import rule_ids
        from hyperion.gitops import GitError, GitRepo
        from hyperion.requests import load_validators

        load_validators()
        rule_ids()
        for name, repo in self.config.repos.items():
            try:
                GitRepo.at(repo.path).branch_commit(repo.target)
            except (GitError, OSError) as exc:
                log.warning("repository %s (%s) cannot be opened now: %s", name, repo.path, exc)

    def artifacts_dir(self, record_id: str) -> Path:
        return self.config.state_dir / "artifacts" / record_id

    def worktrees_dir(self) -> Path:
        return self.config.state_dir / "worktrees"

    def locks_dir(self) -> Path:
        path = self.config.state_dir / "locks"
        path.mkdir(parents=True, exist_ok=True)
        return path
