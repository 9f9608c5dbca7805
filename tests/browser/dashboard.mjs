// The dashboard's browser test: Debian's chromium, driven by playwright-core, against a real api.
// tests/e2e/dashboard.rs starts the pipeline, runs this script and drives traffic; the two talk over
// stdio: this script prints `READY` once the tenant's dashboard shows `connected`, then reads one
// JSON line of expectations from stdin (what the test sent, after it sent it), checks that the page's
// numbers equal it and what the API answers (`/v1/analytics/transfers` once its complete_through has
// passed the traffic), that a forced reconnect changes nothing, that the platform view shows the
// tenant's traffic in its totals and a consumer-lag panel, and that a tenant key is refused the
// platform view, and that another tenant's key sees nothing of the tenant's, on its page or in the raw
// stream. Screenshots go to $RIVERBANK_SCREENSHOT_DIR (printed as `SCREENSHOT <path>`).
//
// Environment: RIVERBANK_API_URL, RIVERBANK_TENANT, RIVERBANK_TENANT_KEY, RIVERBANK_PLATFORM_KEY,
// RIVERBANK_OTHER_TENANT and RIVERBANK_OTHER_KEY (a tenant with no traffic), RIVERBANK_ENVIRONMENT [live], RIVERBANK_SCREENSHOT_DIR [target/browser], RIVERBANK_WAIT_MS [150000],
// RIVERBANK_CHROMIUM [/usr/bin/chromium].
//
// Expectations (stdin, one line): {"volume": {"USD": {"amount_minor": "12345", "count": 2}, …},
//   "outcomes": {"accepted": n, "rejected": n, "completed": n, …}, "review_queue": n,
//   "corrected": ["transfer_volume", …] (metrics with a window corrected after it was final),
//   "dead_letters": n, "from": "<RFC 3339>", "to": "<RFC 3339>", "sent_until_ms": n}
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) fail(`${k} is not set`);
  return v;
};
function fail(msg) {
  console.error(`[browser] FAIL: ${msg}`);
  process.exit(1);
}
const log = (m) => console.error(`[browser] ${m}`);

const API = env('RIVERBANK_API_URL').replace(/\/$/, '');
const TENANT = env('RIVERBANK_TENANT');
const TENANT_KEY = env('RIVERBANK_TENANT_KEY');
const PLATFORM_KEY = env('RIVERBANK_PLATFORM_KEY');
const OTHER = env('RIVERBANK_OTHER_TENANT');
const OTHER_KEY = env('RIVERBANK_OTHER_KEY');
const ENVIRONMENT = env('RIVERBANK_ENVIRONMENT', 'live');
const SHOTS = resolve(env('RIVERBANK_SCREENSHOT_DIR', 'target/browser'));
const WAIT_MS = Number(env('RIVERBANK_WAIT_MS', '150000'));
const CHROMIUM = env('RIVERBANK_CHROMIUM', '/usr/bin/chromium');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Every data-testid on the page with its text (and a few attributes), in one round trip.
async function hooks(page) {
  return page.evaluate(() => {
    const out = {};
    for (const e of document.querySelectorAll('[data-testid]')) {
      const id = e.getAttribute('data-testid');
      if (id === 'dead-letter-row' || id === 'consumer-lag-row' || id === 'correction') {
        out[id] = (out[id] || 0) + 1;
      } else {
        out[id] = e.tagName === 'svg' ? (e.getAttribute('data-bars') ?? e.getAttribute('data-points')) : e.textContent.trim();
      }
    }
    out['@series'] = document.querySelector('[data-testid="chart-events"]')?.getAttribute('data-series');
    out['@corrected'] = [...document.querySelectorAll('[data-testid="correction"]')].map((e) => e.getAttribute('data-metric'));
    out['@corrected-bars'] = document.querySelectorAll('rect.bar.correction').length;
    return out;
  });
}

/// Poll the page until `check(hooks)` returns nothing (no complaint), at most WAIT_MS.
async function until(page, what, check) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  let complaint;
  for (;;) {
    last = await hooks(page);
    complaint = check(last);
    if (!complaint) return last;
    if (Date.now() > deadline) {
      const shot = `${SHOTS}/dashboard-failed.png`;
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      fail(`${what}: ${complaint} (not within ${WAIT_MS} ms; page hooks ${JSON.stringify(last)}; screenshot ${shot})`);
    }
    await sleep(250);
  }
}

