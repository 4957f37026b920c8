// levee's dashboard: one ES module, no dependencies, no build step.
//
// It reads the admin JSON API (docs/api.md): the upstreams, alerts and the
// last ten minutes of history are fetched every two seconds and at once
// when the event stream says something changed; the stream also feeds the
// list of recent events. Everything it draws is built with DOM calls (the
// page's Content-Security-Policy allows no inline script or style), and
// every state is shown in words or shapes as well as colour.

const API = 'api/v1/';
const POLL_MS = 2000;
const STATUS_MS = 30000;
const HISTORY_MS = 10 * 60 * 1000;
const EVENTS_SHOWN = 60;
const TOKEN_KEY = 'levee.admin.token';
const EVENT_KINDS = [
  'endpoint_health', 'endpoint_ejected', 'endpoint_returned', 'endpoint_drained', 'weight_changed',
  'failover_started', 'failover_ended', 'loads_changed', 'alert', 'redis', 'reload', 'lagged',
];
const STATES = ['healthy', 'unhealthy', 'ejected', 'drained'];
const SVG = 'http://www.w3.org/2000/svg'; // an XML namespace name, not a URL that is fetched

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  upstreams: [],
  history: new Map(),
  historyInterval: 1000,
  alerts: [],
  notifiers: [],
  events: new Map(),
  status: null,
  statusAt: 0,
  stream: null,
  streamRetry: 1000,
  refreshing: null,
  again: false,
  timers: [],
  hover: null,
};

class Unauthorized extends Error {}

// ---------------------------------------------------------------- fetching

async function getJSON(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  let res;
  try {
    res = await fetch(API + path, { headers, cache: 'no-store' });
  } catch (e) {
    throw new Error('cannot reach levee');
  }
  if (res.status === 401) throw new Unauthorized();
  if (!res.ok) throw new Error(`${API}${path} answered ${res.status}`);
  return res.json();
}

// Fetches what changes and redraws. Calls made while a refresh is running
// are folded into one more refresh after it.
function refresh() {
  if (state.refreshing) {
    state.again = true;
    return state.refreshing;
  }
  state.refreshing = (async () => {
    try {
      const [upstreams, history, alerts, notifiers] = await Promise.all([
        getJSON('upstreams'), getJSON('history'), getJSON('alerts'), getJSON('notifiers'),
      ]);
      state.notifiers = Array.isArray(notifiers) ? notifiers : [];
      state.upstreams = Array.isArray(upstreams) ? upstreams : (upstreams.upstreams || []);
      state.historyInterval = history.interval_ms || 1000;
      state.history = new Map((history.upstreams || []).map((u) => [u.name, u.points || []]));
      state.alerts = Array.isArray(alerts) ? alerts : (alerts.alerts || []);
      problem(null);
      render();
    } catch (e) {
      handle(e);
    } finally {
      state.refreshing = null;
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  })();
  return state.refreshing;
}

let soon = null;
// Events come in bursts (a region failing is one event per endpoint):
// one refresh answers the burst.
function refreshSoon() {
  if (soon) return;
  soon = setTimeout(() => {
    soon = null;
    refresh();
  }, 100);
}

async function loadStatus() {
  try {
    state.status = await getJSON('status');
    state.statusAt = Date.now();
    renderStatus();
  } catch (e) {
    handle(e);
  }
}

async function loadRecent() {
  try {
    const recent = await getJSON('events/recent');
    for (const e of Array.isArray(recent) ? recent : (recent.events || [])) remember(e);
    renderEvents();
  } catch (e) {
    handle(e);
  }
}

function handle(e) {
  if (e instanceof Unauthorized) {
    askToken();
  } else {
    problem(e.message || String(e));
  }
}

// ---------------------------------------------------------------- live stream

function connectStream() {
  if (state.stream) state.stream.close();
  const url = API + 'events' + (state.token ? `?access_token=${encodeURIComponent(state.token)}` : '');
  const es = new EventSource(url);
  state.stream = es;
  setLive('connecting');
  es.onopen = () => {
    state.streamRetry = 1000;
    setLive('live');
    refreshSoon();
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // The server refused the stream (a 401, or levee restarting): the
      // browser gives up, so retry ourselves, backing off to 30 s.
      setLive('offline');
      const wait = state.streamRetry;
      state.streamRetry = Math.min(wait * 2, 30000);
      later(() => {
        loadRecent();
        connectStream();
      }, wait);
    } else {
      setLive('reconnecting');
    }
  };
  const onEvent = (msg) => {
    let event;
    try {
      event = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (event.kind === undefined) event.kind = msg.type;
    if (event.id === undefined && msg.lastEventId) event.id = Number(msg.lastEventId);
    if (event.kind === 'lagged') loadRecent();
    remember(event);
    renderEvents();
    refreshSoon();
  };
  for (const kind of EVENT_KINDS) es.addEventListener(kind, onEvent);
  es.addEventListener('message', onEvent);
}

function later(f, ms) {
  const t = setTimeout(() => {
    state.timers = state.timers.filter((x) => x !== t);
    f();
  }, ms);
  state.timers.push(t);
}

function remember(event) {
  const key = event.id !== undefined ? `id:${event.id}` : `t:${event.time_ms}:${event.kind}:${Math.random()}`;
  state.events.set(key, event);
  if (state.events.size > 256) {
    const oldest = [...state.events.entries()].sort((a, b) => order(a[1], b[1]))[0];
    state.events.delete(oldest[0]);
  }
}

function order(a, b) {
  return (a.id ?? 0) - (b.id ?? 0) || (a.time_ms ?? 0) - (b.time_ms ?? 0);
}

function setLive(s) {
  const el = document.getElementById('live');
  el.dataset.state = s;
  el.querySelector('.label').textContent = {
    live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'stream offline',
  }[s];
  el.title = {
    live: 'Receiving events as they happen',
    connecting: 'Opening the event stream',
    reconnecting: 'The event stream dropped; the browser is reconnecting',
    offline: 'The event stream is closed; retrying',
  }[s];
}

// ---------------------------------------------------------------- token

function askToken() {
  document.getElementById('token').hidden = false;
  // A token we sent was refused: say so, and forget it.
  document.getElementById('token-error').hidden = !state.token;
  if (state.token) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
  }
  if (state.stream) {
    state.stream.close();
    state.stream = null;
  }
  setLive('offline');
  stopTimers();
  document.getElementById('token-input').focus();
}

