-- Projections of the FX processor's outputs (`{env}.fx.rates`, `{env}.fx.events`), the ledger's answers to
-- bookings (`{env}.ledger.bookings`) and the billing processor's outputs (`{env}.billing.events`). Money is
-- always integer minor units beside its currency (never numeric, never float); exact values are the decimal
-- text the processors computed, kept as they were. No personal data: ids, actor ids, accounts, statuses,
-- amounts and rates.

-- Every rate of every publication (projection of fx.rates_published; append-only). Rates are platform
-- reference data every tenant is quoted from: `tenant_id` is the publishing envelope's tenant.
CREATE TABLE fx_rates (
    event_id      uuid        NOT NULL,
    tenant_id     text        NOT NULL,
    environment   text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    base          text        NOT NULL,
    quote         text        NOT NULL,
    -- 1 base = rate_e9 / 10^9 quote.
    rate_e9       bigint      NOT NULL CHECK (rate_e9 > 0),
    as_of         timestamptz NOT NULL,
    published_by  text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    PRIMARY KEY (event_id, base, quote),
    CHECK (base <> quote)
);
-- The latest rate per pair (GET /v1/fx/rates): the greatest as_of, as the FX processor keeps it.
CREATE INDEX fx_rates_pair ON fx_rates (environment, base, quote, as_of DESC, occurred_at DESC, event_id DESC);

-- Each quote's current state (projection of fx.quote_recorded; forward-only by version).
CREATE TABLE fx_quotes (
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    quote_id       text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('issued', 'refused', 'expired', 'used')),
    version        integer     NOT NULL CHECK (version > 0),
    sell_currency  text        NOT NULL,
    buy_currency   text        NOT NULL,
    -- Minor units of sell_currency / buy_currency; NULL when not computed (a refused quote).
    sell_minor     bigint,
    buy_minor      bigint,
    fixed          text        NOT NULL CHECK (fixed IN ('sell', 'buy')),
    -- Buy units per sell unit, ×10^9: mid, and the customer's after markup.
    mid_e9         bigint,
    rate_e9        bigint,
    markup_bps     integer     NOT NULL CHECK (markup_bps >= 0),
    -- The rates it rests on: [{base, quote, rate_e9, inverted, source, as_of, version}].
    rates          jsonb       NOT NULL,
    pivot          text,
    rate_as_of     timestamptz,
    expires_at     timestamptz,
    rounding       text        NOT NULL CHECK (rounding IN ('half_even', 'half_up')),
    requested_by   text        NOT NULL,
    reason         text,
    conversion_id  text,
    last_event_id  uuid        NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, quote_id)
);

-- Each conversion's current state (projection of fx.conversion_recorded; forward-only by version), with
-- its amounts: S sold (sell_currency), and in buy_currency B bought, M the mid value, F the markup fee and
-- R the rounding residue, R = M − B − F; the exact values in buy minor units as decimal text.
CREATE TABLE fx_conversions (
    tenant_id        text        NOT NULL,
    environment      text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    conversion_id    text        NOT NULL,
    quote_id         text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending_approval', 'booking', 'completed', 'rejected')),
    version          integer     NOT NULL CHECK (version > 0),
    account          text        NOT NULL,
    destination      text        NOT NULL,
    sell_minor       bigint,
    sell_currency    text,
    buy_minor        bigint,
    buy_currency     text,
    mid_value_minor  bigint,
    fee_minor        bigint,
    residue_minor    bigint,
    mid_value_exact  text,
    buy_exact        text,
    fee_exact        text,
    mid_e9           bigint,
    rate_e9          bigint,
    rounding         text        NOT NULL CHECK (rounding IN ('half_even', 'half_up')),
    -- The ledger booking: the `transfer_id` of its postings.
    booking_id       text,
    otc              boolean     NOT NULL,
    requested_by     text        NOT NULL,
    decided_by       text,
    reason           text,
    last_event_id    uuid        NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, conversion_id),
    CHECK (residue_minor = mid_value_minor - buy_minor - fee_minor),
    CHECK (status <> 'completed' OR (booking_id IS NOT NULL AND sell_minor IS NOT NULL))
);
CREATE INDEX fx_conversions_booking ON fx_conversions (tenant_id, environment, booking_id);

-- Inputs the FX processor refused, with the reason (projection of fx.input_rejected; append-only).
CREATE TABLE fx_rejections (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL,
    input_event_id    uuid        NOT NULL,
    input_event_type  text        NOT NULL,
    quote_id          text,
    conversion_id     text,
    reason            text        NOT NULL,
    occurred_at       timestamptz NOT NULL
);
CREATE INDEX fx_rejections_time ON fx_rejections (tenant_id, environment, occurred_at);

-- What became of each booking (projection of ledger.booking_recorded; one per booking id, written once).
-- Booked legs are posted under `transfer_id` = booking_id in ledger_postings.
CREATE TABLE ledger_bookings (
    tenant_id    text        NOT NULL,
    environment  text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    booking_id   text        NOT NULL,
    purpose      text        NOT NULL CHECK (purpose IN ('fx_conversion', 'fee', 'plan')),
    -- The conversion id, the charged transfer's id, the plan period.
    reference    text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('booked', 'refused')),
    reason       text,
    -- [{account, amount: {amount_minor, currency}}], signed.
    legs         jsonb       NOT NULL,
    event_id     uuid        NOT NULL UNIQUE,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, booking_id),
    CHECK ((outcome = 'refused') = (reason IS NOT NULL))
);
CREATE INDEX ledger_bookings_reference ON ledger_bookings (tenant_id, environment, purpose, reference);