async function open(browser, key, tenant) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1250 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => fail(`script error on the page: ${e}`));
  page.on('console', (m) => {
    // The page runs under the api's content security policy: anything it refuses is a defect.
    if (/Content Security Policy/i.test(m.text())) fail(`the page broke its content security policy: ${m.text()}`);
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) log(`page console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (!r.url().startsWith(API) && !r.url().startsWith('data:')) fail(`the page asked for ${r.url()}: nothing outside the api`);
    if (r.url().includes(key)) fail('the key is in a URL');
  });
  const resp = await page.goto(`${API}/`);
  if (!resp || resp.status() !== 200 || !resp.url().endsWith('/dashboard')) fail(`GET / → ${resp && resp.url()}: ${resp && resp.status()}`);
  const csp = (await resp.allHeaders())['content-security-policy'] || '';
  if (!/script-src 'self'/.test(csp) || !/connect-src 'self'/.test(csp)) fail(`/dashboard's content security policy: '${csp}'`);
  await page.fill('[data-testid="api-key"]', key);
  await page.fill('[data-testid="tenant"]', tenant);
  await page.selectOption('[data-testid="environment"]', ENVIRONMENT);
  await page.click('[data-testid="connect"]');
  return { context, page };
}

/// The page's numbers against the expectations: null when equal, else what differs.
function differs(h, want, scopeLabel) {
  const bad = [];
  for (const [cur, v] of Object.entries(want.volume)) {
    if (h[`volume-total-${cur}`] !== v.amount_minor) bad.push(`volume-total-${cur} ${h[`volume-total-${cur}`]} != ${v.amount_minor}`);
    if (h[`volume-count-${cur}`] !== String(v.count)) bad.push(`volume-count-${cur} ${h[`volume-count-${cur}`]} != ${v.count}`);
  }
  const shown = Object.keys(h).filter((k) => k.startsWith('volume-total-')).map((k) => k.slice(13));
  for (const cur of shown) if (!(cur in want.volume)) bad.push(`volume in ${cur}, which nobody sent`);
  for (const [o, n] of Object.entries(want.outcomes)) {
    if (h[`outcome-total-${o}`] !== String(n)) bad.push(`outcome-total-${o} ${h[`outcome-total-${o}`]} != ${n}`);
  }
  if (h['dead-letters-total'] !== String(want.dead_letters)) bad.push(`dead-letters-total ${h['dead-letters-total']} != ${want.dead_letters}`);
  if ((h['dead-letter-row'] || 0) < want.dead_letters) bad.push(`${h['dead-letter-row'] || 0} dead-letter rows, want ${want.dead_letters}`);
  for (const m of want.corrected || []) {
    if (!h['@corrected'].includes(m)) bad.push(`no correction of a ${m} window listed (${JSON.stringify(h['@corrected'])})`);
  }
  if ((want.corrected || []).length && h['@corrected-bars'] === 0) bad.push('no bar drawn as corrected');
  if (want.review_queue !== undefined && h['review-queue'] !== String(want.review_queue)) bad.push(`review-queue ${h['review-queue']} != ${want.review_queue}`);
  return bad.length ? `${scopeLabel}: ${bad.join('; ')}` : null;
}

/// What the API's analytics say about the same traffic, once complete_through has passed it.
async function analytics(want) {
  const q = new URLSearchParams({ tenant_id: TENANT, environment: ENVIRONMENT, from: want.from, to: want.to, bucket: 'hour' });
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const r = await fetch(`${API}/v1/analytics/transfers?${q}`, { headers: { Authorization: `Bearer ${TENANT_KEY}` } });
    const body = await r.json().catch(() => null);
    if (r.status !== 200) fail(`/v1/analytics/transfers: ${r.status} ${JSON.stringify(body)}`);
    const through = Date.parse(body.complete_through ?? '');
    if (Number.isFinite(through) && through >= want.sent_until_ms) {
      if (body.next_cursor) fail(`/v1/analytics/transfers paginated unexpectedly: ${JSON.stringify(body)}`);
      const volume = {};
      const statuses = {};
      for (const b of body.buckets || []) {
        if (!Number.isSafeInteger(b.amount_minor) || !Number.isSafeInteger(b.transfers)) fail(`an analytics bucket without exact integers: ${JSON.stringify(b)}`);
        statuses[b.status] = (statuses[b.status] || 0) + b.transfers;
        if (b.status !== 'COMPLETED') continue;
        const v = (volume[b.currency] ||= { amount_minor: 0n, count: 0 });
        v.amount_minor += BigInt(b.amount_minor);
        v.count += b.transfers;
      }
      for (const v of Object.values(volume)) v.amount_minor = v.amount_minor.toString();
      return { volume, statuses, complete_through: body.complete_through };
    }
    if (Date.now() > deadline) fail(`analytics complete_through ${body.complete_through} never passed ${new Date(want.sent_until_ms).toISOString()}`);
    await sleep(500);
  }
}