function setupTokenForm() {
  document.getElementById('token').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = document.getElementById('token-input').value.trim();
    if (!value) return;
    state.token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    document.getElementById('token').hidden = true;
    start();
  });
}

// ---------------------------------------------------------------- drawing helpers

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  setProps(el, attrs);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k === 'class') el.setAttribute('class', v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'width%') el.style.width = `${v}%`;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Small shape icons, so that a state never depends on colour or on which
// fonts happen to be installed.
function icon(name) {
  const paths = {
    healthy: 'M3.5 8.5l3 3 6-7',
    unhealthy: 'M4 4l8 8M12 4l-8 8',
    ejected: 'M8 3l5 6H3zM3 12h10',
    drained: 'M5.5 3.5v9M10.5 3.5v9',
    firing: 'M8 2.5l6 11H2zM8 6.5v3.5M8 12v.01',
    pending: 'M8 2a6 6 0 1 0 .01 0zM8 5v3.5l2.5 1.5',
    resolved: 'M3.5 8.5l3 3 6-7',
    info: 'M8 2a6 6 0 1 0 .01 0zM8 7v4.5M8 4.8v.01',
  };
  return s('svg', { class: `icon icon-${name}`, viewBox: '0 0 16 16', 'aria-hidden': 'true' },
    s('path', { d: paths[name] || paths.info }));
}

