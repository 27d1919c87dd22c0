// The agent's dashboard: follows /events (server-sent events, one JSON object each), keeps the
// last window of points and draws them as SVG, with no library. What it shows is also written
// into data-* attributes (the split and the values it took, the points of each plot, the events
// received), which is what tests/tests/dashboard.rs reads from a headless browser.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2'];

const view = {
  channel: [], // {unix_ms, mean_snr_db, realized_snr_db, loss_rate, erasure_rate, ...}
  decisions: [], // {unix_ms, k, epoch, policy, reason}
  ue: [], // {unix_ms, name, k, tokens, tokens_per_s, token_latency_ms}
  ues: [],
  current: null,
  nowMs: Date.now(),
  windowMs: 300000,
  nLayers: 30,
};
let events = 0;
// The split values the page has shown, in order (a value once per run of it), and how many times
// k changed in events after the first.
const shownKs = [];
let liveChanges = 0;
// The newest epoch seen (a reconnection replays the window's decisions), and whether the next
// event is a connection's first, which brings history rather than news.
let lastEpoch = -1n;
let fresh = true;

function $(id) { return document.getElementById(id); }

function pad(n) { return String(n).padStart(2, '0'); }

function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function svgEl(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

// null (a non-finite value in JSON) is a gap.
function num(v) { return v === null || v === undefined ? NaN : v; }

// About n round values covering [lo, hi].
function ticks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

// Draws `series` ({name, color, points: [[t, v]], step, dots, titles}) on `svg` over [t0, t1].
// o.ymin / o.ymax fix the value axis; o.ymaxAtLeast widens an automatic one.
function plot(svg, series, t0, t1, o) {
  const w = svg.clientWidth || 600;
  const h = svg.clientHeight || 150;
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const m = { l: 46, r: 10, t: 16, b: 18 };
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  let lo = o.ymin ?? (values.length ? Math.min(...values) : 0);
  let hi = o.ymax ?? (values.length ? Math.max(...values) : 1);
  if (o.ymaxAtLeast !== undefined) hi = Math.max(hi, o.ymaxAtLeast);
  if (hi - lo < 1e-9) {
    hi += 1;
    if (o.ymin === undefined) lo -= 1;
  }
  const x = (t) => m.l + ((t - t0) / Math.max(t1 - t0, 1)) * (w - m.l - m.r);
  const y = (v) => h - m.b - ((v - lo) / (hi - lo)) * (h - m.t - m.b);
  const axes = svgEl('g', {}, svg);
  for (const v of ticks(lo, hi, 4)) {
    svgEl('line', { x1: m.l, x2: w - m.r, y1: y(v), y2: y(v), stroke: '#e5e8ee' }, axes);
    svgEl('text', { x: m.l - 4, y: y(v) + 4, 'text-anchor': 'end' }, axes).textContent = String(v);
  }
  const spanS = (t1 - t0) / 1000;
  const stepS = [5, 10, 15, 30, 60, 120, 300].find((s) => spanS / s <= 6) || 600;
  for (let t = Math.ceil(t0 / (stepS * 1000)) * stepS * 1000; t <= t1; t += stepS * 1000) {
    svgEl('line', { x1: x(t), x2: x(t), y1: m.t, y2: h - m.b, stroke: '#eef0f4' }, axes);
    svgEl('text', { x: x(t), y: h - 4, 'text-anchor': 'middle' }, axes).textContent = clock(t);
  }
  svgEl('rect', { x: m.l, y: m.t, width: w - m.l - m.r, height: h - m.t - m.b, fill: 'none', stroke: '#c5cad3' }, axes);
  let drawn = 0;
  let legendX = w - m.r;
  for (const s of [...series].reverse()) {
    const label = svgEl('text', { x: legendX, y: 11, 'text-anchor': 'end', fill: s.color }, svg);
    label.textContent = s.name;
    legendX -= 8 + 6.5 * s.name.length;
  }
  for (const s of series) {
    let d = '';
    let open = false;
    for (const [t, v] of s.points) {
      if (!Number.isFinite(v)) {
        open = false;
        continue;
      }
      drawn += 1;
      if (!open) d += `M${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      else if (s.step) d += `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
      else d += `L${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      open = true;
    }
    if (d) svgEl('path', { d, fill: 'none', stroke: s.color, 'stroke-width': s.width || 1.5 }, svg);
    if (s.dots) {
      s.points.forEach(([t, v], i) => {
        if (!Number.isFinite(v) || (s.dotsUntil !== undefined && i >= s.dotsUntil)) return;
        const c = svgEl('circle', { cx: x(t), cy: y(v), r: 3, fill: s.color }, svg);
        if (s.titles) svgEl('title', {}, c).textContent = s.titles[i];
      });
    }
  }
  svg.dataset.points = String(drawn);
}

function byName(points) {
  const names = [...new Set(points.map((p) => p.name))].sort();
  return names.map((name, i) => ({ name, color: COLORS[i % COLORS.length], points: points.filter((p) => p.name === name) }));
}

function draw() {
  const t1 = view.nowMs;
  const first = Math.min(...[view.channel, view.decisions, view.ue].filter((a) => a.length).map((a) => a[0].unix_ms), t1 - 10000);
  const t0 = Math.max(t1 - view.windowMs, first);
  const ch = view.channel;
  plot($('plot-snr'), [
    { name: 'mean', color: COLORS[0], step: true, width: 2, points: ch.map((p) => [p.unix_ms, num(p.mean_snr_db)]) },
    { name: 'realized', color: COLORS[1], width: 1, points: ch.map((p) => [p.unix_ms, num(p.realized_snr_db)]) },
  ], t0, t1, {});
  plot($('plot-loss'), [
    { name: 'loss', color: COLORS[1], points: ch.map((p) => [p.unix_ms, num(p.loss_rate)]) },
    { name: 'erasure', color: COLORS[3], points: ch.map((p) => [p.unix_ms, num(p.erasure_rate)]) },
  ], t0, t1, { ymin: 0, ymaxAtLeast: 0.05 });
  // The split in force holds until the next decision, and up to now for the last.
  const ds = view.decisions;
  const splitPoints = ds.map((d) => [Math.max(d.unix_ms, t0), d.k]);
  if (ds.length) splitPoints.push([t1, ds[ds.length - 1].k]);
  else if (view.current) splitPoints.push([t0, view.current.k], [t1, view.current.k]);
  plot($('plot-split'), [{
    name: 'k', color: COLORS[2], step: true, width: 2, dots: true, dotsUntil: ds.length,
    titles: ds.map((d) => `${clock(d.unix_ms)} k=${d.k} (${d.policy}): ${d.reason}`), points: splitPoints,
  }], t0, t1, { ymin: 0, ymax: view.nLayers });
  const ue = byName(view.ue);
  plot($('plot-rate'), ue.map((s) => ({ ...s, points: s.points.map((p) => [p.unix_ms, p.tokens_per_s > 0 ? p.tokens_per_s : NaN]) })), t0, t1, { ymin: 0 });
  plot($('plot-latency'), ue.map((s) => ({ ...s, points: s.points.map((p) => [p.unix_ms, p.token_latency_ms > 0 ? p.token_latency_ms : NaN]) })), t0, t1, { ymin: 0 });
}

function showUes() {
  const box = $('ues');
  if (!view.ues.length) return;
  box.querySelector('.none')?.remove();
  for (const u of view.ues) {
    const id = `ue-${u.name}`;
    let div = document.getElementById(id);
    if (!div) {
      div = document.createElement('div');
      div.id = id;
      div.className = 'ue';
      for (const cls of ['head', 'nums']) div.appendChild(document.createElement('div')).className = cls;
      div.appendChild(document.createElement('pre'));
      box.appendChild(div);
    }
    div.dataset.tokens = String(u.tokens);
    div.dataset.finished = String(u.finished);
    div.querySelector('.head').textContent = `${u.name}${u.finished ? ' (finished)' : ''}`;
    div.querySelector('.nums').textContent =
      `k=${u.k}  ${u.tokens} tokens  ${u.tokens_per_s.toFixed(1)} tokens/s  ${u.token_latency_ms.toFixed(1)} ms/token`;
    const pre = div.querySelector('pre');
    // Runs of blank lines (a model on a bad channel emits many) would scroll the text out of view.
    const text = u.text.replace(/\n\s*\n(\s*\n)+/g, '\n\n').trimEnd();
    if (pre.textContent !== text) {
      pre.textContent = text;
      pre.scrollTop = pre.scrollHeight;
    }
  }
}

function showDecisions(changed) {
  if (!changed) return;
  const rows = view.decisions.slice(-100).reverse().map((d) => {
    const tr = document.createElement('tr');
    for (const [text, cls] of [[clock(d.unix_ms), ''], [String(d.k), 'num'], [`…${d.epoch.slice(-6)}`, 'num'], [d.policy, ''], [d.reason, '']]) {
      const td = tr.appendChild(document.createElement('td'));
      td.textContent = text;
      if (cls) td.className = cls;
    }
    tr.title = `epoch ${d.epoch}`;
    return tr;
  });
  const table = $('decisions');
  table.tBodies[0].replaceChildren(...rows);
  table.dataset.rows = String(rows.length);
}

function showSplit(u) {
  const split = $('split');
  if (u.current) {
    split.dataset.k = String(u.current.k);
    split.dataset.epoch = u.current.epoch;
    $('split-k').textContent = `k = ${u.current.k} / ${u.n_layers}`;
    $('split-epoch').textContent = `epoch ${u.current.epoch}`;
    $('split-reason').textContent = `${u.current.policy}: ${u.current.reason}`;
  }
  split.dataset.ks = shownKs.join(',');
  split.dataset.liveChanges = String(liveChanges);
  const link = u.stats_connected ? 'statistics up' : 'statistics DOWN';
  const pin = u.pinned_k === null || u.pinned_k === undefined ? '' : ` · pinned k=${u.pinned_k}`;
  $('status').textContent = `policy ${u.policy} · L = ${u.n_layers} · ${link} · ${u.observations} observations${pin} · updated ${clock(u.now_ms)}`;
}

function apply(u) {
  events += 1;
  view.nowMs = u.now_ms;
  view.windowMs = u.window_ms;
  view.nLayers = u.n_layers;
  view.ues = u.ues;
  view.current = u.current;
  const live = !fresh;
  fresh = false;
  let newDecisions = false;
  for (const p of u.points) {
    if (p.kind === 'channel') view.channel.push(p);
    else if (p.kind === 'ue') view.ue.push(p);
    else if (p.kind === 'decision') {
      view.decisions.push(p);
      newDecisions = true;
      if (BigInt(p.epoch) <= lastEpoch) continue;
      lastEpoch = BigInt(p.epoch);
      const last = shownKs[shownKs.length - 1];
      if (last !== p.k) {
        if (live && last !== undefined) liveChanges += 1;
        shownKs.push(p.k);
      }
    }
  }
  const oldest = u.now_ms - u.window_ms;
  view.channel = view.channel.filter((p) => p.unix_ms >= oldest);
  view.ue = view.ue.filter((p) => p.unix_ms >= oldest);
  // The decision in force at the window's start stays, to draw the split from there.
  while (view.decisions.length > 1 && view.decisions[1].unix_ms < oldest) view.decisions.shift();
  showSplit(u);
  draw();
  showUes();
  showDecisions(newDecisions);
  document.body.dataset.events = String(events);
}

function connect() {
  const source = new EventSource('/events');
  source.addEventListener('open', () => {
    // Every (re)connection starts with the whole window again.
    view.channel = [];
    view.decisions = [];
    view.ue = [];
    fresh = true;
    document.body.dataset.connected = 'true';
  });
  source.addEventListener('update', (e) => apply(JSON.parse(e.data)));
  source.addEventListener('error', () => {
    document.body.dataset.connected = 'false';
    $('status').textContent = 'disconnected from the agent; reconnecting…';
  });
}

window.addEventListener('resize', draw);
connect();