/// Read `tenant`'s raw stream for a few seconds (past its snapshot): no frame may name TENANT, and none
/// may carry another tenant's or the platform-wide windows.
async function rawStreamOf(key, tenant) {
  const ctrl = new AbortController();
  const q = new URLSearchParams({ tenant_id: tenant, environment: ENVIRONMENT });
  const r = await fetch(`${API}/v1/live?${q}`, { headers: { Authorization: `Bearer ${key}` }, signal: ctrl.signal });
  if (r.status !== 200) fail(`${tenant}'s raw stream: ${r.status} ${await r.text()}`);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const stop = setTimeout(() => ctrl.abort(), 5000);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch (e) {
    if (!ctrl.signal.aborted) throw e;
  } finally {
    clearTimeout(stop);
  }
  if (!text.includes('event: snapshot')) fail(`${tenant}'s raw stream sent no snapshot in 5 s`);
  if (text.includes(TENANT)) fail(`${tenant}'s raw stream names ${TENANT}`);
  for (const frame of text.split('\n\n')) {
    const type = /^event: (.*)$/m.exec(frame)?.[1];
    const data = /^data: (.*)$/m.exec(frame)?.[1];
    if (!data || !['window', 'dead_letter', 'snapshot'].includes(type)) continue;
    const items = type === 'snapshot' ? [...JSON.parse(data).windows, ...JSON.parse(data).dead_letters] : [JSON.parse(data)];
    for (const w of items) {
      if (w.tenant_id !== tenant) fail(`${tenant}'s raw stream carries a ${type} of tenant '${w.tenant_id}'`);
    }
  }
  log(`${tenant}'s raw stream (${text.length} bytes over 5 s) holds nothing but its own`);
}