-- Each transfer's fee (projection of billing.fee_charged; forward-only by version).
CREATE TABLE fees (
    tenant_id                    text        NOT NULL,
    environment                  text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    transfer_id                  text        NOT NULL,
    transfer_kind                text        NOT NULL,
    transfer_amount_minor        bigint      NOT NULL CHECK (transfer_amount_minor > 0),
    transfer_currency            text        NOT NULL,
    -- The transfer's completion (event time): picks the config and the period.
    completed_at                 timestamptz NOT NULL,
    period                       text        NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    fee_minor                    bigint      NOT NULL CHECK (fee_minor >= 0),
    currency                     text        NOT NULL,
    status                       text        NOT NULL CHECK (status IN ('booking', 'booked', 'refused', 'waived')),
    version                      integer     NOT NULL CHECK (version > 0),
    config_version               text,
    pricing                      text        NOT NULL CHECK (pricing IN ('volume', 'graduated')),
    monthly_volume_before_minor  bigint      NOT NULL,
    monthly_volume_currency      text        NOT NULL,
    fixed_minor                  bigint      NOT NULL,
    fixed_currency               text        NOT NULL,
    -- [{amount: {amount_minor, currency}, bps}]: the slices of the percentage part.
    parts                        jsonb       NOT NULL,
    -- fixed + Σ parts, exact, in minor units, before rounding and clamping.
    exact                        text        NOT NULL,
    clamped                      text        CHECK (clamped IN ('min', 'max')),
    rounding                     text        NOT NULL CHECK (rounding IN ('half_even', 'half_up')),
    booking_id                   text,
    invoice_id                   text,
    adjustment                   boolean     NOT NULL,
    reason                       text,
    last_event_id                uuid        NOT NULL,
    updated_at                   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, transfer_id),
    CHECK (status <> 'booked' OR (booking_id IS NOT NULL AND invoice_id IS NOT NULL))
);
CREATE INDEX fees_invoice ON fees (tenant_id, environment, invoice_id);
-- GET /v1/fees pages: completion order.
CREATE INDEX fees_time ON fees (tenant_id, environment, completed_at, transfer_id);

-- Each invoice's current state (projection of billing.invoice_recorded; forward-only by version).
CREATE TABLE invoices (
    tenant_id      text        NOT NULL,
    environment    text        NOT NULL CHECK (environment IN ('live', 'sandbox')),
    invoice_id     text        NOT NULL,
    period         text        NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    closes_at      timestamptz NOT NULL,
    status         text        NOT NULL CHECK (status IN ('draft', 'finalized')),
    version        integer     NOT NULL CHECK (version > 0),
    -- Per currency, Σ lines: [{amount_minor, currency}].
    totals         jsonb       NOT NULL,
    line_count     integer     NOT NULL CHECK (line_count >= 0),
    last_event_id  uuid        NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment, invoice_id),
    CHECK (period_start < period_end)
);
CREATE INDEX invoices_period ON invoices (tenant_id, environment, period, invoice_id);

-- The lines of each invoice's current version: replaced, in the transaction that moves the invoice to a
-- higher version, by that version's lines.
CREATE TABLE invoice_lines (
    tenant_id        text        NOT NULL,
    environment      text        NOT NULL,
    invoice_id       text        NOT NULL,
    line_id          text        NOT NULL,
    -- Order within the invoice, from 0.
    position         integer     NOT NULL,
    invoice_version  integer     NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('usage', 'plan', 'adjustment')),
    transfer_kind    text,
    description      text        NOT NULL,
    -- Fees (or plan charges) counted.
    counted          bigint      NOT NULL CHECK (counted >= 0),
    amount_minor     bigint      NOT NULL,
    currency         text        NOT NULL,
    source_period    text        CHECK (source_period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    -- An adjustment's transfers (at most ADJUSTMENT_SOURCES_NAMED_MAX named): ["t-1", ...].
    sources          jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, environment, invoice_id, line_id),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, invoice_id)
);

-- Inputs the billing processor refused, with the reason (projection of billing.input_rejected;
-- append-only).
CREATE TABLE billing_rejections (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    environment       text        NOT NULL,
    input_event_id    uuid        NOT NULL,
    input_event_type  text        NOT NULL,
    transfer_id       text,
    reason            text        NOT NULL,
    occurred_at       timestamptz NOT NULL
);
CREATE INDEX billing_rejections_transfer ON billing_rejections (tenant_id, environment, transfer_id);
CREATE INDEX billing_rejections_time ON billing_rejections (tenant_id, environment, occurred_at);

-- Rates, bookings and rejections are written once: refuse updates at the database, whoever asks.
CREATE FUNCTION fx_billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER fx_rates_no_update BEFORE UPDATE ON fx_rates
    FOR EACH ROW EXECUTE FUNCTION fx_billing_append_only();
CREATE TRIGGER fx_rejections_no_update BEFORE UPDATE ON fx_rejections
    FOR EACH ROW EXECUTE FUNCTION fx_billing_append_only();
CREATE TRIGGER ledger_bookings_no_update BEFORE UPDATE ON ledger_bookings
    FOR EACH ROW EXECUTE FUNCTION fx_billing_append_only();
CREATE TRIGGER billing_rejections_no_update BEFORE UPDATE ON billing_rejections
    FOR EACH ROW EXECUTE FUNCTION fx_billing_append_only();
