-- Projections of the risk processor's outputs (`{env}.risk.decisions`). Live decisions only: shadow
-- decisions (a candidate rule set run beside the live one) land in ClickHouse alone. No personal data:
-- pseudonymous user ids, actor ids, rule ids and the feature values the rules saw (sums, counts, tiers,
-- list entry ids; counterparty names travel only as keyed digests and are not recorded here).

-- Every live decision, append-only: the rules' decision when a transfer version is screened, and a
-- compliance officer's decision on one held for review (`reviewed_by` set).
CREATE TABLE risk_decisions (
    event_id             uuid        PRIMARY KEY,
    tenant_id            text        NOT NULL,
    environment          text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    transfer_id          text        NOT NULL,
    transfer_version     integer     NOT NULL CHECK (transfer_version > 0),
    kind                 text        NOT NULL,
    decision             text        NOT NULL CHECK (decision IN ('approve', 'review', 'block')),
    score                integer     NOT NULL CHECK (score >= 0),
    rule_set             text        NOT NULL,
    rule_set_version     text        NOT NULL,
    amount_minor         bigint      NOT NULL CHECK (amount_minor > 0),
    currency             text        NOT NULL,
    -- The amount in the rule set's report currency; NULL when no rate to it was seen.
    amount_report_minor  bigint      CHECK (amount_report_minor >= 0),
    report_currency      text        NOT NULL,
    ctr                  boolean     NOT NULL,
    user_id              text,
    requested_by         text        NOT NULL,
    reviewed_by          text,
    review_reason        text,
    -- Every rule that fired: [{rule, kind, score, features: {name: value}}], in the order evaluated.
    hits                 jsonb       NOT NULL,
    -- Versions of the lists matched against, by list name.
    lists                jsonb       NOT NULL,
    -- The rate the amount was converted with ({base, quote, rate_e9, version}); NULL without one.
    rate                 jsonb,
    screened_at          timestamptz NOT NULL,
    occurred_at          timestamptz NOT NULL,
    CHECK ((reviewed_by IS NULL) = (review_reason IS NULL)),
    CHECK (reviewed_by IS NULL OR decision <> 'review')
);
-- A transfer's decisions in order (GET /v1/risk/decisions): versions, then the review after the screening.
CREATE INDEX risk_decisions_transfer ON risk_decisions (tenant_id, environment, transfer_id, transfer_version);
CREATE INDEX risk_decisions_time ON risk_decisions (tenant_id, environment, occurred_at);

-- The latest live decision per transfer (forward-only by `step` = 2 · transfer_version, + 1 for an
-- officer's decision, which follows the screening of its version). The review queue is its rows whose
-- decision is `review`: a later screening or an officer's decision moves the transfer out of it.
CREATE TABLE risk_latest (
    tenant_id     text        NOT NULL,
    environment   text        NOT NULL,
    transfer_id   text        NOT NULL,
    step          bigint      NOT NULL,
    decision      text        NOT NULL,
    event_id      uuid        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, transfer_id)
);
-- The review queue, oldest first (GET /v1/risk/reviews).
CREATE INDEX risk_latest_review ON risk_latest (tenant_id, environment, occurred_at, transfer_id)
    WHERE decision = 'review';

-- Inputs the risk processor refused, with the reason (projection of risk.input_rejected; append-only).
CREATE TABLE risk_rejections (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL,
    input_event_id    uuid        NOT NULL,
    input_event_type  text        NOT NULL,
    transfer_id       text,
    reason            text        NOT NULL,
    occurred_at       timestamptz NOT NULL
);
CREATE INDEX risk_rejections_transfer ON risk_rejections (tenant_id, environment, transfer_id);
CREATE INDEX risk_rejections_time ON risk_rejections (tenant_id, environment, occurred_at);