function readLine() {
  return new Promise((res) => {
    const rl = createInterface({ input: process.stdin });
    rl.once('line', (l) => {
      res(l); // before close(), which emits 'close' at once
      rl.close();
    });
    rl.once('close', () => res(null));
  });
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    // 1. The tenant's dashboard connects; the key is in sessionStorage only.
    const { page } = await open(browser, TENANT_KEY, TENANT);
    await until(page, 'the tenant view connects', (h) => (h.connection === 'connected' ? null : `connection is ${h.connection} (${h.error || 'no error'})`));
    const stored = await page.evaluate(() => ({ session: JSON.stringify(sessionStorage), local: JSON.stringify(localStorage), url: location.href }));
    if (!stored.session.includes(TENANT_KEY)) fail('the key is not kept in sessionStorage');
    if (stored.local.includes(TENANT_KEY) || stored.url.includes(TENANT_KEY)) fail('the key leaked into localStorage or the URL');
    const before = await hooks(page);
    log(`tenant view connected: ${before.view}; ${before.frames} events so far`);
    console.log('READY');

    // 2. The test sends traffic, then says what it sent.
    const line = await readLine();
    if (!line) fail('no expectations on stdin (the test ended early?)');
    const want = JSON.parse(line);
    log(`expecting ${line}`);
    const after = await until(page, 'the tenant view shows what was sent', (h) => differs(h, want, 'tenant view'));
    // The charts moved: bars for each currency and the outcomes, points on the events chart, events counted.
    for (const cur of Object.keys(want.volume)) {
      if (!(Number(after[`chart-volume-${cur}`]) > 0)) fail(`chart-volume-${cur} drew no bars`);
    }
    if (!(Number(after['chart-outcomes']) > 0)) fail('the outcomes chart drew no bars');
    if (!(Number(after['chart-dead-letters']) > 0)) fail('the dead-letters chart drew no bars');
    if (!(Number(after['chart-events']) > 0)) fail('the events chart drew no points');
    if (!(Number(after.frames) > Number(before.frames))) fail(`no events arrived after READY (${before.frames} → ${after.frames})`);
    log(`tenant view equals what was sent: ${JSON.stringify(want.volume)}, outcomes ${JSON.stringify(want.outcomes)}`);

    // 3. … and what the API answers.
    const api = await analytics(want);
    log(`analytics (complete through ${api.complete_through}): ${JSON.stringify(api)}`);
    const h = await hooks(page);
    for (const [cur, v] of Object.entries(api.volume)) {
      if (h[`volume-total-${cur}`] !== v.amount_minor || h[`volume-count-${cur}`] !== String(v.count)) {
        fail(`${cur}: the page shows ${h[`volume-total-${cur}`]} in ${h[`volume-count-${cur}`]} transfers, the API ${v.amount_minor} in ${v.count}`);
      }
    }
    if (Object.keys(api.volume).sort().join() !== Object.keys(want.volume).sort().join()) {
      fail(`currencies: API ${Object.keys(api.volume)}, sent ${Object.keys(want.volume)}`);
    }
    // accepted = VALIDATING → PENDING: every transfer that reached PENDING.
    for (const [o, status] of [['accepted', 'PENDING'], ['rejected', 'REJECTED'], ['completed', 'COMPLETED']]) {
      if (h[`outcome-total-${o}`] !== String(api.statuses[status] || 0)) {
        fail(`${o}: the page shows ${h[`outcome-total-${o}`]}, the API ${api.statuses[status] || 0} ${status}`);
      }
    }

    // 4. A dropped connection resumes (replay or snapshot) and changes nothing.
    const resumedBefore = Number(h.resumed) + Number(h.snapshots);
    await page.click('[data-testid="reconnect"]');
    await until(page, 'a reconnect resumes', (x) => (x.connection === 'connected' && Number(x.resumed) + Number(x.snapshots) > resumedBefore
      ? differs(x, want, 'after the reconnect') : `connection ${x.connection}, resumed ${x.resumed}, snapshots ${x.snapshots}`));
    const shot = `${SHOTS}/dashboard.png`;
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`SCREENSHOT ${shot}`);

    // 5. The platform view: the tenant's traffic in the platform-wide totals and under its own scope,
    //    and the consumer-lag panel.
    const plat = await open(browser, PLATFORM_KEY, 'platform');
    const pw = { ...want, review_queue: undefined };
    await until(plat.page, 'the platform view shows the tenant in its totals', (x) => (x.connection !== 'connected'
      ? `connection is ${x.connection} (${x.error || 'no error'})` : differs(x, pw, 'platform, all tenants')));
    await until(plat.page, 'the platform view shows consumer lag', (x) => ((x['consumer-lag-row'] || 0) > 0 ? null : 'no consumer-lag rows'));
    const options = await plat.page.$$eval('[data-testid="scope"] option', (os) => os.map((o) => o.value));
    if (!options.includes(TENANT)) fail(`the platform view's scopes ${JSON.stringify(options)} lack ${TENANT}`);
    await plat.page.selectOption('[data-testid="scope"]', TENANT);
    await until(plat.page, `the platform view scoped to ${TENANT}`, (x) => differs(x, want, `platform, ${TENANT}`));
    await plat.page.selectOption('[data-testid="scope"]', '*');
    await sleep(500);
    const pshot = `${SHOTS}/dashboard-platform.png`;
    await plat.page.screenshot({ path: pshot, fullPage: true });
    console.log(`SCREENSHOT ${pshot}`);

    // 6. A tenant key asking for the platform view is refused, and the page says so.
    const denied = await open(browser, TENANT_KEY, 'platform');
    await until(denied.page, 'a tenant key is refused the platform view', (x) => (x.connection === 'error' && /^40[13]\b/.test(x.error || '')
      ? null : `connection ${x.connection}, error ${x.error}`));
    const leak = await hooks(denied.page);
    if (Object.keys(leak).some((k) => k.startsWith('volume-total-'))) fail('a refused view shows volumes');
    // 7. Another tenant: its own view shows nothing of the tenant's (and its raw stream holds nothing of
    //    it, not even platform totals), and it is refused the tenant's view.
    await rawStreamOf(OTHER_KEY, OTHER);
    const o = await open(browser, OTHER_KEY, OTHER);
    await until(o.page, "another tenant's view connects and receives gauges", (x) => (x.connection === 'connected' && /clickhouse/.test(x.landed || '')
      ? null : `connection ${x.connection}, landed '${x.landed}'`));
    const seen = await hooks(o.page);
    const text = await o.page.evaluate(() => document.body.innerText);
    const leaks = [];
    if (text.includes(TENANT)) leaks.push(`the page names ${TENANT}`);
    if (Object.keys(seen).some((k) => k.startsWith('volume-total-'))) leaks.push('volumes shown');
    for (const out of ['accepted', 'rejected', 'blocked', 'completed', 'failed']) {
      if (seen[`outcome-total-${out}`] !== '0') leaks.push(`outcome-total-${out} ${seen[`outcome-total-${out}`]}`);
    }
    if (seen['dead-letters-total'] !== '0' || seen['dead-letter-row']) leaks.push('dead letters shown');
    if (seen['review-queue'] !== '0') leaks.push(`review-queue ${seen['review-queue']}`);
    if (leaks.length) fail(`${OTHER}'s view: ${leaks.join('; ')}`);
    const cross = await open(browser, OTHER_KEY, TENANT);
    await until(cross.page, `${OTHER}'s key is refused ${TENANT}'s view`, (x) => (x.connection === 'error' && /^403\b/.test(x.error || '')
      ? null : `connection ${x.connection}, error ${x.error}`));
    log(`${OTHER}'s key sees nothing of ${TENANT}'s and is refused its view`);
    log('every check passed');
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => fail(e && e.stack ? e.stack : String(e)));
