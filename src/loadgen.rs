//! `riverbank loadgen`: a realistic fintech mix against a running pipeline, over HTTP with real
//! signatures and API keys, or (`--direct`) straight onto the ingest topics as the envelopes ingest
//! writes.
//!
//! The mix, for N tenants of M users each (shares of the requests in [`expected_shares`]):
//! - KYC: the vendor (idcheck) approves a user (signed webhook), later upgrades verified users to tier 2;
//! - deposits: `POST /v1/transfers` with an `Idempotency-Key`, executed by the payments provider
//!   (acmepay), which completes each with a signed `deposit.completed` later; some get a pending
//!   `deposit.processing` first, some get it long after their completion (late, out of order);
//! - internal transfers between two users of a tenant; payouts to a payee, some beyond the balance;
//! - FX: rate ticks (the rates publisher's `POST /v1/fx/rates`), quotes and conversions on them;
//! - duplicates: a webhook delivered twice (same delivery id and bytes), a transfer command retried with
//!   the same `Idempotency-Key` and body.
//!
//! The sequence of requests is a function of the seed (and the run tag in every id): [`Mix`] is pure,
//! times are stamped when a request is sent. Follow-ups (callbacks, conversions) are scheduled a fixed
//! number of requests after what they follow ([`Mix::new`]'s `follow_up_after`): about two seconds at
//! the offered rate (flat out, at a rate guessed from `--concurrency`), so the same seed, run tag and
//! options send the same requests in the same order. Requests are paced open loop at `--rate` (a request is started when it is due,
//! whatever is still in flight, up to [`IN_FLIGHT_MAX`]) or, with `--rate 0`, flat out with
//! `--concurrency` in flight. Every answer is counted: 2xx as accepted, 4xx by status and error code,
//! 5xx, timeouts and transport errors by class, never dropped.
//!
//! No personal data: ids are made up; the KYC deliveries carry the vendor's made-up applicant block
//! the edge seals (as the demo's do), and payees are ids and countries only.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use riverbank_ingest::core::commands::{Endpoint, Role};
use riverbank_ingest::core::schemes::sign;
use riverbank_runtime::Config;
use riverbank_schemas::{Envelope, Environment, Topics};
use serde::Serialize;
use serde_json::{json, Value};

use crate::demo::Sender;
use crate::workload::Lcg;

/// The environment the load runs in.
pub const ENV: Environment = Environment::Live;
/// Requests in flight at most in paced mode (past it the pacer waits, and the offered rate says so).
pub const IN_FLIGHT_MAX: usize = 8_192;
/// How long one request may take before it counts as a timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of a run waits for requests still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// One deposit in this many is a probe (its landing is measured by `bench pipeline`), unless
/// [`Mix::set_probe_every`] says otherwise.
pub const PROBE_EVERY_DEPOSITS: u64 = 20;
/// Webhooks and commands remembered for duplicates.
const RECENT_MAX: usize = 512;
/// Sent webhook bodies kept so a redelivery sends the same bytes.
const BODIES_MAX: usize = 100_000;
/// How far behind its completion a late pending callback says it happened, in seconds.
const LATE_PENDING_AGE_S: i64 = 60;
/// The progress bar's refresh interval.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// `riverbank loadgen` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Tenants (each needs idcheck and acmepay webhook secrets for live in the config).
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,
    /// Users per tenant (verified as the run goes; a few deposits each keep them under the default
    /// rules' velocity and tier limits).
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Requests per second (open loop, paced); 0: flat out with --concurrency in flight.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Requests in flight with --rate 0.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tag in every id (default: a fresh one, so runs never collide); the same seed and tag send the
    /// same requests.
    #[arg(long)]
    pub run: Option<String>,
    /// Produce the same events straight onto the ingest topics (envelopes as ingest writes them).
    #[arg(long)]
    pub direct: bool,
    /// Write the summary here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What a request is, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// idcheck `applicantApproved`: a new user at tier 1, or a verified one at tier 2.
    KycApproved,
    /// `POST /v1/transfers`, a deposit executed by acmepay.
    Deposit,
    /// acmepay `deposit.processing` before the completion.
    DepositPending,
    /// acmepay `deposit.completed`.
    DepositCompleted,
    /// acmepay `deposit.processing` delivered long after the completion (out of order, an old event time).
    DepositPendingLate,
    /// `POST /v1/transfers`, internal between two users of a tenant.
    Internal,
    /// `POST /v1/transfers`, a payout within the balance the mix has completed for the user.
    Payout,
    /// A payout beyond it (the ledger rejects it).
    PayoutBeyondBalance,
    /// `POST /v1/fx/rates` by the rates publisher.
    FxRates,
    /// `POST /v1/fx/quotes`.
    FxQuote,
    /// `POST /v1/fx/conversions` on an earlier quote.
    FxConversion,
    /// A webhook delivered again (same delivery id and body).
    WebhookRedelivered,
    /// A transfer command sent again with the same `Idempotency-Key` and body.
    CommandRetried,
}

/// Every kind, in order.
pub const KINDS: [Kind; 13] = [
    Kind::KycApproved,
    Kind::Deposit,
    Kind::DepositPending,
    Kind::DepositCompleted,
    Kind::DepositPendingLate,
    Kind::Internal,
    Kind::Payout,
    Kind::PayoutBeyondBalance,
    Kind::FxRates,
    Kind::FxQuote,
    Kind::FxConversion,
    Kind::WebhookRedelivered,
    Kind::CommandRetried,
];

/// Weights of the root actions (each may schedule follow-ups): KYC, deposit, internal, payout, rates,
/// quote, redelivery, retry.
const ROOT_WEIGHTS: [(Root, u64); 8] = [
    (Root::Kyc, 60),
    (Root::Deposit, 300),
    (Root::Internal, 150),
    (Root::Payout, 120),
    (Root::FxRates, 20),
    (Root::FxQuote, 80),
    (Root::Redelivery, 40),
    (Root::Retry, 40),
];

/// Of ten deposits: completed only (0-4), pending then completed (5-8), completed then a late pending (9).
const DEPOSIT_VARIANTS: u64 = 10;
/// One payout in this many is beyond the balance.
const PAYOUT_BEYOND_EVERY: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Kyc,
    Deposit,
    Internal,
    Payout,
    FxRates,
    FxQuote,
    Redelivery,
    Retry,
}