const fmt = {
  rps(v) {
    if (v === null || v === undefined) return '–';
    if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
    return v >= 10 ? v.toFixed(0) : v.toFixed(1);
  },
  pct(v) {
    if (v === null || v === undefined) return '–';
    const p = v * 100;
    if (p === 0) return '0%';
    if (p < 0.01) return '<0.01%';
    return `${p < 1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : p.toFixed(0)}%`;
  },
  share(v) {
    const p = (v || 0) * 100;
    return `${p > 0 && p < 1 ? p.toFixed(1) : p.toFixed(0)}%`;
  },
  ms(v) {
    if (v === null || v === undefined) return '–';
    if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
    return `${v < 10 ? v.toFixed(v < 1 ? 2 : 1) : v.toFixed(0)} ms`;
  },
  duration(ms) {
    const sec = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(sec / 86400);
    const hr = Math.floor((sec % 86400) / 3600);
    const m = Math.floor((sec % 3600) / 60);
    const x = sec % 60;
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${m}m`;
    if (m) return `${m}m ${x}s`;
    return `${x}s`;
  },
  clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  },
};

// ---------------------------------------------------------------- header

function renderStatus() {
  const st = state.status;
  if (!st) return;
  document.getElementById('version').textContent = st.version ? `v${st.version}` : '';
  document.getElementById('draining').hidden = !st.draining;
  renderUptime();
}

function renderUptime() {
  const st = state.status;
  if (!st) return;
  let up = null;
  if (typeof st.uptime_seconds === 'number') up = st.uptime_seconds * 1000;
  else if (typeof st.uptime_s === 'number') up = st.uptime_s * 1000;
  else if (typeof st.uptime_ms === 'number') up = st.uptime_ms;
  if (up !== null) up += Date.now() - state.statusAt;
  else {
    const started = st.started_ms ?? st.start_time_ms ?? st.started_at_ms;
    if (typeof started === 'number') up = Date.now() - started;
  }
  document.getElementById('uptime').textContent = up === null ? '' : `up ${fmt.duration(up)}`;
}

function problem(text) {
  const el = document.getElementById('problem');
  el.hidden = !text;
  el.textContent = text ? `${text}. Retrying…` : '';
}

// ---------------------------------------------------------------- alerts

function renderAlerts() {
  const box = document.getElementById('alerts');
  const alerts = [...state.alerts].sort((a, b) =>
    (a.state === 'firing' ? 0 : 1) - (b.state === 'firing' ? 0 : 1) ||
    (a.active_since_ms ?? 0) - (b.active_since_ms ?? 0));
  const firing = alerts.filter((a) => a.state === 'firing').length;
  box.dataset.count = String(alerts.length);
  box.dataset.firing = String(firing);
  document.title = firing ? `(${firing} firing) levee` : 'levee';
  if (!alerts.length) {
    box.replaceChildren(h('div', { class: 'alerts-none' }, icon('resolved'), 'No active alerts'));
    return;
  }
  // Alerts of one rule in one state are one row: a failed region is one
  // "endpoint down" line naming its endpoints, not one line each.
  const groups = new Map();
  for (const a of alerts) {
    const key = `${a.state}\u0000${a.rule}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(a);
  }
  const now = Date.now();
  box.replaceChildren(...[...groups.values()].map((group) => alertRow(group, now)));
}

function alertRow(group, now) {
  const a = group[0];
  const ann = a.annotations || {};
  // Labels every alert of the group shares are chips; the ones that tell
  // them apart are listed.
  const keys = [...new Set(group.flatMap((x) => Object.keys(x.labels || {})))].sort();
  const common = keys.filter((k) => group.every((x) => (x.labels || {})[k] === (a.labels || {})[k]));
  const varying = keys.filter((k) => !common.includes(k));
  const since = Math.min(...group.map((x) =>
    (x.state === 'firing' ? (x.firing_since_ms ?? x.active_since_ms) : x.active_since_ms) ?? now));
  let summary = ann.summary || ann.description || describeKind(a.kind);
  if (group.length > 1) {
    const which = group.map((x) => varying.map((k) => (x.labels || {})[k]).join(' ')).join(', ');
    summary = `${group.length} alerts: ${describeKind(a.kind).toLowerCase() || a.rule}${which ? ` — ${which}` : ''}`;
  }
  return h('div', {
    class: `alert alert-${a.state}`,
    dataset: { rule: a.rule, state: a.state, kind: a.kind || '', count: String(group.length) },
    role: a.state === 'firing' ? 'alert' : null,
  },
  h('div', { class: 'alert-state' }, icon(a.state), a.state),
  h('div', { class: 'alert-body' },
    h('div', { class: 'alert-title' },
      h('strong', { text: a.rule }),
      group.length > 1 ? h('span', { class: 'count', text: `×${group.length}` }) : null,
      a.severity ? h('span', { class: `severity sev-${a.severity}`, text: a.severity }) : null,
      common.map((k) => h('span', { class: 'chip', text: `${k}=${a.labels[k]}` }))),
    h('div', { class: 'alert-summary', text: summary })),
  h('div', { class: 'alert-meta' },
    h('span', { title: new Date(since).toISOString() }, `${a.state} for ${fmt.duration(now - since)}`),
    safeLink(ann.runbook_url) ? h('a', { href: ann.runbook_url, class: 'runbook', target: '_blank', rel: 'noopener noreferrer' }, 'Runbook →') : null));
}

