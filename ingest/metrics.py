"""Gateway metrics. Label values are bounded: the channel names and a fixed set of outcomes.

Outcome ``quarantined`` counts every webhook with something in the quarantine topic: the whole body, or some
of its lines (the other lines published); ``webhook_lines_quarantined_total`` counts the refused lines."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

OUTCOMES = (
    "accepted",
    "quarantined",
    "unauthorized",
    "unknown_connection",
    "too_large",
    "unavailable",
    "ping",
)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "webhook_requests_total",
            "Webhook requests by channel and outcome.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "webhook_ack_seconds",
            "Time from request arrival to the answer, for accepted and quarantined webhooks.",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.lines_quarantined = Counter(
            "webhook_lines_quarantined_total",
            "Order lines refused at the gateway (no valid event, e.g. a quantity out of range), quarantined.",
            ["channel"],
            registry=registry,
        )
        self.events = Counter(
            "ingest_events_published_total",
            "Canonical events published to inventory.events.",
            ["channel"],
            registry=registry,
        )
        self.admin = Counter(
            "admin_requests_total",
            "Admin API requests by action (count, receipt, read) and outcome.",
            ["action", "outcome"],
            registry=registry,
        )
        self.reservations = Counter(
            "reservation_requests_total",
            "Reservation API calls by action (hold, commit, release, read) and the HTTP status answered.",
            ["action", "outcome"],
            registry=registry,
        )
        self.reservation_seconds = Histogram(
            "reservation_round_trip_seconds",
            "From a reservation call's arrival to its answer, the processor's decision included.",
            ["action"],
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=registry,
        )
        # Children looked up once per label set: ``labels()`` validates and joins its values on every call,
        # which showed in the gateway's profile; the label values are bounded, so these stay small.
        self._outcomes: dict[tuple[str, str], Counter] = {}
        self._published: dict[str, Counter] = {}
        self._acks: dict[str, Histogram] = {}

    def outcome(self, channel: str, outcome: str) -> None:
        """Count one webhook request of `channel` that ended in `outcome` (``webhook_requests_total``)."""
        child = self._outcomes.get((channel, outcome))
        if child is None:
            child = self._outcomes[channel, outcome] = self.requests.labels(channel, outcome)
        child.inc()

    def published(self, channel: str, events: int) -> None:
        """Count `events` canonical events of `channel` published (``ingest_events_published_total``)."""
        child = self._published.get(channel)
        if child is None:
            child = self._published[channel] = self.events.labels(channel)
        child.inc(events)

    def answered(self, channel: str, seconds: float) -> None:
        """Observe the time to answer a webhook of `channel` (``webhook_ack_seconds``)."""
        child = self._acks.get(channel)
        if child is None:
            child = self._acks[channel] = self.ack_seconds.labels(channel)
        child.observe(seconds)