/// The share of each kind in a long run, from the weights above: every deposit is one command and one
/// completion, four in ten have a pending callback first and one in ten a late one; every quote has a
/// conversion; one payout in four is beyond the balance.
pub fn expected_shares() -> Vec<(Kind, f64)> {
    let w = |r: Root| ROOT_WEIGHTS.iter().find(|(x, _)| *x == r).map_or(0.0, |(_, w)| *w as f64);
    let dep = w(Root::Deposit);
    let per = [
        (Kind::KycApproved, w(Root::Kyc)),
        (Kind::Deposit, dep),
        (Kind::DepositCompleted, dep),
        (Kind::DepositPending, dep * 0.4),
        (Kind::DepositPendingLate, dep * 0.1),
        (Kind::Internal, w(Root::Internal)),
        (Kind::Payout, w(Root::Payout) * 0.75),
        (Kind::PayoutBeyondBalance, w(Root::Payout) * 0.25),
        (Kind::FxRates, w(Root::FxRates)),
        (Kind::FxQuote, w(Root::FxQuote)),
        (Kind::FxConversion, w(Root::FxQuote)),
        (Kind::WebhookRedelivered, w(Root::Redelivery)),
        (Kind::CommandRetried, w(Root::Retry)),
    ];
    let total: f64 = per.iter().map(|(_, x)| x).sum();
    per.iter().map(|(k, x)| (*k, x / total)).collect()
}

/// Which signer a webhook needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The KYC vendor.
    Kyc,
    /// The payments provider.
    Payments,
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// A signed provider delivery. `time_field` is set to the send time less `age_s` (the provider's
    /// clock), unless a redelivery resends the bytes first sent.
    Webhook { provider: Provider, delivery_id: String, body: Value, time_field: &'static str, age_s: i64 },
    /// A tenant API command with the tenant's key of `role`. `as_of` bodies get the send time.
    Command {
        endpoint: Endpoint,
        path_id: Option<String>,
        path: String,
        role: Role,
        user: Option<String>,
        idempotency_key: String,
        body: Value,
    },
}

/// One request of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub seq: u64,
    pub kind: Kind,
    /// Index into the tenants.
    pub tenant: usize,
    pub call: Call,
    /// A transfer whose landing in the stores is measured (1 in [`PROBE_EVERY_DEPOSITS`] deposits by default).
    pub probe: Option<String>,
}

/// Money a completion brings: (tenant, user, minor units of USD).
type Credit = (usize, usize, i64);

/// The mix: a deterministic sequence of requests for (seed, run tag).
pub struct Mix {
    rng: Lcg,
    run: String,
    tenants: usize,
    users: usize,
    follow_up_after: u64,
    seq: u64,
    /// Per tenant: when each verified user was verified (users are verified in order).
    verified_at: Vec<Vec<u64>>,
    /// Per tenant and user: minor units of USD the mix has completed into the user's account (counted
    /// half a follow-up distance after the completion is sent), less what it moved out.
    balances: Vec<Vec<i64>>,
    /// Completions not counted yet: (from seq, tenant, user, minor units).
    credits: VecDeque<(u64, usize, usize, i64)>,
    scheduled: BinaryHeap<Reverse<(u64, u64)>>,
    /// Scheduled requests by order, with the credit a completion brings.
    pending: HashMap<u64, (Request, Option<Credit>)>,
    order: u64,
    recent_webhooks: VecDeque<Request>,
    recent_commands: VecDeque<Request>,
    n: u64,
    deposits: u64,
    probe_every: u64,
}

impl Mix {
    /// `follow_up_after`: requests between a deposit and its completion (and a quote and its
    /// conversion); a late pending callback comes 8 times as far after.
    pub fn new(seed: u64, run: &str, tenants: usize, users: usize, follow_up_after: u64) -> Mix {
        Mix {
            rng: Lcg(seed ^ 0x6c6f_6164_6765_6e00),
            run: run.to_owned(),
            tenants: tenants.max(1),
            users: users.max(2),
            follow_up_after: follow_up_after.max(1),
            seq: 0,
            verified_at: vec![Vec::new(); tenants.max(1)],
            balances: vec![vec![0; users.max(2)]; tenants.max(1)],
            credits: VecDeque::new(),
            scheduled: BinaryHeap::new(),
            pending: HashMap::new(),
            order: 0,
            recent_webhooks: VecDeque::new(),
            recent_commands: VecDeque::new(),
            n: 0,
            deposits: 0,
            probe_every: PROBE_EVERY_DEPOSITS,
        }
    }

    /// The follow-up distance in requests for `rate` requests/s: about two seconds, at least 100.
    pub fn follow_up_for_rate(rate: u64) -> u64 {
        (rate * 2).max(100)
    }

    /// Follow-ups scheduled from now on come this many requests after what they follow.
    pub fn set_follow_up_after(&mut self, n: u64) {
        self.follow_up_after = n.max(1);
    }

    /// One deposit in `n` is a probe from now on.
    pub fn set_probe_every(&mut self, n: u64) {
        self.probe_every = n.max(1);
    }

    pub fn user_id(&self, u: usize) -> String {
        format!("u-{}-{u:05}", self.run)
    }

    pub fn account(&self, u: usize) -> String {
        format!("acct-{}-{u:05}", self.run)
    }