function safeLink(url) {
  return typeof url === 'string' && /^(https?:\/\/|\/)/i.test(url);
}

function describeKind(kind) {
  return ({
    endpoint_down: 'Endpoints take no traffic',
    region_degraded: 'A region has lost healthy endpoints',
    failover_active: 'Traffic has left the preferred region',
    error_ratio: 'Error ratio above threshold',
    latency_p99: 'p99 latency above threshold',
    shedding: 'Requests are being shed',
    rate_limited: 'Requests are being rate limited',
    retry_budget_exhausted: 'The retry budget is exhausted',
    redis_degraded: 'Redis is unreachable',
    reload_failed: 'The last config reload failed',
  })[kind] || kind || '';
}

// ---------------------------------------------------------------- upstreams

function regionsByPriority(up) {
  return [...(up.regions || [])].sort((a, b) => a.priority - b.priority || a.name.localeCompare(b.name));
}

// One colour per priority level, the same in the share bar, the region
// rows and the traffic chart.
function levelIndex(up) {
  const levels = [...new Set((up.regions || []).map((r) => r.priority))].sort((a, b) => a - b);
  return new Map(levels.map((p, i) => [p, i]));
}

function renderUpstreams() {
  const box = document.getElementById('upstreams');
  if (!state.upstreams.length) {
    box.replaceChildren(h('div', { class: 'panel empty' }, 'No upstreams configured.'));
    return;
  }
  const cards = state.upstreams.map((up) => upstreamCard(up));
  box.replaceChildren(...cards);
}

function upstreamCard(up) {
  const stats = up.stats || {};
  const levels = levelIndex(up);
  return h('section', {
    class: 'panel upstream',
    dataset: { upstream: up.name, failover: String(!!up.failover_active) },
    'aria-label': `upstream ${up.name}`,
  },
  h('div', { class: 'upstream-head' },
    h('div', { class: 'upstream-name' },
      h('h2', { text: up.name }),
      up.policy ? h('span', { class: 'muted policy', text: up.policy.replace(/_/g, ' ') }) : null,
      up.failover_active ? h('span', { class: 'badge failover', title: 'Traffic has left the most preferred region' }, icon('firing'), 'failover active') : null),
    h('div', { class: 'kpis' },
      kpi('requests/s', fmt.rps(stats.requests_per_second)),
      kpi('errors', fmt.pct(stats.error_ratio), stats.error_ratio > 0.01 ? 'bad' : ''),
      kpi('p50', fmt.ms(stats.p50_ms)),
      kpi('p99', fmt.ms(stats.p99_ms)))),
  shareBar(up, levels),
  h('div', { class: 'regions' }, regionsByPriority(up).map((r) => regionRow(up, r, levels))),
  charts(up, levels));
}

function kpi(label, value, cls) {
  return h('div', { class: `kpi ${cls || ''}` }, h('span', { class: 'kpi-value', text: value }), h('span', { class: 'kpi-label', text: label }));
}

function shareBar(up, levels) {
  const regions = regionsByPriority(up);
  // `share` is per priority level; regions sharing a level split it by
  // their available endpoints.
  const perLevel = new Map();
  for (const r of regions) perLevel.set(r.priority, (perLevel.get(r.priority) || 0) + Math.max(r.available || 0, 0));
  const segments = regions.map((r) => {
    const total = perLevel.get(r.priority) || 0;
    const peers = regions.filter((x) => x.priority === r.priority).length;
    const part = total > 0 ? (r.available || 0) / total : 1 / peers;
    return { r, width: (r.share || 0) * part * 100 };
  }).filter((x) => x.width > 0.05);
  return h('div', { class: 'sharebar-wrap' },
    h('span', { class: 'sharebar-label muted', text: 'traffic' }),
    h('div', { class: 'sharebar', role: 'img', 'aria-label': `traffic share: ${regions.map((r) => `${r.name} ${fmt.share(r.share)}`).join(', ')}` },
      segments.length ? segments.map(({ r, width }) => h('div', {
        class: `seg level-${levels.get(r.priority) % 5}`, 'width%': width.toFixed(2), title: `${r.name}: ${fmt.share(r.share)}`,
      }, width >= 9 ? `${r.name} ${fmt.share(r.share)}` : '')) : h('div', { class: 'seg none' }, 'no traffic')));
}

