"""Escrow allocation of a SKU's units across the connections that list it: ``allocation.rules`` decides
(pure, no I/O); ``allocation.policy`` reads and sets the policies and reads the grants. The processor keeps
the state in PostgreSQL beside the master record (``processor/allocate.py``); the fan-out makes the writes
(``fanout/``); tests/unit/test_allocation_model.py checks the invariant."""

from allocation.rules import (
    POLICIES,
    WRITE_MODES,
    Allocation,
    Holder,
    Policy,
    Write,
    WriteMode,
    after_cancellation,
    after_sale,
    allocate,
    cas_retarget,
    decay,
    mirror,
)

__all__ = [
    "POLICIES",
    "WRITE_MODES",
    "Allocation",
    "Holder",
    "Policy",
    "Write",
    "WriteMode",
    "after_cancellation",
    "after_sale",
    "allocate",
    "cas_retarget",
    "decay",
    "mirror",
]