    /// The next request.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Request {
        let seq = self.seq;
        self.seq += 1;
        while let Some(&(from, t, u, minor)) = self.credits.front() {
            if from > seq {
                break;
            }
            self.credits.pop_front();
            self.balances[t][u] = self.balances[t][u].saturating_add(minor);
        }
        let mut r = match self.scheduled.peek() {
            Some(Reverse((due, order))) if *due <= seq => {
                let order = *order;
                self.scheduled.pop();
                match self.pending.remove(&order) {
                    Some((r, credit)) => {
                        if let Some((t, u, minor)) = credit {
                            self.credits.push_back((seq + self.follow_up_after / 2, t, u, minor));
                        }
                        r
                    }
                    None => self.root(seq),
                }
            }
            _ => self.root(seq),
        };
        r.seq = seq;
        match (&r.call, r.kind) {
            (Call::Webhook { .. }, k) if k != Kind::WebhookRedelivered => {
                push_bounded(&mut self.recent_webhooks, r.clone())
            }
            (Call::Command { endpoint: Endpoint::CreateTransfer, .. }, k) if k != Kind::CommandRetried => {
                push_bounded(&mut self.recent_commands, r.clone())
            }
            _ => {}
        }
        r
    }

    fn schedule(&mut self, after: u64, r: Request) {
        self.schedule_credit(after, r, None);
    }

    fn schedule_credit(&mut self, after: u64, r: Request, credit: Option<Credit>) {
        let order = self.order;
        self.order += 1;
        self.scheduled.push(Reverse((self.seq + after, order)));
        self.pending.insert(order, (r, credit));
    }

    /// An eligible user of tenant `t` holding at least `min` minor units (a few tries), if any.
    fn funded(&mut self, t: usize, eligible: usize, min: i64) -> Option<usize> {
        (0..8).map(|_| self.rng.below(eligible as u64) as usize).find(|&u| self.balances[t][u] >= min)
    }

    /// Users of tenant `t` verified at least a follow-up distance ago (their approval has landed).
    fn eligible(&self, t: usize, seq: u64) -> usize {
        self.verified_at[t].partition_point(|&at| at + self.follow_up_after <= seq)
    }

    fn root(&mut self, seq: u64) -> Request {
        let total: u64 = ROOT_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.below(total);
        let mut root = Root::Deposit;
        for (r, w) in ROOT_WEIGHTS {
            if pick < w {
                root = r;
                break;
            }
            pick -= w;
        }
        let t = self.rng.below(self.tenants as u64) as usize;
        self.n += 1;
        let eligible = self.eligible(t, seq);
        // What needs verified users gets a KYC approval first.
        let needs = match root {
            Root::Internal => 2,
            Root::Deposit | Root::Payout | Root::FxQuote => 1,
            _ => 0,
        };
        if eligible < needs {
            return self.kyc(t, seq);
        }
        match root {
            Root::Kyc => self.kyc(t, seq),
            Root::Deposit => self.deposit(t, eligible),
            Root::Internal => self.internal(t, eligible),
            Root::Payout => self.payout(t, eligible),
            Root::FxRates => self.rates(t),
            Root::FxQuote => self.quote(t, eligible),
            Root::Redelivery | Root::Retry => {
                let from =
                    if root == Root::Redelivery { &self.recent_webhooks } else { &self.recent_commands };
                if from.is_empty() {
                    return self.kyc(t, seq);
                }
                let i = self.rng.below(from.len() as u64) as usize;
                let mut again = from[i].clone();
                again.kind =
                    if root == Root::Redelivery { Kind::WebhookRedelivered } else { Kind::CommandRetried };
                again.probe = None;
                again
            }
        }
    }

    fn kyc(&mut self, t: usize, seq: u64) -> Request {
        let n = self.n;
        let (u, level) = if self.verified_at[t].len() < self.users {
            self.verified_at[t].push(seq);
            (self.verified_at[t].len() - 1, "basic-kyc-level")
        } else {
            (self.rng.below(self.users as u64) as usize, "enhanced-kyc-level")
        };
        let case = format!("case-{}-{t}-{n}", self.run);
        let body = json!({
            "applicantId": case, "inspectionId": format!("{case}-i"), "correlationId": format!("req-{case}"),
            "levelName": level, "externalUserId": self.user_id(u), "type": "applicantApproved",
            "reviewStatus": "completed", "createdAt": "", "reviewResult": {"reviewAnswer": "GREEN"},
            // Made up, as the vendor sends it: sealed at the edge (idcheck's [sensitive]).
            "info": {"firstName": "Load", "lastName": "Test", "dob": "1990-01-01", "tin": "000-00-0000",
                     "phone": "+1 555 0100", "addresses": [{"street": "1 Test Street", "town": "Springfield"}],
                     "idDocs": [{"idDocType": "PASSPORT", "number": format!("LT{n:07}")}]}
        });
        let call = Call::Webhook {
            provider: Provider::Kyc,
            delivery_id: format!("req-{case}"),
            body,
            time_field: "createdAt",
            age_s: 0,
        };
        Request { seq, kind: Kind::KycApproved, tenant: t, call, probe: None }
    }

    fn transfer(&self, kind: Kind, t: usize, id: &str, body: Value) -> Request {
        let call = Call::Command {
            endpoint: Endpoint::CreateTransfer,
            path_id: None,
            path: "/v1/transfers".to_owned(),
            role: Role::Admin,
            user: None,
            idempotency_key: format!("idem-{id}"),
            body,
        };
        Request { seq: 0, kind, tenant: t, call, probe: None }
    }

    fn callback(
        &self,
        kind: Kind,
        t: usize,
        event: &str,
        reference: &str,
        amount: &str,
        account: &str,
    ) -> Request {
        let body = json!({
            "type": event, "api_version": "2024-06-01", "created_at": "",
            "data": {"object": "deposit", "id": reference, "amount": {"value": amount, "currency": "USD"},
                     "destination_account": account}
        });
        let age_s = if kind == Kind::DepositPendingLate { LATE_PENDING_AGE_S } else { 0 };
        let delivery_id = format!("wh-{reference}-{}", event.trim_start_matches("deposit."));
        let call = Call::Webhook {
            provider: Provider::Payments,
            delivery_id,
            body,
            time_field: "created_at",
            age_s,
        };
        Request { seq: 0, kind, tenant: t, call, probe: None }
    }

    fn deposit(&mut self, t: usize, eligible: usize) -> Request {
        let u = self.rng.below(eligible as u64) as usize;
        let minor = 1_000 + self.rng.below(49_000) as i64;
        let amount = decimal(minor);
        let id = format!("dep-{}-{}", self.run, self.n);
        let reference = format!("dep_{}_{}", self.run, self.n);
        let account = self.account(u);
        let body = json!({
            "transfer_id": id, "kind": "deposit", "amount": amount, "currency": "USD",
            "destination_account": account, "user_id": self.user_id(u),
            "provider": "acmepay", "provider_reference": reference,
        });
        let mut r = self.transfer(Kind::Deposit, t, &id, body);
        if self.deposits.is_multiple_of(self.probe_every) {
            r.probe = Some(id);
        }
        self.deposits += 1;
        let d = self.follow_up_after;
        let completed =
            self.callback(Kind::DepositCompleted, t, "deposit.completed", &reference, &amount, &account);
        let credit = Some((t, u, minor));
        match self.rng.below(DEPOSIT_VARIANTS) {
            0..=4 => self.schedule_credit(d, completed, credit),
            5..=8 => {
                let pending = self.callback(
                    Kind::DepositPending,
                    t,
                    "deposit.processing",
                    &reference,
                    &amount,
                    &account,
                );
                self.schedule(d / 2, pending);
                self.schedule_credit(d, completed, credit);
            }
            _ => {
                let late = self.callback(
                    Kind::DepositPendingLate,
                    t,
                    "deposit.processing",
                    &reference,
                    &amount,
                    &account,
                );
                self.schedule_credit(d, completed, credit);
                self.schedule(d * 8, late);
            }
        }
        r
    }

    fn internal(&mut self, t: usize, eligible: usize) -> Request {
        // From a user with money (else a deposit first), to another.
        let Some(a) = self.funded(t, eligible, 400) else { return self.deposit(t, eligible) };
        let b = (a + 1 + self.rng.below(eligible as u64 - 1) as usize) % eligible;
        let minor = 100 + self.rng.below((self.balances[t][a] / 4).clamp(1, 2_000) as u64) as i64;
        let id = format!("int-{}-{}", self.run, self.n);
        let body = json!({
            "transfer_id": id, "kind": "internal", "amount": decimal(minor), "currency": "USD",
            "source_account": self.account(a), "destination_account": self.account(b), "user_id": self.user_id(a),
        });
        self.balances[t][a] -= minor;
        self.balances[t][b] += minor;
        self.transfer(Kind::Internal, t, &id, body)
    }

    fn payout(&mut self, t: usize, eligible: usize) -> Request {
        let beyond = self.rng.below(PAYOUT_BEYOND_EVERY) == 0;
        let (kind, u, minor) = if beyond {
            // Beyond what was paid in, below the tier's single-transfer limit.
            let u = self.rng.below(eligible as u64) as usize;
            (Kind::PayoutBeyondBalance, u, self.balances[t][u].max(0) + 50_000)
        } else {
            // A quarter of a funded user's balance (else a deposit first).
            let Some(u) = self.funded(t, eligible, 400) else { return self.deposit(t, eligible) };
            (Kind::Payout, u, (self.balances[t][u] / 4).min(20_000))
        };
        if !beyond {
            self.balances[t][u] -= minor;
        }
        let id = format!("po-{}-{}", self.run, self.n);
        let body = json!({
            "transfer_id": id, "kind": "payout", "amount": decimal(minor), "currency": "USD",
            "source_account": self.account(u), "user_id": self.user_id(u),
            "counterparty": {"id": format!("payee-{}-{u}", self.run), "country": "US"},
        });
        self.transfer(kind, t, &id, body)
    }

    fn rates(&mut self, t: usize) -> Request {
        // Mid rates moving a few basis points per tick.
        let eur = 10_800 + self.rng.below(100);
        let inr = 832_000 + self.rng.below(1_000);
        let gbp = 12_650 + self.rng.below(100);
        let four = |x: u64| format!("{}.{:04}", x / 10_000, x % 10_000);
        let body = json!({"as_of": "", "rates": [
            {"base": "EUR", "quote": "USD", "rate": four(eur)},
            {"base": "USD", "quote": "INR", "rate": four(inr)},
            {"base": "GBP", "quote": "USD", "rate": four(gbp)},
        ]});
        let call = Call::Command {
            endpoint: Endpoint::FxRates,
            path_id: None,
            path: "/v1/fx/rates".to_owned(),
            role: Role::RatesPublisher,
            user: None,
            idempotency_key: format!("rates-{}-{}", self.run, self.n),
            body,
        };
        Request { seq: 0, kind: Kind::FxRates, tenant: t, call, probe: None }
    }

    fn quote(&mut self, t: usize, eligible: usize) -> Request {
        let minor = 1_000 + self.rng.below(4_000) as i64;
        // Sold from a funded user's account (else a deposit first).
        let Some(u) = self.funded(t, eligible, minor) else { return self.deposit(t, eligible) };
        let quote = format!("q-{}-{}", self.run, self.n);
        let command = |endpoint, path: &str, key: String, body| Call::Command {
            endpoint,
            path_id: None,
            path: path.to_owned(),
            role: Role::Admin,
            user: Some("treasurer-1".to_owned()),
            idempotency_key: key,
            body,
        };
        let body = json!({"quote_id": quote, "sell_currency": "USD", "buy_currency": "EUR", "sell_amount": decimal(minor)});
        let q = command(Endpoint::FxQuote, "/v1/fx/quotes", format!("idem-{quote}"), body);
        let conversion = format!("c-{}-{}", self.run, self.n);
        let body = json!({"conversion_id": conversion, "quote_id": quote, "source_account": self.account(u)});
        let c = command(Endpoint::FxConversion, "/v1/fx/conversions", format!("idem-{conversion}"), body);
        self.balances[t][u] -= minor;
        let d = self.follow_up_after;
        self.schedule(d, Request { seq: 0, kind: Kind::FxConversion, tenant: t, call: c, probe: None });
        Request { seq: 0, kind: Kind::FxQuote, tenant: t, call: q, probe: None }
    }
}

