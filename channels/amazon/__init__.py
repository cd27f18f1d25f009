"""Amazon Selling Partner API: ORDER_CHANGE in through SNS over HTTPS, quantities out by listing patch.

What is real about this channel:

- **Inbound.** SP-API has no HTTP webhook. ``ORDER_CHANGE`` notifications go to the seller's SQS queue (the
  only destination SP-API offers for that type); this package takes them from an Amazon SNS HTTPS
  subscription, so the seller relays the queue's message bodies unchanged to an SNS topic (for instance an
  EventBridge Pipe from the queue to the topic, the body as the target input). SNS signs every message
  (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA) with a certificate that is the same for every topic
  in a region: the signature proves SNS sent it, not that *our* topic did, so each connection pins its topic
  in ``options.sns_topic_arn`` and its seller in ``options.seller_id``. See ``webhooks``.
- **Ids.** The seller SKU is Amazon's listing identity (``listings.<sku>.listing_id``); an order line is
  ``AmazonOrderId`` (3-7-7 digits) + ``OrderItemId``; ``NotificationMetadata.NotificationId`` names a
  notification, but the same order line arrives in several notifications (Pending, Unshipped, ...), so
  event ids are built from the order line, never from the notification.
- **Retries.** SQS redelivers until the relay deletes the message; SNS retries an HTTPS endpoint per the
  subscription's delivery policy (default 3 retries 20 s apart). The 5-minute replay window on the SNS
  ``Timestamp`` means a delivery policy must not retry for longer: reconciliation backfills what is refused.
- **Outbound.** Listings Items API ``patchListingsItem`` on ``/attributes/fulfillment_availability``, one SKU
  per call, authorised by the Login-with-Amazon access token in ``x-amz-access-token``; ``sellerId`` and
  ``marketplaceIds`` come from ``options.seller_id`` / ``options.marketplace_id``. See ``client``.
- **Limits.** Listings Items operations: 5 requests/s, burst 10 in the published model (CHANNELS.md: 5-10);
  the budget below uses burst 5 so a fan-out that paces itself by it never depends on the larger burst.
  ``JSON_LISTINGS_FEED`` could carry many SKUs, but feeds are limited to 5 per 5 minutes and are processed
  asynchronously over minutes: worse latency than 5 patches a second for any realistic change rate, so
  there is no bulk path (``MAX_BATCH = 1``).
"""

CHANNEL = "amazon"
LISTINGS_API_VERSION = "2021-08-01"
NOTIFICATION_TYPE = "ORDER_CHANGE"
RATE_LIMIT_PER_S = 5.0
RATE_BURST = 5
MAX_BATCH = 1
REPLAY_WINDOW_S = 300

# The parts import the constants above, so the spec is built after them.
from channels.amazon import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.AmazonInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    list_orders=orders.list_orders,
)
