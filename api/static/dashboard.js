// riverbank's live dashboard: reads `GET /v1/live` (one multiplexed Server-Sent Events stream) with
// fetch() and a streaming body reader (EventSource cannot send Authorization), parses the SSE frames
// itself, keeps the latest revision of every window and gauge, and draws plain SVG. No build step, no
// external network, no inline script. The API key lives in sessionStorage only, never in a URL.
//
// Money: amounts arrive as decimal strings of integer minor units; they are summed with BigInt and
// formatted with string arithmetic, never as floats (a float only ever scales a bar's height, from a
// BigInt ratio).
//
// Windows are keyed by (metric, tenant_id, environment, key, start_ms); a newer revision replaces an
// older one. `provisional` windows are drawn lighter, `final` solid, `correction` (a late event
// re-emitting a final window) outlined in red and listed under "Corrections".
//
// Stable test hooks (data-testid):
//   connection                idle | connecting | connected | reconnecting | error
//   error                     the last error (a stream refused: its HTTP status and error code)
//   view                      "tenant <T> · <env>" or "platform · <env>"
//   scope                     platform view: "*" (every tenant) or one tenant (select)
//   window-minutes            the period the totals cover, in minutes (select: 5, 10, 15; the api keeps
//                             minute windows for live.lookback_ms, 15 min by default)
//   frames / snapshots / resumed / corrections   counters: events received, snapshots applied,
//                             reconnects resumed by replay, corrected windows seen
//   watermark                 the stream's watermark (ISO time); data-ms holds the epoch ms
//   last-event-id             the id a reconnect sends as Last-Event-ID
//   chart-events              SVG; data-series = topics drawn, data-points = points drawn
//   events-rate-<topic>       the latest window's events/s of a topic (e.g. events-rate-live.transfers.inputs)
//   charts-volume / chart-volume-<CUR>  SVG bars per minute; data-bars = bars drawn
//   volume-total-<CUR>        exact sum of amount_minor over the period, an integer string (e.g. "12345")
//   volume-count-<CUR>        completed transfers in that sum
//   volume-display-<CUR>      the same sum formatted in major units ("123.45")
//   chart-outcomes            SVG; data-bars
//   outcome-total-<outcome>   accepted | rejected | blocked | completed | failed: count over the period
//   review-queue              open reviews (latest gauge of the scope; 0 when gauges arrive without one), "–" before any
//   chart-dead-letters        SVG; data-bars
//   dead-letters-total        dead letters over the period
//   dead-letter-rows          tbody; each row is data-testid="dead-letter-row" with data-dead-letter-id
//   consumer-lag              platform view tbody; rows data-testid="consumer-lag-row" data-group=…
//   lag-messages-<group> / lag-seconds-<group>   a consumer group's lag
//   landed                    tbody; landed-through-<sink> (ISO or "–"), landed-lag-<sink> (ms or "–")
//   correction-list           ul; each item data-testid="correction" with data-metric and data-revision
//   stats                     platform view: the live component's counters (records read, late dropped, …)
'use strict';

