-- Audit log projection and sink positions. Append-only: the sink never updates or deletes audit rows.
CREATE TABLE audit_log (
    event_id         uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    environment      text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    actor            text        NOT NULL,
    action           text        NOT NULL,
    resource_type    text        NOT NULL,
    resource_id      text        NOT NULL,
    source_event_id  uuid        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL,
    trace_id         text,
    payload_bytes    bigint      NOT NULL CHECK (payload_bytes >= 0),
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);

CREATE INDEX audit_log_tenant_time ON audit_log (tenant_id, environment, occurred_at, event_id);
CREATE INDEX audit_log_resource ON audit_log (tenant_id, resource_type, resource_id);

-- Next offset to consume per (sink, topic, partition), written in the same transaction as the rows.
CREATE TABLE sink_offsets (
    sink        text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);

-- Audit rows are append-only: refuse updates at the database, whoever asks.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