fn push_bounded(q: &mut VecDeque<Request>, r: Request) {
    if q.len() >= RECENT_MAX {
        q.pop_front();
    }
    q.push_back(r);
}

/// Minor units of a 2-decimal currency as the API's decimal text.
fn decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.unsigned_abs() / 100, minor.unsigned_abs() % 100)
}

/// One tenant's credentials: its webhook signers and API keys.
pub struct TenantKeys {
    pub tenant: String,
    pub kyc: Sender,
    pub payments: Sender,
    pub admin_token: String,
    pub rates_token: String,
}

/// Where the load goes: ingest over HTTP, or the topics.
pub struct Target {
    pub ingest_url: String,
    pub tenants: Vec<TenantKeys>,
    client: reqwest::Client,
    direct: Option<Direct>,
    /// Webhook bytes as first sent, by delivery id (redeliveries resend them).
    bodies: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

/// What `--direct` needs to write as ingest writes.
struct Direct {
    producer: rdkafka::producer::FutureProducer,
    keys: riverbank_runtime::keystore::KeyStore,
    providers: std::collections::BTreeMap<String, riverbank_ingest::core::provider::ProviderDef>,
    topics: Topics,
    name_key: Vec<u8>,
    produce_timeout: Duration,
}

/// The tenants of `cfg` with live idcheck and acmepay secrets, at most `n`.
pub fn configured_tenants(cfg: &Config, n: usize) -> anyhow::Result<Vec<String>> {
    let senders = crate::demo::senders(cfg)?;
    let mut out: Vec<String> = Vec::new();
    for s in &senders {
        let has = |p: &str| {
            senders.iter().any(|x| x.provider == p && x.tenant_id == s.tenant_id && x.environment == ENV)
        };
        if has("idcheck") && has("acmepay") && !out.contains(&s.tenant_id) {
            out.push(s.tenant_id.clone());
        }
    }
    out.truncate(n);
    Ok(out)
}

impl Target {
    /// Signers from the config, and an admin and a rates-publisher key per tenant, created in the
    /// config's Postgres (as the demo creates its keys).
    pub async fn new(cfg: &Config, tenants: &[String], direct: bool) -> anyhow::Result<Target> {
        let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
        riverbank_ingest::store::migrate(&pool).await?;
        let mut keys = Vec::new();
        for t in tenants {
            let (_, admin_token) =
                riverbank_runtime::apikeys::create_key(&pool, t, ENV, Role::Admin, "loadgen").await?;
            let (_, rates_token) =
                riverbank_runtime::apikeys::create_key(&pool, t, ENV, Role::RatesPublisher, "loadgen")
                    .await?;
            keys.push(TenantKeys {
                tenant: t.clone(),
                kyc: crate::money_loop::sender(cfg, "idcheck", t, ENV)?,
                payments: crate::money_loop::sender(cfg, "acmepay", t, ENV)?,
                admin_token,
                rates_token,
            });
        }
        let direct = if direct {
            Some(Direct {
                producer: riverbank_runtime::kafka::producer(&cfg.kafka)?,
                keys: riverbank_runtime::keystore::from_config(pool, &cfg.keys).await?,
                providers: riverbank_ingest::server::load_providers(&cfg.ingest.providers_dir)?,
                topics: riverbank_runtime::kafka::topics(&cfg.kafka),
                name_key: cfg.risk.name_key.expose().as_bytes().to_vec(),
                produce_timeout: Duration::from_millis(cfg.ingest.produce_timeout_ms),
            })
        } else {
            pool.close().await;
            None
        };
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(IN_FLIGHT_MAX)
            .build()?;
        Ok(Target {
            ingest_url: format!("http://{}", cfg.ingest.listen_addr),
            tenants: keys,
            client,
            direct,
            bodies: Mutex::new(HashMap::new()),
        })
    }