function regionRow(up, r, levels) {
  const endpoints = (up.endpoints || []).filter((e) => e.region === r.name);
  const down = endpoints.filter((e) => e.state !== 'healthy').length;
  return h('div', {
    class: 'region', dataset: { region: r.name, priority: String(r.priority), share: String(r.share ?? 0), panic: String(!!r.panic) },
  },
  h('div', { class: 'region-head' },
    h('span', { class: `swatch level-${levels.get(r.priority) % 5}`, 'aria-hidden': 'true' }),
    h('strong', { class: 'region-name', text: r.name }),
    h('span', { class: 'muted', text: `priority ${r.priority}` }),
    h('span', { class: `avail ${r.available === 0 ? 'none' : down ? 'some' : ''}`, text: `${r.available ?? '?'}/${r.endpoints ?? endpoints.length} available` }),
    r.panic ? h('span', { class: 'badge panic', title: 'Too few healthy endpoints: levee spreads traffic over all of them' }, 'panic') : null,
    !r.share && r.available ? h('span', { class: 'badge standby', title: 'Healthy, and waiting: a more preferred region takes the traffic' }, 'standby') : null,
    h('span', { class: 'share', text: fmt.share(r.share) }, h('span', { class: 'muted', text: ' of traffic' }))),
  h('div', { class: 'tiles' }, endpoints.map((e) => tile(e))));
}

function tile(e) {
  const st = STATES.includes(e.state) ? e.state : 'unhealthy';
  const details = [];
  details.push(h('span', { title: 'weight' + (e.weight !== e.configured_weight ? ` (configured ${e.configured_weight})` : '') },
    `w ${e.weight}`, e.weight !== e.configured_weight ? h('span', { class: 'changed', text: '*' }) : null));
  details.push(h('span', { title: 'requests in flight', text: `${e.in_flight ?? 0} in flight` }));
  details.push(h('span', { title: 'recent latency', text: fmt.ms(e.latency_ms) }));
  let note = '';
  if (st === 'ejected' && typeof e.ejected_for_ms === 'number') note = `back in ${fmt.duration(e.ejected_for_ms + 999)}`;
  else if (e.last_check) note = `check ${e.last_check.result}, ${fmt.duration(e.last_check.age_ms ?? 0)} ago`;
  return h('div', {
    class: `tile state-${st}`,
    dataset: { endpoint: e.address, region: e.region, state: st },
    title: `${e.address} in ${e.region}: ${st}`,
  },
  h('div', { class: 'tile-state' }, icon(st), h('span', { class: 'state-text', text: st })),
  h('div', { class: 'tile-addr', text: e.address }),
  h('div', { class: 'tile-details' }, details),
  note ? h('div', { class: 'tile-note', text: note }) : null);
}

// ---------------------------------------------------------------- charts

// The charts span the history there is, from one to ten minutes: a levee
// that started two minutes ago fills its charts with those two minutes.
function chartSpan(points) {
  if (points.length < 2) return 60 * 1000;
  const have = points[points.length - 1].time_ms - points[0].time_ms + state.historyInterval;
  return Math.min(HISTORY_MS, Math.max(60 * 1000, have));
}

function charts(up, levels) {
  const points = state.history.get(up.name) || [];
  const end = points.length ? points[points.length - 1].time_ms : Date.now();
  const span = chartSpan(points);
  const start = end - span;
  const shown = points.filter((p) => p.time_ms > start);
  const series = (f) => shown.map((p) => [p.time_ms, f(p)]);
  const last = (f) => {
    for (let i = shown.length - 1; i >= 0; i--) {
      const v = f(shown[i]);
      if (v !== null && v !== undefined) return v;
    }
    return null;
  };
  const priorities = [...levels.keys()];
  const levelNames = priorities.map((p) => (up.regions || []).filter((r) => r.priority === p).map((r) => r.name).join(' + '));
  const frame = { start, end, span, points: shown };
  const box = h('div', { class: 'charts', onmousemove: hover, onmouseleave: unhover },
    chart('Requests/s', fmt.rps(last((p) => p.requests_per_second)), frame, fmt.rps,
      [{ data: series((p) => p.requests_per_second), cls: 'c-rps', area: true }],
      { readout: (p) => `${fmt.rps(p.requests_per_second)}/s`, summary: (max) => `peak ${fmt.rps(max)}/s` }),
    chart('Errors', fmt.pct(last((p) => p.error_ratio)), frame, fmt.pct,
      [{ data: series((p) => p.error_ratio), cls: 'c-err', area: true }],
      { minMax: 0.01, readout: (p) => fmt.pct(p.error_ratio), summary: (max) => `peak ${fmt.pct(max)}` }),
    chart('Latency', '', frame, fmt.ms,
      [{ data: series((p) => p.p99_ms), cls: 'c-p99' }, { data: series((p) => p.p50_ms), cls: 'c-p50' }],
      {
        legend: [['c-p50', 'p50', fmt.ms(last((p) => p.p50_ms))], ['c-p99', 'p99', fmt.ms(last((p) => p.p99_ms))]],
        readout: (p) => `p50 ${fmt.ms(p.p50_ms)} · p99 ${fmt.ms(p.p99_ms)}`,
      }),
    shareChart(shown, frame, priorities, levelNames));
  box.frame = frame;
  if (state.hover?.upstream === up.name) queueMicrotask(() => showCursor(box));
  return box;
}

