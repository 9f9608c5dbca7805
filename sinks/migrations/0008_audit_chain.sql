-- The audit trail, hash-chained and checkpointed (schemas/src/audit.rs, ARCHITECTURE.md "The audit trail").
-- Every column of a record is kept as stated, so `riverbank audit verify --postgres` can re-encode each
-- row and recompute its hash. Rows are append-only: updates and deletes are refused at the database.
ALTER TABLE audit_log
    ADD COLUMN seq               bigint CHECK (seq >= 1),
    ADD COLUMN before            text,
    ADD COLUMN after             text,
    ADD COLUMN ip                text,
    ADD COLUMN user_agent        text,
    ADD COLUMN request_id        text,
    ADD COLUMN source_event_type text,
    ADD COLUMN prev_hash         text,
    ADD COLUMN hash              text;

-- One record per position of a log: a second record claiming a seq fails the sink's batch loudly.
CREATE UNIQUE INDEX audit_log_chain ON audit_log (tenant_id, environment, seq);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, environment, actor, seq);
CREATE INDEX audit_log_action ON audit_log (tenant_id, environment, action, seq);
CREATE INDEX audit_log_time ON audit_log (tenant_id, environment, occurred_at, seq);

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Signed checkpoints: (log size, Merkle tree head, chain head) under an Ed25519 key id.
CREATE TABLE audit_checkpoints (
    checkpoint_id    uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    environment      text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    tree_size        bigint      NOT NULL CHECK (tree_size >= 1),
    root_hash        text        NOT NULL,
    last_hash        text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    key_id           text        NOT NULL,
    signature        text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    UNIQUE (tenant_id, environment, tree_size)
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