    /// The bytes of a request, with the send time stamped (a redelivery resends the first bytes).
    fn body(&self, r: &Request) -> Arc<Vec<u8>> {
        let now = chrono::Utc::now();
        let stamp = |age_s: i64| {
            (now - chrono::Duration::seconds(age_s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        match &r.call {
            Call::Webhook { delivery_id, body, time_field, age_s, .. } => {
                let mut bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(b) = bodies.get(delivery_id) {
                    return b.clone();
                }
                let mut body = body.clone();
                body[*time_field] = Value::String(stamp(*age_s));
                let bytes = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
                if bodies.len() >= BODIES_MAX {
                    bodies.clear();
                }
                bodies.insert(delivery_id.clone(), bytes.clone());
                bytes
            }
            Call::Command { body, .. } => {
                let mut body = body.clone();
                if body.get("as_of").is_some() {
                    body["as_of"] = Value::String(stamp(0));
                }
                Arc::new(serde_json::to_vec(&body).unwrap_or_default())
            }
        }
    }

    /// Send one request; its answer's class.
    pub async fn send(&self, r: &Request) -> Answer {
        let bytes = self.body(r);
        match &self.direct {
            Some(d) => self.produce(d, r, &bytes).await,
            None => self.post(r, bytes).await,
        }
    }

    async fn post(&self, r: &Request, bytes: Arc<Vec<u8>>) -> Answer {
        let Some(k) = self.tenants.get(r.tenant) else { return Answer::Failed("no such tenant".to_owned()) };
        let req = match &r.call {
            Call::Webhook { provider, delivery_id, .. } => {
                let s = if *provider == Provider::Kyc { &k.kyc } else { &k.payments };
                let url = format!("{}/v1/webhooks/{}/{}", self.ingest_url, s.provider, s.tenant_id);
                let mut req = self.client.post(url);
                let ts = chrono::Utc::now().timestamp();
                for (h, v) in sign::headers(&s.scheme, &s.signer, delivery_id, ts, &bytes) {
                    req = req.header(h, v);
                }
                req
            }
            Call::Command { path, role, user, idempotency_key, .. } => {
                let token = if *role == Role::RatesPublisher { &k.rates_token } else { &k.admin_token };
                let mut req = self
                    .client
                    .post(format!("{}{path}", self.ingest_url))
                    .bearer_auth(token)
                    .header("idempotency-key", idempotency_key);
                if let Some(u) = user {
                    req = req.header("x-user-id", u);
                }
                req
            }
        };
        let sent = req
            .header("x-environment", ENV.as_str())
            .header("content-type", "application/json")
            .body(bytes.as_ref().clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Answer::Accepted { replayed: resp.headers().contains_key("idempotent-replayed") };
                }
                let code = resp
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                Answer::Refused { status, code }
            }
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) if e.is_connect() => Answer::Failed("connect".to_owned()),
            Err(e) => Answer::Failed(format!("transport: {}", short(&e.to_string()))),
        }
    }

