-- Projections of the transfers processor's outputs. Each is keyed so a replayed event lands once, and
-- the "current" tables move only forward (a replayed or late older version never overwrites a newer one).

-- Current status per transfer (projection of transfer.status_changed; forward-only by version).
CREATE TABLE transfers (
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    transfer_id    text        NOT NULL,
    kind           text        NOT NULL,
    amount_minor   bigint      NOT NULL CHECK (amount_minor > 0),
    currency       text        NOT NULL,
    status         text        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    reason         text,
    last_event_id  uuid        NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, transfer_id)
);
CREATE INDEX transfers_status ON transfers (tenant_id, environment, status);

-- Every status change, append-only.
CREATE TABLE transfer_status_history (
    event_id       uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL,
    transfer_id    text        NOT NULL,
    previous       text,
    status         text        NOT NULL,
    version        integer     NOT NULL,
    reason         text,
    cause_event_id uuid        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    UNIQUE (tenant_id, environment, transfer_id, version)
);

-- Ledger legs, append-only; the legs of one posting_id sum to zero.
CREATE TABLE ledger_postings (
    event_id       uuid        PRIMARY KEY,
    posting_id     uuid        NOT NULL,
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL,
    transfer_id    text        NOT NULL,
    phase          text        NOT NULL CHECK (phase IN ('hold', 'post', 'release')),
    account        text        NOT NULL,
    amount_minor   bigint      NOT NULL CHECK (amount_minor <> 0),
    currency       text        NOT NULL,
    occurred_at    timestamptz NOT NULL
);
CREATE INDEX ledger_postings_account ON ledger_postings (tenant_id, environment, account, currency);
CREATE INDEX ledger_postings_posting ON ledger_postings (posting_id);

-- Balances per account (projection of balance.changed; forward-only by version).
CREATE TABLE account_balances (
    tenant_id            text        NOT NULL,
    environment          text        NOT NULL,
    account              text        NOT NULL,
    currency             text        NOT NULL,
    posted_minor         bigint      NOT NULL,
    pending_debit_minor  bigint      NOT NULL CHECK (pending_debit_minor >= 0),
    pending_credit_minor bigint      NOT NULL CHECK (pending_credit_minor >= 0),
    available_minor      bigint      NOT NULL,
    version              bigint      NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, account, currency)
);

-- Event time (ingested_at) up to which each partition has landed, with the sink's positions.
ALTER TABLE sink_offsets ADD COLUMN landed_through timestamptz;
