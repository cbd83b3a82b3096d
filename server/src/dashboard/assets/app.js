// surge dashboard: reads one JSON frame per second from /dashboard/events
// (server-sent events) and redraws the numbers and the charts. No library,
// nothing loaded from elsewhere: it must work on an air-gapped host.
"use strict";

const HISTORY_MS = 5 * 60 * 1000;
const series = new Map(); // chart name -> [{t, v: [..]}]
let lastFrame = null;

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => document.querySelectorAll(sel);

function fmtNum(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + " G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + " M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + " k";
  return v.toFixed(digits);
}
function fmtRate(v) { return v === null || v === undefined ? "–" : fmtNum(v, v > 0 && v < 10 ? 1 : 0); }
function fmtBytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
}
function fmtMs(v) { return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms"; }
function fmtPct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }
function fmtUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function set(key, text) {
  for (const el of $$(`[data-k="${key}"]`)) el.textContent = text;
}
function bar(key, share) {
  const el = $(`[data-bar="${key}"]`);
  if (!el) return;
  el.style.width = Math.min(100, Math.max(0, share * 100)).toFixed(1) + "%";
  el.classList.toggle("warn", share >= 0.8 && share < 0.95);
  el.classList.toggle("bad", share >= 0.95);
}
function td(text, cls) {
  const cell = document.createElement("td");
  if (cls) cell.className = cls;
  cell.textContent = text;
  return cell;
}
function rows(tbodyId, items, make) {
  const body = document.getElementById(tbodyId);
  body.replaceChildren(...items.map(make));
}

// A small line chart in SVG: `points` are {t, v: [values per line]}.
function chart(name, points, format) {
  const box = $(`[data-chart="${name}"]`);
  if (!box) return;
  const W = 320, H = 70, top = 12, bottom = H - 2;
  // The last 5 minutes once there are 5 minutes of points; until then the
  // points there are, over at least one minute.
  const now = points.length ? points[points.length - 1].t : Date.now();
  const span = Math.min(HISTORY_MS, Math.max(60 * 1000, points.length ? now - points[0].t : 0));
  const t0 = now - span;
  let max = 0;
  for (const p of points) for (const v of p.v) if (v !== null && v > max) max = v;
  const scale = max > 0 ? max : 1;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const grid = document.createElementNS(ns, "line");
  grid.setAttribute("class", "grid");
  grid.setAttribute("x1", "0"); grid.setAttribute("x2", String(W));
  grid.setAttribute("y1", String(bottom)); grid.setAttribute("y2", String(bottom));
  svg.appendChild(grid);
  const lines = points.length ? points[0].v.length : 0;
  for (let i = 0; i < lines; i++) {
    const coords = [];
    for (const p of points) {
      const v = p.v[i];
      if (v === null || v === undefined || p.t < t0) continue;
      const x = ((p.t - t0) / span) * W;
      const y = bottom - (v / scale) * (bottom - top);
      coords.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    }
    if (coords.length) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", `s${i}`);
      line.setAttribute("points", coords.join(" "));
      svg.appendChild(line);
    }
  }
  const label = document.createElementNS(ns, "text");
  label.setAttribute("class", "label");
  label.setAttribute("x", "2"); label.setAttribute("y", "10");
  label.textContent = `${box.dataset.title || name} · last ${Math.round(span / 1000)} s · max ${format(max)}`;
  svg.appendChild(label);
  box.replaceChildren(svg);
}

const CHARTS = {
  connections: { title: "connections", format: (v) => fmtNum(v), pick: (f) => [f.connections.current] },
  refusals: {
    title: "admitted/s (blue), refused/s (red)", format: fmtRate,
    pick: (f) => [f.admissions.per_s, f.refusals.reduce((s, r) => s + (r.per_s || 0), 0)],
  },
  p99: { title: "handshake p50 (blue), p99 (red)", format: fmtMs, pick: (f) => [f.handshake.p50_ms, f.handshake.p99_ms] },
  delivered: { title: "deliveries/s", format: fmtRate, pick: (f) => [f.delivered.per_s] },
  bytes: { title: "bytes/s", format: fmtBytes, pick: (f) => [f.bytes_sent.per_s] },
  dropped: { title: "dropped/s", format: fmtRate, pick: (f) => [f.dropped.reduce((s, d) => s + (d.per_s || 0), 0)] },
  lag: { title: "broker lag (messages)", format: (v) => fmtNum(v), pick: (f) => [f.broker.lag] },
  cpu: { title: "CPU %", format: (v) => v.toFixed(1) + " %", pick: (f) => [f.process.cpu_percent] },
  rss: { title: "RSS", format: fmtBytes, pick: (f) => [f.process.memory_bytes] },
};