    /// `--direct`: the event ingest would produce for this request, produced (its broker
    /// acknowledgement is the acceptance).
    async fn produce(&self, d: &Direct, r: &Request, bytes: &[u8]) -> Answer {
        let Some(k) = self.tenants.get(r.tenant) else { return Answer::Failed("no such tenant".to_owned()) };
        let emit = match &r.call {
            Call::Webhook { provider, .. } => {
                let s = if *provider == Provider::Kyc { &k.kyc } else { &k.payments };
                match self.webhook_emit(d, s, bytes).await {
                    Ok(e) => e,
                    Err(e) => return Answer::Failed(e),
                }
            }
            Call::Command { endpoint, path_id, user, idempotency_key, path, .. } => {
                let actor = user.as_ref().map_or_else(|| "key:loadgen".to_owned(), |u| format!("user:{u}"));
                let cmd = match riverbank_ingest::core::commands::decode(
                    *endpoint,
                    path_id.as_deref(),
                    bytes,
                    &actor,
                    &d.name_key,
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        return Answer::Refused { status: 422, code: format!("invalid_field {}", e.field) }
                    }
                };
                let hash = riverbank_ingest::commands::request_sha256("POST", path, bytes);
                let event_id = riverbank_ingest::commands::event_id(ENV, &k.tenant, idempotency_key, &hash);
                let now = chrono::Utc::now();
                let topic = command_topic(&d.topics, cmd.stream);
                let envelope = Envelope {
                    event_id,
                    event_type: cmd.event_type.to_owned(),
                    schema_version: 1,
                    tenant_id: k.tenant.clone(),
                    environment: ENV,
                    occurred_at: now,
                    ingested_at: now,
                    idempotency_key: Some(idempotency_key.clone()),
                    source: "api".to_owned(),
                    user_id: user.clone(),
                    customer_id: None,
                    session_id: None,
                    trace_id: None,
                    payload: cmd.payload,
                };
                let payload = match serde_json::to_vec(&envelope) {
                    Ok(p) => p,
                    Err(e) => return Answer::Failed(format!("encode: {e}")),
                };
                riverbank_runtime::produce::Emit { topic, key: k.tenant.clone(), event_id, payload }
            }
        };
        match riverbank_runtime::produce::produce_all(
            &d.producer,
            std::slice::from_ref(&emit),
            d.produce_timeout,
        )
        .await
        {
            Ok(()) => Answer::Accepted { replayed: false },
            Err(e) => Answer::Failed(format!("produce: {}", short(&e))),
        }
    }

    /// A delivery mapped and its personal data sealed as ingest does, under the id ingest gives it.
    async fn webhook_emit(
        &self,
        d: &Direct,
        s: &Sender,
        bytes: &[u8],
    ) -> Result<riverbank_runtime::produce::Emit, String> {
        use riverbank_ingest::core::sensitive::Pass;
        use riverbank_ingest::sealing::{self, Sealer};
        let def = d.providers.get(&s.provider).ok_or_else(|| format!("no provider {}", s.provider))?;
        let ts = chrono::Utc::now().timestamp();
        let id = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v["correlationId"].as_str().or(v["data"]["id"].as_str()).map(str::to_owned))
            .unwrap_or_default();
        let headers: std::collections::BTreeMap<String, String> =
            sign::headers(&s.scheme, &s.signer, &id, ts, bytes)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
        let mapping = def.map(&headers, bytes);
        let event_id =
            riverbank_ingest::webhooks::event_id(ENV, &s.tenant_id, &def.name, &mapping.dedupe_key);
        let plan = sealing::plan(def, &mapping, bytes, Pass::Edge);
        let sealer =
            Sealer::prepare(&d.keys, &s.tenant_id, ENV, plan).await.map_err(|e| format!("key store: {e}"))?;
        let (mapping, stored) =
            sealer.seal(&s.tenant_id, ENV, event_id, &mapping, bytes).map_err(|e| format!("seal: {e}"))?;
        let now = chrono::Utc::now();
        riverbank_ingest::webhooks::emit_redriven(
            event_id,
            &d.topics,
            def,
            &s.tenant_id,
            ENV,
            &mapping,
            headers,
            &stored,
            now,
        )
        .map(|(e, _)| e)
        .map_err(|e| format!("encode: {e}"))
    }
}

/// The topic ingest produces a command of `stream` to.
fn command_topic(t: &Topics, stream: riverbank_ingest::core::commands::Stream) -> String {
    use riverbank_ingest::core::commands::Stream;
    match stream {
        Stream::Transfers => t.transfer_inputs(ENV),
        Stream::Fx => t.fx_commands(ENV),
        Stream::FxRates => t.fx_rates(ENV),
        Stream::Billing => t.billing_commands(ENV),
        Stream::Kyc => t.kyc_commands(ENV),
        Stream::Risk => t.risk_commands(ENV),
        Stream::Audit => t.audit_actions(ENV),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// How one request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx (or, direct, the broker's acknowledgement); `replayed`: an idempotent replay.
    Accepted {
        replayed: bool,
    },
    /// 4xx or 5xx, with the error code the body names.
    Refused {
        status: u16,
        code: String,
    },
    Timeout,
    /// No answer: connection refused, reset, or (direct) a produce or key-store failure.
    Failed(String),
}

impl Answer {
    /// The error class it counts under (`None` when accepted).
    pub fn class(&self) -> Option<String> {
        match self {
            Answer::Accepted { .. } => None,
            Answer::Refused { status, code } if *status >= 500 => Some(format!("5xx {status} {code}")),
            Answer::Refused { status, code } => Some(format!("4xx {status} {code}")),
            Answer::Timeout => Some("timeout".to_owned()),
            Answer::Failed(why) => Some(format!("failed {why}")),
        }
    }
}

/// A probe accepted: the transfer, its tenant, when it was accepted.
#[derive(Debug, Clone)]
pub struct Probe {
    pub tenant: String,
    pub transfer_id: String,
    pub accepted_at: Instant,
}

/// Counters shared by the senders, the progress bar and the summary.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Default)]
struct Detail {
    kinds: BTreeMap<Kind, KindCount>,
    errors: BTreeMap<String, u64>,
    replayed: u64,
    latencies_ms: Vec<f64>,
}

/// Requests of one kind: sent, accepted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KindCount {
    pub sent: u64,
    pub accepted: u64,
}

/// How to drive: requests/s (0: flat out), for how long, in flight with rate 0.
#[derive(Debug, Clone, Copy)]
pub struct Drive {
    pub rate: u64,
    pub seconds: u64,
    pub concurrency: usize,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub rate_target_per_s: u64,
    pub seconds: f64,
    pub sent: u64,
    pub offered_per_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Accepted answers that were idempotent replays (retried commands).
    pub replayed: u64,
    pub errors: u64,
    pub errors_by_class: BTreeMap<String, u64>,
    pub kinds: BTreeMap<Kind, KindCount>,
    pub answer_ms_p50: f64,
    pub answer_ms_p99: f64,
    pub answer_ms_max: f64,
}

