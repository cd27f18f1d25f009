"""Reconciler: backfills orders the webhooks missed, then corrects channels that drifted (issue 6)."""
