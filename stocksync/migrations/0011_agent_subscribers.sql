-- Subscribers of a tenant's availability changes (issue 16): headless storefronts and AI agents whose URL is
-- POSTed, signed with their secret, every change of what agents may see of the tenant's SKUs
-- (fanout/subscribers.py, run by `python -m fanout --subscribers`; managed by `stocksync subscribers`).
-- The secret is kept as it is (it signs every request); the command line shows it once, when it is made.
CREATE TABLE agent_subscribers (
    id          text        PRIMARY KEY,
    tenant      text        NOT NULL,
    url         text        NOT NULL CHECK (url ~* '^https?://'),
    secret      text        NOT NULL,
    skus        text[],                       -- NULL: every SKU of the tenant
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_subscribers_tenant ON agent_subscribers (tenant);