/// Send the mix's next requests for `d.seconds`; probes accepted go to `probes`.
pub async fn drive(
    target: Arc<Target>,
    mix: &mut Mix,
    d: Drive,
    probes: Option<tokio::sync::mpsc::UnboundedSender<Probe>>,
) -> Summary {
    let stats = Arc::new(Stats::default());
    let permits = if d.rate == 0 { d.concurrency.max(1) } else { IN_FLIGHT_MAX };
    let sem = Arc::new(tokio::sync::Semaphore::new(permits));
    let bar = progress_bar(d);
    let ticker = tokio::spawn(tick(bar.clone(), stats.clone()));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(d.seconds);
    let mut started: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        let due = if d.rate == 0 { u64::MAX } else { (t0.elapsed().as_secs_f64() * d.rate as f64) as u64 };
        while started < due && Instant::now() < end {
            let Ok(permit) = sem.clone().acquire_owned().await else { break };
            let r = mix.next();
            started += 1;
            let (target, stats, probes) = (target.clone(), stats.clone(), probes.clone());
            stats.sent.fetch_add(1, Ordering::Relaxed);
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let at = Instant::now();
                let answer = target.send(&r).await;
                let ms = at.elapsed().as_secs_f64() * 1_000.0;
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let mut det = stats.detail.lock().unwrap_or_else(|p| p.into_inner());
                let k = det.kinds.entry(r.kind).or_default();
                k.sent += 1;
                match answer.class() {
                    None => {
                        k.accepted += 1;
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        det.replayed += u64::from(answer == Answer::Accepted { replayed: true });
                        det.latencies_ms.push(ms);
                        if let (Some(id), Some(p)) = (r.probe, probes) {
                            let tenant =
                                target.tenants.get(r.tenant).map(|k| k.tenant.clone()).unwrap_or_default();
                            let _ = p.send(Probe { tenant, transfer_id: id, accepted_at: Instant::now() });
                        }
                    }
                    Some(class) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        *det.errors.entry(class).or_default() += 1;
                    }
                }
                drop(permit);
            });
            // Reap finished tasks as we go (the set would otherwise keep every result).
            while tasks.try_join_next().is_some() {}
        }
        if d.rate > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} }).await;
    // Requests still unanswered after the drain count as timeouts.
    let unanswered = tasks.len() as u64;
    tasks.abort_all();
    ticker.abort();
    bar.finish_and_clear();
    let mut det = stats.detail.lock().unwrap_or_else(|p| p.into_inner());
    if unanswered > 0 {
        *det.errors.entry("timeout".to_owned()).or_default() += unanswered;
    }
    det.latencies_ms.sort_by(f64::total_cmp);
    let accepted = stats.accepted.load(Ordering::Relaxed);
    let sent = stats.sent.load(Ordering::Relaxed);
    Summary {
        mode: if target.direct.is_some() { "direct" } else { "http" },
        rate_target_per_s: d.rate,
        seconds,
        sent,
        offered_per_s: sent as f64 / seconds,
        accepted,
        accepted_per_s: accepted as f64 / seconds,
        replayed: det.replayed,
        errors: det.errors.values().sum(),
        errors_by_class: det.errors.clone(),
        kinds: det.kinds.clone(),
        answer_ms_p50: crate::bench::percentile(&det.latencies_ms, 0.5),
        answer_ms_p99: crate::bench::percentile(&det.latencies_ms, 0.99),
        answer_ms_max: det.latencies_ms.last().copied().unwrap_or(f64::NAN),
    }
}

fn progress_bar(d: Drive) -> indicatif::ProgressBar {
    if !d.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(d.seconds.max(1));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:24}] {pos}/{len} s  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Refresh the bar: rates over the last interval, errors and in flight now.
async fn tick(bar: indicatif::ProgressBar, stats: Arc<Stats>) {
    let (t0, mut last, mut sent0, mut acc0) = (Instant::now(), Instant::now(), 0u64, 0u64);
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let (sent, acc) = (stats.sent.load(Ordering::Relaxed), stats.accepted.load(Ordering::Relaxed));
        let dt = last.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(t0.elapsed().as_secs());
        bar.set_message(format!(
            "sent {:>6.0}/s  accepted {:>6.0}/s  errors {}  in flight {}",
            (sent - sent0) as f64 / dt,
            (acc - acc0) as f64 / dt,
            stats.errors.load(Ordering::Relaxed),
            stats.in_flight.load(Ordering::Relaxed)
        ));
        (last, sent0, acc0) = (Instant::now(), sent, acc);
    }
}

/// Print a summary.
pub fn print_summary(s: &Summary) {
    println!(
        "{} mode: {} requests in {:.1} s: offered {:.0}/s (target {}), accepted {} ({:.0}/s; {} idempotent replays), errors {}",
        s.mode,
        s.sent,
        s.seconds,
        s.offered_per_s,
        if s.rate_target_per_s == 0 { "flat out".to_owned() } else { format!("{}/s", s.rate_target_per_s) },
        s.accepted,
        s.accepted_per_s,
        s.replayed,
        s.errors
    );
    println!(
        "answer time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.answer_ms_p50, s.answer_ms_p99, s.answer_ms_max
    );
    println!("{:<24} {:>9} {:>9}", "kind", "sent", "accepted");
    for (k, c) in &s.kinds {
        let name =
            serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        println!("{name:<24} {:>9} {:>9}", c.sent, c.accepted);
    }
    for (class, n) in &s.errors_by_class {
        println!("error {class}: {n}");
    }
}