(() => {
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  /// No byte for this long (keepalives come every 15 s): the connection is presumed dead.
  const STALE_MS = 45000;
  /// The events chart's span.
  const EVENTS_SPAN_MS = 5 * 60 * 1000;
  /// Minute bars drawn.
  const BAR_MINUTES = 15;
  /// Windows older than this (before now) are dropped: the longest period plus a margin.
  const KEEP_MS = 20 * 60 * 1000;
  const DEAD_LETTERS_SHOWN = 20;
  const CORRECTIONS_SHOWN = 20;
  const OUTCOMES = ['accepted', 'rejected', 'blocked', 'completed', 'failed'];
  const OUTCOME_COLORS = {
    accepted: '#2f6fdf', rejected: '#d9822b', blocked: '#b8322f', completed: '#2e9e5b', failed: '#7a4fbf',
  };
  const PALETTE = [
    '#2f6fdf', '#2e9e5b', '#d9822b', '#7a4fbf', '#b8322f', '#1b9aaa', '#a5673f', '#d14f9b',
    '#5c6b00', '#0b3c8c', '#e0b000', '#6b2d5c', '#3aa0e8', '#8c8c8c', '#00875a', '#ff6f61',
  ];
  /// ISO 4217 minor-unit exponents that are not 2.
  const EXPONENTS = {
    BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0, UGX: 0, UYI: 0,
    VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0, BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
    CLF: 4, UYW: 4,
  };
  const STORE = 'riverbank.dashboard';

  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- money, with BigInt and strings only ----

  /// A decimal string of integer minor units as a BigInt; 0n (and a console note) if malformed.
  function minor(s) {
    if (typeof s === 'string' && /^-?[0-9]{1,40}$/.test(s)) return BigInt(s);
    if (typeof s === 'number' && Number.isSafeInteger(s)) return BigInt(s);
    console.warn('riverbank: not an integer amount', s);
    return 0n;
  }
  /// 123456n USD → "1,234.56"
  function formatMinor(v, currency) {
    const exp = EXPONENTS[currency] ?? 2;
    const neg = v < 0n;
    let digits = (neg ? -v : v).toString().padStart(exp + 1, '0');
    const whole = digits.slice(0, digits.length - exp);
    const frac = exp ? '.' + digits.slice(digits.length - exp) : '';
    const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    return (neg ? '-' : '') + grouped + frac;
  }
  /// An abbreviated label for an axis: "1.2k", "3.4M" (display only).
  function shortMinor(v, currency) {
    const exp = EXPONENTS[currency] ?? 2;
    const unit = 10n ** BigInt(exp);
    const major = v / unit;
    const steps = [[1000000000n, 'G'], [1000000n, 'M'], [1000n, 'k']];
    for (const [d, s] of steps) {
      if (major >= d) {
        const tenths = (major * 10n) / d;
        return `${tenths / 10n}.${tenths % 10n}${s}`;
      }
    }
    return formatMinor(v, currency);
  }
  /// a / b as a number in [0, 1] for drawing, computed in BigInt.
  function ratio(a, b) {
    if (b <= 0n) return 0;
    return Number((a * 10000n) / b) / 10000;
  }

  // ---- state ----

  const state = {
    windows: new Map(), // wkey → window
    gauges: new Map(), // gkey → gauge
    deadLetters: new Map(), // dead_letter_id → dead letter
    corrections: [], // latest first
    correctionIds: new Set(), // `${window key}|${revision}` of every correction seen
    correctionsSeen: 0,
    watermarkMs: null,
    hello: null,
    frames: 0,
    snapshots: 0,
    resumed: 0,
    tenants: new Set(),
    stats: null, // the platform view's `stats` frame: the live component's own counters
  };
  const conn = {
    cfg: null, // {key, tenant, environment}
    generation: 0,
    controller: null,
    lastEventId: null,
    epoch: null,
    dirty: true,
  };

  const stable = (o) => JSON.stringify(Object.keys(o || {}).sort().map((k) => [k, o[k]]));
  const keyText = (o) => Object.keys(o || {}).sort().map((k) => `${k}=${o[k]}`).join(' ');
  const wkey = (w) => [w.metric, w.tenant_id, w.environment, stable(w.key), w.start_ms].join('|');
  const gkey = (g) => [g.metric, g.tenant_id, g.environment, stable(g.key)].join('|');

  function resetState() {
    state.windows.clear();
    state.gauges.clear();
    state.deadLetters.clear();
    state.watermarkMs = null;
    state.tenants.clear();
  }

  function putWindow(w) {
    if (!w || typeof w.metric !== 'string' || typeof w.start_ms !== 'number') return;
    if (w.tenant_id && w.tenant_id !== '*') state.tenants.add(w.tenant_id);
    const k = wkey(w);
    const old = state.windows.get(k);
    const rev = Number(w.revision || 0);
    if (old && Number(old.revision || 0) > rev) return; // an older revision arriving late: keep the newer
    if (w.state === 'correction') {
      w.corrected = true;
      // Once per (window, revision): a snapshot after a reconnect repeats corrections already seen.
      const seen = `${k}|${rev}`;
      if (!state.correctionIds.has(seen)) {
        state.correctionIds.add(seen);
        state.correctionsSeen += 1;
        state.corrections.unshift({ ...w, seen_at: Date.now(), previous: old ? old.value : null });
        state.corrections.length = Math.min(state.corrections.length, CORRECTIONS_SHOWN);
      }
    } else if (old && old.corrected) {
      w.corrected = true;
    }
    state.windows.set(k, w);
  }
  function putGauge(g) {
    if (!g || typeof g.metric !== 'string') return;
    if (g.tenant_id && g.tenant_id !== '*') state.tenants.add(g.tenant_id);
    const k = gkey(g);
    const old = state.gauges.get(k);
    if (old && (old.at_ms || 0) > (g.at_ms || 0)) return;
    state.gauges.set(k, g);
  }
  function putDeadLetter(d) {
    if (!d || !d.dead_letter_id) return;
    if (d.tenant_id && d.tenant_id !== '*') state.tenants.add(d.tenant_id);
    state.deadLetters.set(d.dead_letter_id, d);
    if (state.deadLetters.size > 200) {
      const oldest = [...state.deadLetters.values()].sort((a, b) => a.at_ms - b.at_ms);
      for (const x of oldest.slice(0, state.deadLetters.size - 200)) state.deadLetters.delete(x.dead_letter_id);
    }
  }
  function prune() {
    const cut = nowMs() - KEEP_MS;
    const eventsCut = nowMs() - EVENTS_SPAN_MS - 60000;
    for (const [k, w] of state.windows) {
      if (w.end_ms < cut || (w.metric === 'events' && w.end_ms < eventsCut)) state.windows.delete(k);
    }
  }
  function nowMs() {
    return Math.max(Date.now(), state.watermarkMs || 0);
  }

  function apply(type, data) {
    state.frames += 1;
    switch (type) {
      case 'hello': {
        state.hello = data;
        if (data.resumed) state.resumed += 1;
        conn.epoch = data.epoch;
        setStatus('connected');
        break;
      }
      case 'snapshot': {
        resetState();
        state.snapshots += 1;
        for (const w of data.windows || []) putWindow(w);
        for (const g of data.gauges || []) putGauge(g);
        for (const d of data.dead_letters || []) putDeadLetter(d);
        if (typeof data.watermark_ms === 'number') state.watermarkMs = data.watermark_ms;
        break;
      }
      case 'window':
        putWindow(data);
        break;
      case 'gauge':
        putGauge(data);
        break;
      case 'dead_letter':
        putDeadLetter(data);
        break;
      case 'stats':
        state.stats = data;
        break;
      case 'watermark':
        if (typeof data.watermark_ms === 'number') state.watermarkMs = Math.max(state.watermarkMs || 0, data.watermark_ms);
        break;
      default:
        break; // unknown event types are ignored (the contract may grow)
    }
    conn.dirty = true;
  }

  // ---- the stream ----

  /// Parses SSE from text chunks; calls onEvent(type, data, id) per dispatched event.
  class SseParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buf = '';
      this.data = [];
      this.type = '';
      this.id = null;
    }
    push(text) {
      this.buf += text;
      let start = 0;
      for (;;) {
        const nl = this.buf.slice(start).search(/\r\n|\r|\n/);
        if (nl < 0) break;
        const end = start + nl;
        // A lone \r at the very end may be the first half of \r\n: wait for more.
        if (this.buf[end] === '\r' && end + 1 === this.buf.length) break;
        const line = this.buf.slice(start, end);
        start = end + (this.buf.startsWith('\r\n', end) ? 2 : 1);
        this.line(line);
      }
      this.buf = this.buf.slice(start);
    }
    line(line) {
      if (line === '') {
        const id = this.id;
        if (this.data.length) this.onEvent(this.type || 'message', this.data.join('\n'), id);
        this.data = [];
        this.type = '';
        return;
      }
      if (line.startsWith(':')) return; // comment (keepalive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.type = value;
      else if (field === 'id' && !value.includes('\0')) {
        this.id = value;
        conn.lastEventId = value;
      }
    }
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function run(gen) {
    let backoff = BACKOFF_MIN_MS;
    let attempt = 0;
    while (gen === conn.generation) {
      const ctrl = new AbortController();
      conn.controller = ctrl;
      setStatus(attempt === 0 ? 'connecting' : 'reconnecting');
      attempt += 1;
      let fatal = false;
      try {
        const { key, tenant, environment } = conn.cfg;
        const q = new URLSearchParams({ tenant_id: tenant, environment });
        const headers = { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' };
        if (conn.lastEventId) headers['Last-Event-ID'] = conn.lastEventId;
        const resp = await fetch(`/v1/live?${q}`, { headers, signal: ctrl.signal, cache: 'no-store', credentials: 'omit' });
        if (!resp.ok) {
          let code = '';
          let message = '';
          try {
            const body = await resp.json();
            code = body?.error?.code || '';
            message = body?.error?.message || '';
          } catch (_) { /* not the JSON error shape */ }
          const text = `${resp.status}${code ? ' ' + code : ''}${message ? ': ' + message : ''}`;
          // A refused key or view will be refused again: stop and say so.
          fatal = resp.status === 400 || resp.status === 401 || resp.status === 403 || resp.status === 404;
          throw new Error(text);
        }
        showError('');
        await read(resp.body, ctrl, gen, () => { backoff = BACKOFF_MIN_MS; });
      } catch (e) {
        if (gen !== conn.generation) return;
        if (!ctrl.signal.aborted || ctrl.signal.reason !== 'manual') showError(String(e && e.message ? e.message : e));
        if (fatal) {
          setStatus('error');
          setButtons(false);
          return;
        }
      }
      if (gen !== conn.generation) return;
      setStatus('reconnecting');
      if (ctrl.signal.aborted && ctrl.signal.reason === 'manual') {
        backoff = BACKOFF_MIN_MS; // asked for: reconnect at once
        continue;
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  async function read(body, ctrl, gen, onHello) {
    const reader = body.getReader();
    const decoder = new TextDecoder('utf-8');
    const parser = new SseParser((type, text) => {
      if (gen !== conn.generation) return;
      let data;
      try {
        data = JSON.parse(text);
      } catch (_) {
        console.warn('riverbank: a frame that is not JSON', type);
        return;
      }
      if (type === 'hello') onHello();
      apply(type, data);
    });
    let last = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - last > STALE_MS) ctrl.abort('stale');
    }, 5000);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        last = Date.now();
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearInterval(watchdog);
      try { reader.releaseLock(); } catch (_) { /* already released */ }
    }
  }

  function connect(cfg) {
    disconnect();
    conn.cfg = cfg;
    conn.lastEventId = null;
    conn.epoch = null;
    resetState();
    state.frames = 0;
    state.snapshots = 0;
    state.resumed = 0;
    state.corrections = [];
    state.correctionIds = new Set();
    state.correctionsSeen = 0;
    state.hello = null;
    conn.dirty = true;
    const gen = ++conn.generation;
    setButtons(true);
    $('view').textContent = cfg.tenant === 'platform' ? `platform · ${cfg.environment}` : `tenant ${cfg.tenant} · ${cfg.environment}`;
    run(gen);
  }
  function disconnect() {
    conn.generation += 1;
    if (conn.controller) conn.controller.abort('manual');
    conn.controller = null;
    setStatus('idle');
    setButtons(false);
  }
  function reconnectNow() {
    if (conn.controller) conn.controller.abort('manual');
  }

  function setStatus(s) {
    const e = $('connection');
    if (e.textContent !== s) {
      e.textContent = s;
      e.className = `conn ${s}`;
    }
  }
  function showError(text) {
    const e = $('error');
    e.textContent = text;
    e.hidden = !text;
  }
  function setButtons(on) {
    $('reconnect').disabled = !on;
    $('disconnect').disabled = !on;
  }

  // ---- what the view shows ----

  function platform() {
    return conn.cfg && conn.cfg.tenant === 'platform';
  }
  /// The tenant whose windows are drawn: the view's tenant, or the platform view's chosen scope.
  function scope() {
    if (!platform()) return conn.cfg ? conn.cfg.tenant : '';
    return $('scope').value || '*';
  }
  function periodMs() {
    return Number($('window-minutes').value || 15) * 60000;
  }
  function windowsOf(metric) {
    const t = scope();
    const env = conn.cfg ? conn.cfg.environment : '';
    const out = [];
    for (const w of state.windows.values()) {
      if (w.metric === metric && w.tenant_id === t && w.environment === env) out.push(w);
    }
    return out;
  }
  function gaugesOf(metric, tenantFilter) {
    const env = conn.cfg ? conn.cfg.environment : '';
    const out = [];
    for (const g of state.gauges.values()) {
      if (g.metric !== metric || g.environment !== env) continue;
      if (tenantFilter && g.tenant_id !== scope()) continue;
      out.push(g);
    }
    return out;
  }
  const stateClass = (w) => (w.corrected ? 'correction' : w.state === 'final' ? 'final' : 'provisional');
  const iso = (ms) => (typeof ms === 'number' ? new Date(ms).toISOString().replace('.000Z', 'Z') : '–');
  const hhmm = (ms) => new Date(ms).toISOString().slice(11, 16);

  // ---- charts ----

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /// Lines over time: series [{name, color, points: [{t, v, cls}]}] between t0 and t1.
  function lineChart(node, series, t0, t1) {
    clear(node);
    const [W, H] = node.getAttribute('viewBox').split(' ').slice(2).map(Number);
    const L = 44, R = 8, T = 8, B = 20;
    let max = 0;
    for (const s of series) for (const p of s.points) max = Math.max(max, p.v);
    max = max > 0 ? niceCeil(max) : 1;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    axes(node, W, H, L, R, T, B, [0, max / 2, max].map((v) => [y(v), fmtNum(v)]));
    for (let m = Math.ceil(t0 / 60000) * 60000; m <= t1; m += 60000) {
      node.append(svg('text', { x: x(m), y: H - 5, class: 'tick', 'text-anchor': 'middle' }, hhmm(m)));
    }
    let points = 0;
    for (const s of series) {
      const pts = s.points.filter((p) => p.t >= t0 && p.t <= t1).sort((a, b) => a.t - b.t);
      if (!pts.length) continue;
      // Final part solid, provisional part lighter: one path per run of the same class.
      let run = [];
      const flush = (cls) => {
        if (run.length > 1) {
          node.append(svg('polyline', {
            points: run.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' '),
            class: `line ${cls}`, stroke: s.color,
          }));
        }
      };
      let cls = pts[0].cls;
      for (const p of pts) {
        if (p.cls !== cls) {
          run.push(p);
          flush(cls);
          run = [run[run.length - 1]];
          cls = p.cls;
        } else {
          run.push(p);
        }
        if (p.cls === 'correction') {
          node.append(svg('circle', { cx: x(p.t), cy: y(p.v), r: 3, class: 'mark correction' }));
        }
        points += 1;
      }
      flush(cls);
      const lastP = pts[pts.length - 1];
      node.append(svg('circle', { cx: x(lastP.t), cy: y(lastP.v), r: 2.5, fill: s.color, class: lastP.cls }));
    }
    node.setAttribute('data-series', String(series.length));
    node.setAttribute('data-points', String(points));
  }

  /// Grouped bars per minute: minutes [start_ms…], groups [{name, color, at: Map(start_ms → window)}],
  /// value(w) → BigInt.
  function barChart(node, minutes, groups, value, label) {
    clear(node);
    const [W, H] = node.getAttribute('viewBox').split(' ').slice(2).map(Number);
    const L = 44, R = 6, T = 8, B = 18;
    let max = 0n;
    for (const g of groups) for (const w of g.at.values()) { const v = value(w); if (v > max) max = v; }
    const slot = (W - L - R) / minutes.length;
    const bw = Math.max(1, (slot - 2) / Math.max(1, groups.length));
    const y = (r) => T + (1 - r) * (H - T - B);
    axes(node, W, H, L, R, T, B, [[y(0), '0'], [y(1), max > 0n ? label(max) : '']]);
    let bars = 0;
    minutes.forEach((m, i) => {
      if (i % 3 === 0 || i === minutes.length - 1) {
        node.append(svg('text', { x: L + i * slot + slot / 2, y: H - 4, class: 'tick', 'text-anchor': 'middle' }, hhmm(m)));
      }
      groups.forEach((g, j) => {
        const w = g.at.get(m);
        if (!w) return;
        const v = value(w);
        const top = y(ratio(v, max));
        const rect = svg('rect', {
          x: (L + i * slot + 1 + j * bw).toFixed(1), y: top.toFixed(1), width: Math.max(1, bw - 1).toFixed(1),
          height: Math.max(v > 0n ? 1 : 0, y(0) - top).toFixed(1), fill: g.color, class: `bar ${stateClass(w)}`,
          'data-start-ms': m, 'data-group': g.name, 'data-state': w.state, 'data-revision': w.revision,
        });
        rect.append(svg('title', {}, `${g.name} ${hhmm(m)}: ${label(v, true)} (${w.state}, revision ${w.revision})`));
        node.append(rect);
        bars += 1;
      });
    });
    node.setAttribute('data-bars', String(bars));
  }

  function axes(node, W, H, L, R, T, B, yticks) {
    node.append(svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    node.append(svg('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }));
    for (const [yy, text] of yticks) {
      node.append(svg('line', { x1: L, y1: yy, x2: W - R, y2: yy, class: 'grid' }));
      node.append(svg('text', { x: L - 4, y: yy + 3, class: 'tick', 'text-anchor': 'end' }, text));
    }
  }
  function niceCeil(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function fmtNum(v) {
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }
  function lastMinutes(now) {
    const cur = Math.floor(now / 60000) * 60000;
    const out = [];
    for (let i = BAR_MINUTES - 1; i >= 0; i -= 1) out.push(cur - i * 60000);
    return out;
  }
  function legend(node, items) {
    clear(node);
    for (const [name, color, extra] of items) {
      const dot = el('span', { class: 'dot' });
      dot.style.background = color; // through the CSSOM: no style attribute for the CSP to allow
      node.append(el('span', { class: 'key' }, dot, name, extra ? ` ${extra}` : ''));
    }
  }
  const colorOf = (() => {
    const assigned = new Map();
    return (name) => {
      if (!assigned.has(name)) assigned.set(name, PALETTE[assigned.size % PALETTE.length]);
      return assigned.get(name);
    };
  })();

  // ---- panels ----

  function render() {
    if (!conn.dirty) return;
    conn.dirty = false;
    prune();
    const now = nowMs();
    $('frames').textContent = String(state.frames);
    $('snapshots').textContent = String(state.snapshots);
    $('resumed').textContent = String(state.resumed);
    $('corrections').textContent = String(state.correctionsSeen);
    $('last-event-id').textContent = conn.lastEventId || '–';
    const wm = $('watermark');
    wm.textContent = state.watermarkMs ? iso(state.watermarkMs) : '–';
    wm.setAttribute('data-ms', state.watermarkMs ?? '');
    renderScope();
    renderEvents(now);
    renderVolume(now);
    renderOutcomes(now);
    renderReviewQueue();
    renderDeadLetters(now);
    renderLanded();
    renderLag();
    renderCorrections();
    const st = state.stats;
    $('stats').textContent = st ? Object.entries(st).map(([k, v]) => `${k.replace(/_/g, ' ')} ${v}`).join(' · ') : '';
  }

  function renderScope() {
    const label = $('scope-label');
    const on = platform();
    label.hidden = !on;
    $('platform-panel').hidden = !on;
    if (!on) return;
    const sel = $('scope');
    const want = ['*', ...[...state.tenants].sort()];
    const have = [...sel.options].map((o) => o.value);
    if (want.join('\n') !== have.join('\n')) {
      const cur = sel.value || '*';
      clear(sel);
      for (const t of want) sel.append(el('option', { value: t }, t === '*' ? 'all tenants' : t));
      sel.value = want.includes(cur) ? cur : '*';
    }
  }

  function renderEvents(now) {
    const byTopic = new Map();
    for (const w of windowsOf('events')) {
      const topic = w.key && w.key.topic ? w.key.topic : '?';
      if (!byTopic.has(topic)) byTopic.set(topic, []);
      const v = Number(w.value && w.value.per_s);
      byTopic.get(topic).push({ t: w.end_ms, v: Number.isFinite(v) ? v : 0, cls: stateClass(w) });
    }
    const topics = [...byTopic.keys()].sort();
    const series = topics.map((t) => ({ name: t, color: colorOf(t), points: byTopic.get(t) }));
    lineChart($('chart-events'), series, now - EVENTS_SPAN_MS, now);
    const leg = $('legend-events');
    legend(leg, series.map((s) => [s.name, s.color]));
    // Each topic's latest rate beside its name (with its hook).
    [...leg.children].forEach((span, i) => {
      const pts = series[i].points;
      const latest = pts.reduce((a, b) => (b.t > a.t ? b : a), pts[0]);
      span.append(' ', el('b', { 'data-testid': `events-rate-${series[i].name}` }, fmtNum(latest.v)), '/s');
    });
    if (!series.length) leg.append(el('span', { class: 'hint' }, 'no events yet'));
  }

  function renderVolume(now) {
    const from = now - periodMs();
    const minutes = lastMinutes(now);
    const byCur = new Map();
    for (const w of windowsOf('transfer_volume')) {
      const cur = w.key && w.key.currency ? w.key.currency : '?';
      if (!byCur.has(cur)) byCur.set(cur, { at: new Map(), total: 0n, count: 0 });
      const c = byCur.get(cur);
      c.at.set(w.start_ms, w);
      if (w.start_ms >= from) {
        c.total += minor(w.value && w.value.amount_minor);
        c.count += Number(w.value && w.value.count) || 0;
      }
    }
    const currencies = [...byCur.keys()].sort();
    const host = $('charts-volume');
    // One small chart per currency (amounts of different currencies share no axis).
    const want = currencies.map((c) => `chart-volume-${c}`);
    const have = [...host.children].map((c) => c.getAttribute('data-currency-chart'));
    if (want.join() !== have.join()) {
      clear(host);
      for (const c of currencies) {
        const box = el('div', { class: 'mini', 'data-currency-chart': `chart-volume-${c}` }, el('div', { class: 'mini-title' }, c));
        const s = svg('svg', { viewBox: '0 0 440 110', preserveAspectRatio: 'none', class: 'chart', 'data-testid': `chart-volume-${c}` });
        box.append(s);
        host.append(box);
      }
    }
    currencies.forEach((c, i) => {
      const node = host.children[i].querySelector('svg');
      barChart(node, minutes, [{ name: c, color: colorOf(`cur:${c}`), at: byCur.get(c).at }],
        (w) => minor(w.value && w.value.amount_minor),
        (v, long) => (long ? `${formatMinor(v, c)} ${c}` : shortMinor(v, c)));
    });
    host.setAttribute('data-bars', String([...host.querySelectorAll('svg')].reduce((n, s) => n + Number(s.getAttribute('data-bars') || 0), 0)));
    const body = $('volume-totals');
    clear(body);
    for (const c of currencies) {
      const { total, count } = byCur.get(c);
      body.append(el('tr', { 'data-currency': c },
        el('td', {}, c),
        el('td', { class: 'num' }, el('span', { 'data-testid': `volume-display-${c}` }, formatMinor(total, c)), ` ${c}`),
        el('td', { class: 'num', 'data-testid': `volume-count-${c}` }, String(count)),
        el('td', { class: 'num minor' }, el('code', { 'data-testid': `volume-total-${c}` }, total.toString()))));
    }
    if (!currencies.length) body.append(el('tr', {}, el('td', { colspan: 4, class: 'hint' }, 'no completed transfers in the period')));
  }

  function renderOutcomes(now) {
    const from = now - periodMs();
    const minutes = lastMinutes(now);
    const groups = OUTCOMES.map((o) => ({ name: o, color: OUTCOME_COLORS[o], at: new Map(), total: 0n }));
    const byName = new Map(groups.map((g) => [g.name, g]));
    for (const w of windowsOf('transfer_outcomes')) {
      const g = byName.get(w.key && w.key.outcome);
      if (!g) continue;
      g.at.set(w.start_ms, w);
      if (w.start_ms >= from) g.total += BigInt(Number(w.value && w.value.count) || 0);
    }
    barChart($('chart-outcomes'), minutes, groups, (w) => BigInt(Number(w.value && w.value.count) || 0), (v) => v.toString());
    legend($('legend-outcomes'), groups.map((g) => [g.name, g.color]));
    const body = $('outcome-totals');
    clear(body);
    body.append(el('tr', {}, ...groups.map((g) => el('th', {}, g.name))));
    body.append(el('tr', {}, ...groups.map((g) => el('td', { class: 'num', 'data-testid': `outcome-total-${g.name}` }, g.total.toString()))));
  }

  function renderReviewQueue() {
    const gs = gaugesOf('review_queue', true).sort((a, b) => (b.at_ms || 0) - (a.at_ms || 0));
    const g = gs[0];
    // The api sends a tenant's queue only while it holds reviews (and a 0 when it empties): once any
    // gauge has arrived, no queue gauge for the scope means an empty queue.
    const gaugesSeen = state.gauges.size > 0;
    $('review-queue').textContent = g ? String(g.value && g.value.open) : gaugesSeen ? '0' : '–';
    $('review-queue-at').textContent = g ? `as of ${iso(g.at_ms)}` : '';
  }

  function renderDeadLetters(now) {
    const from = now - periodMs();
    const minutes = lastMinutes(now);
    const perMinute = new Map();
    let total = 0n;
    for (const w of windowsOf('dead_letters')) {
      const n = BigInt(Number(w.value && w.value.count) || 0);
      const agg = perMinute.get(w.start_ms) || { ...w, value: { count: 0 }, sum: 0n, corrected: false };
      agg.sum += n;
      agg.corrected = agg.corrected || !!w.corrected;
      if (w.state === 'provisional') agg.state = 'provisional';
      perMinute.set(w.start_ms, agg);
      if (w.start_ms >= from) total += n;
    }
    barChart($('chart-dead-letters'), minutes, [{ name: 'dead letters', color: '#b8322f', at: perMinute }], (w) => w.sum, (v) => v.toString());
    $('dead-letters-total').textContent = total.toString();
    const body = $('dead-letter-rows');
    clear(body);
    const t = scope();
    const env = conn.cfg ? conn.cfg.environment : '';
    const rows = [...state.deadLetters.values()]
      .filter((d) => (t === '*' || d.tenant_id === t) && (!d.environment || d.environment === env))
      .sort((a, b) => (b.at_ms || 0) - (a.at_ms || 0))
      .slice(0, DEAD_LETTERS_SHOWN);
    for (const d of rows) {
      body.append(el('tr', { 'data-testid': 'dead-letter-row', 'data-dead-letter-id': d.dead_letter_id },
        el('td', {}, iso(d.at_ms)), el('td', {}, d.tenant_id || ''), el('td', {}, d.rejected_by || ''),
        el('td', {}, d.source || ''), el('td', {}, d.source_topic || ''), el('td', { class: 'reason' }, d.reason || '')));
    }
    if (!rows.length) body.append(el('tr', {}, el('td', { colspan: 6, class: 'hint' }, 'none')));
  }

  function renderLanded() {
    const bySink = new Map();
    for (const g of gaugesOf('landed', false)) {
      const sink = g.key && g.key.sink ? g.key.sink : '?';
      const old = bySink.get(sink);
      // Prefer the view's own tenant (or the platform total) when several are sent.
      const mine = g.tenant_id === scope() || g.tenant_id === '*';
      if (!old || (mine && !old.mine) || (mine === old.mine && (g.at_ms || 0) > (old.g.at_ms || 0))) bySink.set(sink, { g, mine });
    }
    const body = $('landed');
    clear(body);
    for (const sink of [...bySink.keys()].sort()) {
      const v = bySink.get(sink).g.value || {};
      body.append(el('tr', { 'data-sink': sink }, el('td', {}, sink),
        el('td', { 'data-testid': `landed-through-${sink}` }, v.complete_through_ms == null ? '–' : iso(v.complete_through_ms)),
        el('td', { class: 'num', 'data-testid': `landed-lag-${sink}` }, v.lag_ms == null ? '–' : `${v.lag_ms} ms`)));
    }
    if (!bySink.size) body.append(el('tr', {}, el('td', { colspan: 3, class: 'hint' }, 'no report yet')));
  }

  function renderLag() {
    if (!platform()) return;
    const byGroup = new Map();
    for (const g of gaugesOf('consumer_lag', false)) {
      const group = g.key && g.key.group ? g.key.group : '?';
      const old = byGroup.get(group);
      if (!old || (g.at_ms || 0) >= (old.at_ms || 0)) byGroup.set(group, g);
    }
    const body = $('consumer-lag');
    clear(body);
    for (const group of [...byGroup.keys()].sort()) {
      const g = byGroup.get(group);
      const v = g.value || {};
      const secs = Number(v.seconds);
      body.append(el('tr', { 'data-testid': 'consumer-lag-row', 'data-group': group }, el('td', {}, group),
        el('td', { class: 'num', 'data-testid': `lag-messages-${group}` }, `${v.at_least ? '≥ ' : ''}${v.messages ?? '–'}`),
        el('td', { class: 'num', 'data-testid': `lag-seconds-${group}` }, Number.isFinite(secs) ? secs.toFixed(1) : '–'),
        el('td', {}, iso(g.at_ms))));
    }
    if (!byGroup.size) body.append(el('tr', {}, el('td', { colspan: 4, class: 'hint' }, 'no report yet')));
  }

  function renderCorrections() {
    const list = $('correction-list');
    clear(list);
    for (const c of state.corrections) {
      const was = c.previous ? JSON.stringify(c.previous) : '?';
      list.append(el('li', { 'data-testid': 'correction', 'data-metric': c.metric, 'data-revision': c.revision },
        `${c.metric} ${keyText(c.key)} ${c.tenant_id === '*' ? 'all tenants' : c.tenant_id} window ${iso(c.start_ms)}–${hhmm(c.end_ms)}: revision ${c.revision}, `,
        el('b', {}, JSON.stringify(c.value)), ` (was ${was})`));
    }
    if (!state.corrections.length) list.append(el('li', { class: 'hint' }, 'none'));
  }

  // ---- the form ----

  function saved() {
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || 'null');
    } catch (_) {
      return null;
    }
  }

  function init() {
    const s = saved();
    if (s) {
      $('api-key').value = s.key || '';
      $('tenant').value = s.tenant || '';
      $('environment').value = s.environment || 'live';
    }
    $('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const cfg = {
        key: $('api-key').value.trim(),
        tenant: $('tenant').value.trim(),
        environment: $('environment').value,
      };
      if (!cfg.key || !cfg.tenant) return;
      try {
        sessionStorage.setItem(STORE, JSON.stringify(cfg));
      } catch (_) { /* storage refused: connect anyway */ }
      connect(cfg);
    });
    $('disconnect').addEventListener('click', () => {
      disconnect();
      try { sessionStorage.removeItem(STORE); } catch (_) { /* nothing stored */ }
    });
    $('reconnect').addEventListener('click', reconnectNow);
    $('scope').addEventListener('change', () => { conn.dirty = true; });
    $('window-minutes').addEventListener('change', () => { conn.dirty = true; });
    // Redraw at most 4 times a second; the time axis moves even without events.
    setInterval(() => { conn.dirty = true; }, 1000);
    setInterval(render, 250);
    if (s && s.key && s.tenant) connect(s);
    render();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