// A cursor across the charts of one upstream, with each chart's values at
// that second. It survives the redraw every two seconds.
function hover(ev) {
  const plot = ev.target.closest?.('.plot');
  const box = ev.currentTarget;
  if (!plot) return;
  const rect = plot.getBoundingClientRect();
  const frac = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
  state.hover = { upstream: box.closest('[data-upstream]')?.dataset.upstream, frac };
  showCursor(box);
}

function unhover(ev) {
  state.hover = null;
  showCursor(ev.currentTarget);
}

function showCursor(box) {
  const frame = box.frame;
  for (const fig of box.querySelectorAll('.chart')) {
    const cursor = fig.querySelector('.cursor');
    const tip = fig.querySelector('.tip');
    if (!state.hover || !frame?.points.length) {
      cursor.hidden = true;
      tip.hidden = true;
      continue;
    }
    const t = frame.start + state.hover.frac * frame.span;
    let best = frame.points[0];
    for (const p of frame.points) if (Math.abs(p.time_ms - t) < Math.abs(best.time_ms - t)) best = p;
    const frac = (best.time_ms - frame.start) / frame.span;
    cursor.hidden = false;
    cursor.style.left = `${(frac * 100).toFixed(2)}%`;
    tip.hidden = false;
    tip.textContent = `${fmt.clock(best.time_ms)}  ${fig.readout(best)}`;
    // Beside the cursor, kept inside the chart.
    const width = cursor.parentElement.clientWidth;
    const x = frac * width;
    const left = x + 8 + tip.offsetWidth <= width ? x + 8 : Math.max(0, x - 8 - tip.offsetWidth);
    tip.style.left = `${left.toFixed(0)}px`;
  }
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * e) return m * e;
  return 10 * e;
}

const W = 600;
const H = 100;

