"""The wiring of one hyperion instance: configuration plus the stores every stage shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyperion.config import Config, ConfigError
from hyperion.gate.policy import Policy, load_policy
from hyperion.records import RecordStore
from hyperion.report import Reporter
from hyperion.spool import Spool


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
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        return cls(config=config, policy=policy, records=RecordStore(state),
                   spool=Spool(state / "spool"), reporter=Reporter(config))

    def artifacts_dir(self, record_id: str) -> Path:
        return self.config.state_dir / "artifacts" / record_id

    def worktrees_dir(self) -> Path:
        return self.config.state_dir / "worktrees"

    def locks_dir(self) -> Path:
        path = self.config.state_dir / "locks"
        path.mkdir(parents=True, exist_ok=True)
        return path