/// `riverbank loadgen`.
pub async fn run(cfg: &Config, o: &Options) -> anyhow::Result<()> {
    let tenants = configured_tenants(cfg, o.tenants)?;
    anyhow::ensure!(
        !tenants.is_empty(),
        "no tenant has both idcheck and acmepay webhook secrets for live in the config: add [[ingest.webhooks]] entries (see deploy/local/riverbank.toml)"
    );
    if tenants.len() < o.tenants {
        println!(
            "note: the config has idcheck and acmepay secrets for {} of the {} tenants asked ({}); the load goes to those (add [[ingest.webhooks]] entries per tenant for more)",
            tenants.len(),
            o.tenants,
            tenants.join(", ")
        );
    }
    if !o.direct {
        let http = reqwest::Client::new();
        crate::demo::wait_healthy(
            &http,
            &format!("http://{}", cfg.ingest.listen_addr),
            Duration::from_secs(30),
        )
        .await
        .context("ingest is not answering: start the pipeline (riverbank run)")?;
    }
    let run = o.run.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let target = Arc::new(Target::new(cfg, &tenants, o.direct).await?);
    // Flat out, a guess of the rate from the requests in flight (a few hundred ms per answer); kept
    // fixed so the sequence stays a function of the options.
    let rate_for_follow_ups = if o.rate == 0 { o.concurrency as u64 * 5 } else { o.rate };
    let mut mix =
        Mix::new(o.seed, &run, tenants.len(), o.users, Mix::follow_up_for_rate(rate_for_follow_ups));
    println!(
        "loadgen: run {run}, seed {}, {} tenants ({}) x {} users, {}, {} s, {}",
        o.seed,
        tenants.len(),
        tenants.join(", "),
        o.users,
        if o.rate == 0 {
            format!("flat out with {} in flight", o.concurrency)
        } else {
            format!("{}/s", o.rate)
        },
        o.seconds,
        if o.direct { "straight onto the ingest topics" } else { "over HTTP to ingest" }
    );
    let d = Drive { rate: o.rate, seconds: o.seconds, concurrency: o.concurrency, progress: true };
    let summary = drive(target, &mut mix, d, None).await;
    print_summary(&summary);
    if let Some(path) = &o.json {
        let report = json!({
            "command": "riverbank loadgen",
            "machine": crate::bench::machine(),
            "run": run, "seed": o.seed, "tenants": tenants, "users_per_tenant": o.users,
            "summary": summary,
        });
        crate::bench::write_report(path, &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn take(seed: u64, n: usize) -> Vec<Request> {
        let mut m = Mix::new(seed, "t1", 4, 50, 50);
        (0..n).map(|_| m.next()).collect()
    }

    #[test]
    fn the_same_seed_sends_the_same_requests_and_another_seed_does_not() {
        assert_eq!(take(7, 3_000), take(7, 3_000));
        assert_ne!(take(7, 3_000), take(8, 3_000));
    }

    #[test]
    fn every_kind_is_present_in_its_expected_share() {
        let n = 40_000;
        let reqs = take(3, n);
        let mut counts: HashMap<Kind, usize> = HashMap::new();
        for r in &reqs {
            *counts.entry(r.kind).or_default() += 1;
        }
        for (kind, share) in expected_shares() {
            let got = counts.get(&kind).copied().unwrap_or(0) as f64 / n as f64;
            assert!(
                (got - share).abs() <= share * 0.2,
                "{kind:?}: {got:.4} of the requests, expected {share:.4} ± 20%"
            );
        }
        assert_eq!(counts.len(), KINDS.len(), "every kind appears");
        let probes = reqs.iter().filter(|r| r.probe.is_some()).count();
        let deposits = counts[&Kind::Deposit];
        assert_eq!(probes, deposits.div_ceil(PROBE_EVERY_DEPOSITS as usize), "one deposit in 20 is a probe");
    }

    #[test]
    fn duplicates_repeat_the_delivery_id_or_idempotency_key_and_body_of_an_earlier_request() {
        let reqs = take(5, 20_000);
        let mut webhooks: HashMap<String, Value> = HashMap::new();
        let mut commands: HashMap<String, Value> = HashMap::new();
        let (mut redelivered, mut retried) = (0, 0);
        for r in &reqs {
            match (&r.call, r.kind) {
                (Call::Webhook { delivery_id, body, .. }, Kind::WebhookRedelivered) => {
                    assert_eq!(webhooks.get(delivery_id), Some(body), "redelivery of an unseen delivery");
                    redelivered += 1;
                }
                (Call::Webhook { delivery_id, body, .. }, _) => {
                    assert!(
                        webhooks.insert(delivery_id.clone(), body.clone()).is_none(),
                        "a new delivery id repeats"
                    );
                }
                (Call::Command { idempotency_key, body, .. }, Kind::CommandRetried) => {
                    assert_eq!(commands.get(idempotency_key), Some(body), "retry of an unseen command");
                    retried += 1;
                }
                (Call::Command { idempotency_key, body, .. }, _) => {
                    assert!(
                        commands.insert(idempotency_key.clone(), body.clone()).is_none(),
                        "a new key repeats"
                    );
                }
            }
        }
        assert!(redelivered > 100 && retried > 100, "{redelivered} redeliveries, {retried} retries");
    }

    #[test]
    fn callbacks_follow_their_deposit_and_late_pending_ones_come_after_the_completion() {
        let reqs = take(9, 20_000);
        let mut deposit_at: HashMap<String, u64> = HashMap::new();
        let mut completed_at: HashMap<String, u64> = HashMap::new();
        let mut late = 0;
        let reference = |b: &Value| b["data"]["id"].as_str().unwrap_or_default().to_owned();
        for r in &reqs {
            match (&r.call, r.kind) {
                (Call::Command { body, .. }, Kind::Deposit) => {
                    deposit_at
                        .insert(body["provider_reference"].as_str().unwrap_or_default().to_owned(), r.seq);
                }
                (Call::Webhook { body, .. }, Kind::DepositCompleted) => {
                    let d = deposit_at[&reference(body)];
                    assert!(r.seq >= d + 50, "completion {} only {} after its deposit", r.seq, r.seq - d);
                    completed_at.insert(reference(body), r.seq);
                }
                (Call::Webhook { body, age_s, .. }, Kind::DepositPending) => {
                    assert!(r.seq > deposit_at[&reference(body)] && *age_s == 0);
                    assert!(!completed_at.contains_key(&reference(body)), "pending after its completion");
                }
                (Call::Webhook { body, age_s, .. }, Kind::DepositPendingLate) => {
                    assert!(completed_at[&reference(body)] < r.seq && *age_s > 0);
                    late += 1;
                }
                _ => {}
            }
        }
        assert!(late > 50, "{late} late pending callbacks");
    }

    #[test]
    fn users_are_verified_before_their_money_moves_and_ids_are_unique_per_transfer() {
        let reqs = take(11, 10_000);
        let mut verified: HashSet<(usize, String)> = HashSet::new();
        let mut transfer_ids = HashSet::new();
        for r in &reqs {
            match (&r.call, r.kind) {
                (Call::Webhook { body, .. }, Kind::KycApproved) => {
                    verified
                        .insert((r.tenant, body["externalUserId"].as_str().unwrap_or_default().to_owned()));
                }
                (
                    Call::Command { body, .. },
                    Kind::Deposit | Kind::Internal | Kind::Payout | Kind::PayoutBeyondBalance,
                ) => {
                    let user = body["user_id"].as_str().unwrap_or_default().to_owned();
                    assert!(verified.contains(&(r.tenant, user)), "{:?} for an unverified user", r.kind);
                    assert!(transfer_ids.insert(body["transfer_id"].to_string()), "transfer id reused");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn amounts_are_decimal_text_of_minor_units() {
        assert_eq!(decimal(1), "0.01");
        assert_eq!(decimal(123_456), "1234.56");
        assert_eq!(decimal(-250), "-2.50");
    }
}