function chartFrame(title, value, frame, maxLabel, body, opts) {
  const fig = h('figure', { class: 'chart' },
    h('figcaption', {},
      h('div', { class: 'chart-head' },
        h('span', { class: 'chart-title', text: title }),
        value ? h('span', { class: 'chart-value', text: value }) : null),
      h('div', { class: 'legend' },
        opts.legend ? opts.legend.map(([cls, name, now]) =>
          h('span', { class: `key ${cls}` }, h('i'), name, now ? h('b', { text: now }) : null)) : opts.subtitle || '\u00a0')),
    h('div', { class: 'plot' },
      h('span', { class: 'ymax', text: maxLabel }),
      s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${title} over the last ${spanLabel(frame.span)}` },
        [0, 0.5, 1].map((f) => s('line', { class: 'grid', x1: 0, x2: W, y1: (H - f * (H - 2)).toFixed(1), y2: (H - f * (H - 2)).toFixed(1) })),
        body),
      h('div', { class: 'cursor', hidden: true }),
      h('div', { class: 'tip', hidden: true })),
    h('div', { class: 'xaxis' },
      h('span', { text: `${spanLabel(frame.span)} ago` }),
      h('span', { text: spanLabel(frame.span / 2) }),
      h('span', { text: 'now' })));
  fig.readout = opts.readout || (() => '');
  return fig;
}

// "10 min", "2.5 min", "45 s": a chart's axis needs no more.
function spanLabel(ms) {
  if (ms < 60 * 1000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 30000) / 2} min`;
}

function chart(title, value, frame, format, series, opts = {}) {
  let peak = 0;
  for (const sr of series) for (const [, v] of sr.data) if (v !== null && v !== undefined && v > peak) peak = v;
  // Headroom above the peak, so that a steady line does not run along the top.
  const max = Math.max(niceMax(peak * 1.15), opts.minMax || 0);
  if (opts.summary) opts.subtitle = opts.summary(peak);
  const x = (t) => ((t - frame.start) / (frame.end - frame.start)) * W;
  const y = (v) => H - (v / max) * (H - 2);
  const body = [];
  for (const sr of series) {
    // Seconds without a value (no request) break the line.
    const runs = [];
    let run = [];
    for (const [t, v] of sr.data) {
      if (v === null || v === undefined) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push([x(t), y(v)]);
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      const line = r.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)} ${py.toFixed(1)}`).join('');
      if (sr.area) {
        const area = `${line}L${r[r.length - 1][0].toFixed(1)} ${H}L${r[0][0].toFixed(1)} ${H}Z`;
        body.push(s('path', { class: `area ${sr.cls}`, d: area }));
      }
      if (r.length === 1) body.push(s('circle', { class: `dot ${sr.cls}`, cx: r[0][0].toFixed(1), cy: r[0][1].toFixed(1), r: 1.5 }));
      else body.push(s('path', { class: `line ${sr.cls}`, d: line }));
    }
  }
  return chartFrame(title, value, frame, format(max), body, opts);
}

function shareChart(points, frame, priorities, names) {
  const x = (t) => ((t - frame.start) / (frame.end - frame.start)) * W;
  const body = [];
  if (points.length) {
    let lower = points.map(() => 0);
    priorities.forEach((_, i) => {
      const upper = points.map((p, j) => lower[j] + ((p.shares || [])[i] || 0));
      const top = points.map((p, j) => `${j ? 'L' : 'M'}${x(p.time_ms).toFixed(1)} ${(H - upper[j] * H).toFixed(1)}`).join('');
      const bottom = points.map((p, j) => [x(p.time_ms), H - lower[j] * H]).reverse()
        .map(([px, py]) => `L${px.toFixed(1)} ${py.toFixed(1)}`).join('');
      body.push(s('path', { class: `stack level-${i % 5}`, d: `${top}${bottom}Z` }));
      lower = upper;
    });
  }
  const now = points.length ? points[points.length - 1].shares || [] : [];
  return chartFrame('Traffic', '', frame, '100%', body, {
    legend: names.map((n, i) => [`level-${i % 5}`, n, fmt.share(now[i] || 0)]),
    readout: (p) => names.map((n, i) => `${n} ${fmt.share((p.shares || [])[i] || 0)}`).join(' · '),
  });
}

// ---------------------------------------------------------------- notifiers

// `failing` while the last attempt failed (after the last delivery), `ok`
// once one delivery went through, `idle` before anything was sent.
function notifierState(n) {
  if (n.last_error_ms && (!n.last_success_ms || n.last_error_ms > n.last_success_ms)) return 'failing';
  return n.last_success_ms ? 'ok' : 'idle';
}

function renderNotifiers() {
  const list = document.getElementById('notifiers');
  if (!state.notifiers.length) {
    list.replaceChildren(h('li', { class: 'none', text: 'None configured: alerts show here only.' }));
    return;
  }
  const now = Date.now();
  list.replaceChildren(...state.notifiers.map((n) => {
    const st = notifierState(n);
    const when = st === 'failing'
      ? `failing for ${fmt.duration(now - (n.last_success_ms || n.last_error_ms))}`
      : st === 'ok' ? `delivered ${fmt.duration(now - n.last_success_ms)} ago` : 'nothing sent yet';
    const counts = `${n.sent ?? 0} sent · ${n.failed ?? 0} failed · ${n.dropped ?? 0} dropped · ${n.queued ?? 0} queued`;
    return h('li', { class: `notifier state-${st}`, dataset: { notifier: n.name, state: st } },
      h('span', { class: 'event-icon' }, icon({ failing: 'firing', ok: 'resolved' }[st] || 'info')),
      h('div', { class: 'notifier-body' },
        h('div', {}, h('strong', { text: n.name }), h('span', { class: 'muted', text: ` ${n.kind} · ${when}` })),
        st === 'failing' && n.last_error ? h('div', { class: 'notifier-error', text: n.last_error }) : null,
        h('div', { class: 'muted small', text: counts })));
  }));
}

// ---------------------------------------------------------------- events

function renderEvents() {
  const list = document.getElementById('events');
  const events = [...state.events.values()].sort(order).reverse().slice(0, EVENTS_SHOWN);
  if (!events.length) {
    list.replaceChildren(h('li', { class: 'none', text: 'No events yet.' }));
    return;
  }
  list.replaceChildren(...events.map((e) => {
    const [tone, text] = describe(e);
    return h('li', { class: `event tone-${tone}`, dataset: { kind: e.kind, id: String(e.id ?? '') } },
      h('span', { class: 'event-icon' }, icon({ bad: 'firing', good: 'resolved', warn: 'pending' }[tone] || 'info')),
      h('span', { class: 'event-text', text }),
      typeof e.time_ms === 'number' ? h('time', { datetime: new Date(e.time_ms).toISOString(), text: fmt.clock(e.time_ms) }) : null);
  }));
}

function regionOfLevel(upstream, priority) {
  const up = state.upstreams.find((u) => u.name === upstream);
  const names = (up?.regions || []).filter((r) => r.priority === priority).map((r) => r.name);
  return names.length ? names.join(' + ') : `priority ${priority}`;
}

function describeShares(e) {
  return (e.shares || []).filter((x) => x.share > 0)
    .map((x) => `${regionOfLevel(e.upstream, x.priority)} ${fmt.share(x.share)}${x.panic ? ' (panic)' : ''}`).join(', ');
}

// [tone, sentence] for an event, in the words an operator would use.
function describe(e) {
  const where = `${e.region ?? ''} ${e.endpoint ?? ''}`.trim();
  switch (e.kind) {
    case 'endpoint_health':
      return e.healthy ? ['good', `${where} is back up`] : ['bad', `${where} went down`];
    case 'endpoint_ejected':
      return ['warn', `${where} ejected for ${Math.round(e.seconds ?? 0)} s (${String(e.detector ?? 'outlier').replace(/_/g, ' ')})`];
    case 'endpoint_returned':
      return ['good', `${where} returned from ejection`];
    case 'endpoint_drained':
      return e.drained ? ['warn', `${where} drained`] : ['good', `${where} undrained`];
    case 'weight_changed':
      return ['info', `${where} weight set to ${e.weight}`];
    case 'failover_started':
      return ['bad', `${e.upstream}: failover started, traffic now ${describeShares(e) || 'nowhere'}`];
    case 'failover_ended':
      return ['good', `${e.upstream}: failover ended, all traffic on ${regionOfLevel(e.upstream, 0)}`];
    case 'loads_changed':
      return ['info', `${e.upstream}: traffic now ${describeShares(e) || 'nowhere'}`];
    case 'alert': {
      const summary = e.annotations?.summary ? `: ${e.annotations.summary}` : '';
      const tone = { firing: 'bad', pending: 'warn', resolved: 'good' }[e.state] || 'info';
      return [tone, `alert ${e.rule} ${e.state}${summary}`];
    }
    case 'redis':
      return e.up
        ? ['good', `Redis ${e.address} is up: fleet-wide rate limits shared again`]
        : ['bad', `Redis ${e.address} is down: rate limits decided per instance`];
    case 'reload':
      return e.result === 'success'
        ? ['good', `config reloaded (${e.source})`]
        : ['bad', `config reload refused (${e.source})${e.errors?.length ? `: ${e.errors[0]}` : ''}`];
    case 'lagged':
      return ['warn', `missed ${e.lost ?? e.count ?? e.missed ?? 'some'} events (the page fell behind)`];
    default:
      return ['info', e.kind || 'event'];
  }
}

// ---------------------------------------------------------------- main

function render() {
  renderAlerts();
  renderUpstreams();
  renderNotifiers();
  document.body.dataset.ready = 'true';
}

function stopTimers() {
  for (const t of state.timers) {
    clearTimeout(t);
    clearInterval(t);
  }
  state.timers = [];
}

async function start() {
  stopTimers();
  document.getElementById('token').hidden = true;
  await refresh();
  if (!document.getElementById('token').hidden) return;
  await Promise.all([loadStatus(), loadRecent()]);
  if (!document.getElementById('token').hidden) return;
  connectStream();
  state.timers.push(setInterval(() => refresh(), POLL_MS));
  state.timers.push(setInterval(() => loadStatus(), STATUS_MS));
  state.timers.push(setInterval(() => {
    renderUptime();
  }, 1000));
}

setupTokenForm();
start();
