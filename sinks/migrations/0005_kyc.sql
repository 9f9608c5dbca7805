-- Projections of the KYC processor's outputs (`{env}.kyc.events`). No personal data: pseudonymous user
-- and case ids, statuses, tiers, vendors' reason codes, admins' reasons and actor ids.

-- Current state per user (projection of every user.* event; forward-only by version).
CREATE TABLE users (
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    user_id        text        NOT NULL,
    user_status    text        NOT NULL CHECK (user_status IN ('pending', 'active', 'suspended', 'frozen', 'closed')),
    kyc_status     text        NOT NULL CHECK (kyc_status IN ('not_started', 'pending', 'in_review', 'approved', 'rejected', 'expired')),
    tier           smallint    NOT NULL CHECK (tier BETWEEN 0 AND 3),
    kyc_expires_at timestamptz,
    version        bigint      NOT NULL CHECK (version > 0),
    last_event_id  uuid        NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, user_id)
);
CREATE INDEX users_status ON users (tenant_id, environment, user_status);

-- Current status per vendor case (from the user.* events that name a case and its status; forward-only
-- by the user's version).
CREATE TABLE kyc_cases (
    tenant_id     text        NOT NULL,
    environment   text        NOT NULL,
    case_id       text        NOT NULL,
    user_id       text        NOT NULL,
    provider      text,
    case_status   text        NOT NULL,
    version       bigint      NOT NULL,
    last_event_id uuid        NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, case_id)
);
CREATE INDEX kyc_cases_user ON kyc_cases (tenant_id, environment, user_id);

-- Every user.* event, append-only.
CREATE TABLE kyc_history (
    event_id       uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL,
    user_id        text        NOT NULL,
    event_type     text        NOT NULL,
    user_status    text        NOT NULL,
    kyc_status     text        NOT NULL,
    tier           smallint    NOT NULL,
    kyc_expires_at timestamptz,
    version        bigint      NOT NULL,
    case_id        text,
    case_status    text,
    provider       text,
    reason         text,
    actor          text,
    cause_event_id uuid        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    UNIQUE (tenant_id, environment, user_id, version)
);

-- Inputs the KYC processor refused, with the reason (projection of kyc.input_rejected; append-only).
CREATE TABLE kyc_rejections (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL,
    input_event_id    uuid        NOT NULL,
    input_event_type  text        NOT NULL,
    user_id           text,
    case_id           text,
    reason            text        NOT NULL,
    occurred_at       timestamptz NOT NULL
);
CREATE INDEX kyc_rejections_user ON kyc_rejections (tenant_id, environment, user_id);
CREATE INDEX kyc_rejections_time ON kyc_rejections (tenant_id, environment, occurred_at);

-- History and rejections are append-only: refuse updates at the database, whoever asks.
CREATE FUNCTION kyc_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER kyc_history_no_update BEFORE UPDATE ON kyc_history
    FOR EACH ROW EXECUTE FUNCTION kyc_append_only();
CREATE TRIGGER kyc_rejections_no_update BEFORE UPDATE ON kyc_rejections
    FOR EACH ROW EXECUTE FUNCTION kyc_append_only();
