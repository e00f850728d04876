"""RunOptions: a run's options, as ``qwbatch run``, :func:`qwbatch.run`, :func:`qwbatch.estimate`
and the ``render-manifest`` flow take them, by the same names and with the same defaults.

The Python API and the flow keep flat keyword parameters (a notebook's call, a deployment's
``-p budget=5``); each turns them into one ``RunOptions`` at its edge (:meth:`RunOptions.pick`)
and passes that down, so an option is named in its signature and here, nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qwbatch.budget.policy import BudgetMode, BudgetPolicy
from qwbatch.core.costs import money
from qwbatch.core.errors import ConfigError
from qwbatch.core.model_table import parse_target_size
from qwbatch.core.settings import Settings, settings_with


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """A run's options; None means "not given": the environment's setting holds.

    ``model`` is the default for rows without one; ``shard_size`` requests per shard;
    ``rps`` requests per second (or "auto") and ``max_in_flight`` requests in flight, per
    model; ``text_rerolls``, ``text_max_cer`` and ``text_workers`` drive text checks;
    ``target_size`` (``"300*250"``, ``"728*90:pad"``) is the channel size of rows without
    their own. ``strict`` refuses the manifest on any bad row. ``run_id`` names a new run,
    ``resume`` an unfinished one to finish; ``auto_resume`` resumes an unfinished run of the
    same manifest. ``budget`` (the region's currency) is the most the run may spend, and
    ``budget_mode`` what happens over it. ``wait`` waits for another run holding DEST.
    """

    model: str | None = None
    shard_size: int | None = None
    rps: float | Literal["auto"] | None = None
    max_in_flight: int | None = None
    text_rerolls: int | None = None
    text_max_cer: float | None = None
    text_workers: int | None = None
    target_size: str | None = None
    strict: bool = False
    run_id: str | None = None
    resume: str | None = None
    auto_resume: bool = True
    budget: float | None = None
    budget_mode: BudgetMode = "refuse"
    wait: bool = False

    @classmethod
    def pick(cls, arguments: Mapping[str, Any], **more: Any) -> RunOptions:
        """The options among ``arguments`` (a call's arguments by name: ``locals()`` first
        thing in the function), with ``more`` on top; other names are left out."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**arguments, **more}.items() if k in names})

    def settings_overrides(self) -> dict[str, Any]:
        """The Settings fields these options set on top of the environment (None: not set)."""
        return {
            "default_model": self.model,
            "shard_size": self.shard_size,
            "rps": self.rps,
            "max_in_flight": self.max_in_flight,
            "text_rerolls": self.text_rerolls,
            "text_max_cer": self.text_max_cer,
            "text_workers": self.text_workers,
            "default_target_size": self.target_size,
        }

    def settings(self) -> Settings:
        """Settings from the environment with these options on top; ConfigError for a
        ``target_size`` that no row could use."""
        if self.target_size is not None and parse_target_size(self.target_size) is None:
            raise ConfigError(
                f"--target-size {self.target_size!r} is not of the form W*H or W*H:pad "
                "(such as 300*250)"
            )
        return settings_with(self.settings_overrides())

    def policy(self) -> BudgetPolicy | None:
        """The budget policy, or None without a budget."""
        return (
            BudgetPolicy(money(self.budget), self.budget_mode) if self.budget is not None else None
        )

    def flow_parameters(self) -> dict[str, Any]:
        """These options as the ``render-manifest`` flow's parameters (the same names)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
