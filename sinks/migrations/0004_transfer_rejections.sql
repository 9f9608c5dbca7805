-- Inputs the transfers processor refused, with the reason (projection of transfer.input_rejected;
-- append-only). Reasons are the processor's own words (ids and amounts, never payload contents).
CREATE TABLE transfer_rejections (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    input_event_id    uuid        NOT NULL,
    input_event_type  text        NOT NULL,
    transfer_id       text,
    reason            text        NOT NULL,
    occurred_at       timestamptz NOT NULL
);
CREATE INDEX transfer_rejections_transfer ON transfer_rejections (tenant_id, environment, transfer_id);
CREATE INDEX transfer_rejections_time ON transfer_rejections (tenant_id, environment, occurred_at);
