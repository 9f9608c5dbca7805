-- Personal data as ingest sealed it (issue 13): one row per sealed value (`rbf1.` envelope) found in a
-- webhook body on `{env}.ingest.webhooks`. Never a clear value; the body itself is not stored. The
-- envelope opens only with the subject's data key (keys.data_keys) and its associated data: the tenant,
-- environment and subject (here), the JSON pointer (`pointer`, the AAD field) and the event id
-- (`record`, the AAD record). Erasing the subject destroys the key: the rows stay, unreadable.
-- Insert-only, idempotent on (event id, pointer).
CREATE TABLE personal_data (
    event_id          uuid        NOT NULL,
    pointer           text        NOT NULL,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    subject           text        NOT NULL,
    data_class        text        NOT NULL,
    record            text        NOT NULL,
    sealed            text        NOT NULL,
    provider          text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    PRIMARY KEY (event_id, pointer)
);
-- The read: a subject's values, latest first per (class, pointer).
CREATE INDEX personal_data_subject
    ON personal_data (tenant_id, environment, subject, data_class, pointer, occurred_at DESC);

CREATE FUNCTION personal_data_insert_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is insert-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER personal_data_no_update BEFORE UPDATE ON personal_data
    FOR EACH ROW EXECUTE FUNCTION personal_data_insert_only();
