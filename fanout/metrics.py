"""Fan-out metrics. Labels: channel names and a fixed set of call results."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RESULTS = ("ok", "rate_limited", "server_error", "client_error", "conflict", "network")


class FanoutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sync_lag = Histogram(
            "sync_lag_seconds",
            "From the cause's arrival at the gateway to the channel confirming the new quantity.",
            ["channel"],
            buckets=(
                0.01,
                0.025,
                0.05,
                0.075,
                0.1,
                0.15,
                0.2,
                0.25,
                0.3,
                0.4,
                0.5,
                0.75,
                1.0,
                1.5,
                2.0,
                2.5,
                5.0,
                10.0,
                30.0,
                60.0,
            ),
            registry=registry,
        )
        self.calls = Counter(
            "fanout_channel_calls_total",
            "Outbound channel calls by result.",
            ["channel", "result"],
            registry=registry,
        )
        self.coalesced = Counter(
            "fanout_coalesced_total",
            "Records not sent because a newer one about the same SKU superseded them.",
            ["channel"],
            registry=registry,
        )
        self.dlq_writes = Counter(
            "fanout_dlq_writes_total",
            "Updates written to the dead-letter topic.",
            ["channel"],
            registry=registry,
        )
        self.rate_limit_wait = Counter(
            "fanout_rate_limit_wait_seconds_total",
            "Time spent waiting for the connection's token bucket.",
            ["channel"],
            registry=registry,
        )
        self.dlq_depth = Gauge(
            "fanout_dlq_depth_records",
            "Records retained in the fanout.dlq topic (high minus low watermarks), read periodically. "
            "Replaying a letter does not remove it: the depth falls only with the topic's retention.",
            registry=registry,
        )
        self.held_back = Counter(
            "fanout_held_back_total",
            "Mirrored counts not sent to a channel with a daily cap: no threshold crossed, or the day's "
            "budget spent (fanout/budget.py).",
            ["channel"],
            registry=registry,
        )
        self.daily_left = Gauge(
            "fanout_daily_budget_remaining",
            "What is left today of a connection's daily cap: cap=calls (calls a day) or cap=listing_writes "
            "(writes left to the listing revised most today).",
            ["channel", "connection", "cap"],
            registry=registry,
        )
        self.granted = Gauge(
            "allocation_granted_units",
            "Units granted to the channel's connections over every SKU under allocation (never_cancel): "
            "what they may still sell unheard of.",
            ["channel"],
            registry=registry,
        )
        self.slack = Gauge(
            "allocation_slack_units",
            "Sellable units granted to no connection, over every SKU under allocation seen by this channel's "
            "fan-out: the reserve that refills the channels that sell out.",
            ["channel"],
            registry=registry,
        )
        self.stocked_out = Gauge(
            "allocation_stocked_out_listings",
            "Listings of the channel with no grant while the master holds units of the SKU.",
            ["channel"],
            registry=registry,
        )
        self.stockout_seconds = Counter(
            "allocation_stockout_while_available_seconds_total",
            "Listing-seconds the channel had no grant while the master held units (the price of never "
            "overselling: buyers there are turned away until a refill).",
            ["channel"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records",
            "Records of a topic not yet committed by a consumer group, read from the broker periodically.",
            ["group", "topic"],
            registry=registry,
        )
