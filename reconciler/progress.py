"""How a run reports its progress per connection (the CLI draws bars; the service reports nothing).

Phases are plain text; the CLI decides how to show them (reconciler/cli.py colours the outcomes below)."""

from __future__ import annotations

from typing import Protocol

DONE = "done"
COMPARED = "compared (dry run)"
PROCESSOR_BEHIND = "not corrected: processor behind"
FAILED = "failed in {phase}"


class Progress(Protocol):
    def phase(self, connection_id: str, text: str, total: int | None = None) -> None: ...

    def advance(self, connection_id: str, n: int = 1) -> None: ...


class Silent:
    """Progress that goes nowhere."""

    def phase(self, connection_id: str, text: str, total: int | None = None) -> None:
        pass

    def advance(self, connection_id: str, n: int = 1) -> None:
        pass