function remember(frame) {
  for (const [name, c] of Object.entries(CHARTS)) {
    const list = series.get(name) || [];
    list.push({ t: frame.at_ms, v: c.pick(frame) });
    while (list.length && list[0].t < frame.at_ms - HISTORY_MS) list.shift();
    series.set(name, list);
  }
}

function drawCharts() {
  for (const [name, c] of Object.entries(CHARTS)) {
    const box = $(`[data-chart="${name}"]`);
    if (box) box.dataset.title = c.title;
    chart(name, series.get(name) || [], c.format);
  }
}

function render(f) {
  lastFrame = f;
  const ready = $("#ready");
  ready.dataset.state = f.ready ? "ok" : "bad";
  ready.textContent = f.ready ? "ready" : `not ready: ${f.not_ready}`;
  const status = $("#status");
  status.dataset.state = f.status === "ok" ? "ok" : "warn";
  status.textContent = f.status;
  $("#problems").replaceChildren(...f.problems.map((p) => {
    const li = document.createElement("li");
    li.textContent = p;
    return li;
  }));
  set("version", f.version);
  set("uptime", fmtUptime(f.uptime_s));
  set("viewers", String(f.viewers));

  set("connections.current", fmtNum(f.connections.current));
  set("connections.max", fmtNum(f.connections.max));
  set("connections.utilization", fmtPct(f.connections.utilization));
  set("connections.handshaking", fmtNum(f.connections.handshaking));
  set("admissions.per_s", fmtRate(f.admissions.per_s));
  set("admissions.total", fmtNum(f.admissions.total));
  bar("connections.utilization", f.connections.utilization);
  $("#panel-connections").classList.toggle("bad", f.connections.utilization >= 0.95);

  set("imbalance_percent", f.imbalance_percent.toFixed(1));
  rows("shards", f.shards, (s) => {
    const tr = document.createElement("tr");
    tr.dataset.shard = String(s.id);
    const util = document.createElement("td");
    const b = document.createElement("div");
    b.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill" + (s.utilization >= 0.95 ? " bad" : s.utilization >= 0.8 ? " warn" : "");
    fill.style.width = (s.utilization * 100).toFixed(1) + "%";
    b.appendChild(fill);
    util.appendChild(b);
    util.title = fmtPct(s.utilization);
    tr.append(td(String(s.id)), td(fmtNum(s.connections)), td(fmtNum(s.capacity)), util, td(fmtNum(s.backlog)));
    return tr;
  });

  const refusedPerS = f.refusals.reduce((s, r) => s + (r.per_s || 0), 0);
  set("refusals.per_s", fmtRate(f.interval_s === null ? null : refusedPerS));
  rows("refusals", f.refusals, (r) => {
    const tr = document.createElement("tr");
    tr.dataset.cause = r.cause;
    if (r.total > 0) tr.classList.add("hot");
    if (r.per_s > 0) tr.classList.add("bad");
    tr.append(td(String(r.status)), td(r.cause.replaceAll("_", " ")), td(fmtRate(r.per_s), "per-s"), td(fmtNum(r.total), "total"));
    return tr;
  });
  $("#panel-refusals").classList.toggle("warn", refusedPerS > 0);

  set("handshake.window_s", f.handshake.window_s.toFixed(0));
  set("handshake.count", fmtNum(f.handshake.count));
  set("handshake.p50_ms", fmtMs(f.handshake.p50_ms));
  set("handshake.p90_ms", fmtMs(f.handshake.p90_ms));
  set("handshake.p99_ms", fmtMs(f.handshake.p99_ms));

  set("delivered.per_s", fmtRate(f.delivered.per_s));
  set("bytes_sent.per_s", f.bytes_sent.per_s === null ? "–" : fmtBytes(f.bytes_sent.per_s) + "/s");
  set("published.per_s", fmtRate(f.published.per_s));
  set("queue_bytes", fmtBytes(f.queue_bytes));

  for (const level of ["none", "light", "medium", "heavy"]) set(`throttled.${level}`, fmtNum(f.throttled[level]));
  rows("dropped", f.dropped, (d) => {
    const tr = document.createElement("tr");
    tr.dataset.reason = d.reason;
    if (d.per_s > 0) tr.classList.add("hot");
    tr.append(td(d.reason.replaceAll("_", " ")), td(fmtRate(d.per_s), "per-s"), td(fmtNum(d.total), "total"));
    return tr;
  });
  const throttledNow = f.throttled.light + f.throttled.medium + f.throttled.heavy;
  $("#panel-throttle").classList.toggle("warn", throttledNow > 0 || f.dropped.some((d) => d.per_s > 0));

  const replay = [
    ["replayed frames", f.replay.replayed], ["resumes", f.replay.resumes],
    ["recovered frames", f.replay.recovered], ["resume gaps", f.replay.resume_gaps],
    ["deduplicated", f.replay.deduplicated],
  ];
  rows("replay", replay, ([name, r]) => {
    const tr = document.createElement("tr");
    tr.append(td(name), td(fmtRate(r.per_s)), td(fmtNum(r.total)));
    return tr;
  });

  const broker = $("#panel-broker");
  const brokerState = !f.broker.connected ? "disconnected" : f.broker.paused ? "paused" : "connected";
  broker.dataset.state = brokerState;
  broker.classList.toggle("bad", !f.broker.connected);
  broker.classList.toggle("warn", f.broker.connected && (f.broker.paused || (f.broker.lag || 0) > 1000));
  set("broker.kind", f.broker.kind);
  set("broker.state", brokerState);
  set("broker.last_sseq", f.broker.last_sseq === null ? "–" : String(f.broker.last_sseq));
  set("broker.stream_last_sseq", f.broker.stream_last_sseq === null ? "–" : String(f.broker.stream_last_sseq));
  set("broker.lag", f.broker.lag === null ? "–" : fmtNum(f.broker.lag));
  set("broker.paused", f.broker.paused ? "yes" : "no");
  set("broker.disconnects", fmtNum(f.broker.disconnects));

  const p = f.process;
  set("process.cpu_percent", p.cpu_percent.toFixed(1) + " %");
  set("process.memory_bytes", fmtBytes(p.memory_bytes));
  set("process.memory_reject_bytes", p.memory_reject_bytes === null ? "–" : fmtBytes(p.memory_reject_bytes));
  set("process.fds", p.open_fds === null ? "–" : `${fmtNum(p.open_fds)} / ${p.max_fds === null ? "?" : fmtNum(p.max_fds)}`);
  const memShare = p.memory_reject_bytes ? p.memory_bytes / p.memory_reject_bytes : 0;
  const fdShare = p.open_fds && p.max_fds ? p.open_fds / p.max_fds : 0;
  $("#panel-process").classList.toggle("bad", memShare >= 0.9 || fdShare >= 0.9);

  remember(f);
  drawCharts();
}

function connect() {
  const stream = $("#stream");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("history", (e) => {
    for (const frame of JSON.parse(e.data)) remember(frame);
  });
  source.addEventListener("frame", (e) => {
    stream.dataset.state = "live";
    stream.textContent = "live";
    render(JSON.parse(e.data));
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself after a network error; it gives up
    // only on an answer that is not a stream (a 401 once surge restarted
    // with a new session key): reload, which shows the token form.
    if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 3000);
    stream.dataset.state = "down";
    stream.textContent = lastFrame ? "reconnecting… (numbers are stale)" : "cannot reach /dashboard/events";
  });
}

document.addEventListener("DOMContentLoaded", connect);
