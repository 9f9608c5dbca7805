//! End-to-end tests across crates, against the real local stack (deploy/local/stack up):
//! a Kafka-protocol broker, PostgreSQL and ClickHouse. Each test gets its own topics (prefix),
//! consumer groups, Postgres database and ClickHouse database, so tests run in parallel.
//!
//! Where the stack is: RIVERBANK_TEST_BROKERS, RIVERBANK_TEST_PG_URL (a database to create others
//! from), RIVERBANK_TEST_CH_URL; defaults are the local stack's ports.

mod analytics;
mod audit;
mod audit_tamper;
mod callbacks;
mod cross_tenant;
mod dashboard;
mod fx_billing;
mod fx_billing_read;
mod hardening;
mod harness;
mod ingest;
mod keys;
mod kyc;
mod live;
mod money_loop;
mod personal;
mod pii;
mod reconcile;
mod risk_read;
mod runtime;
mod sinks;
mod skeleton;
mod transfers;
mod workspace;
