"""The buyer's checklist runs on the nine-channel world of the end-to-end tests (a simulator per marketplace,
the gateway, the processor and one fan-out process for all nine channels), reused rather than rebuilt."""

from tests.e2e.test_all_channels import world

__all__ = ["world"]
