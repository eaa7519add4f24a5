// ftvm dash: draws the frames /events pushes (one a poll) on canvases.
// No library: each chart is a few lines of 2D canvas code.
"use strict";
(function () {
  const HISTORY = 480;            // points kept, as the server's default
  const points = [];              // Point, oldest first
  const events = [];              // Event, oldest first
  const seen = new Set();
  let last = null;                // latest frame
  const updateLatencies = [];     // ms from the poll's start to the page drawn
  window.ftvm = { points, events, updateLatencies, last: () => last };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };

  function fmtSec(s) {
    if (!(s > 0)) return "0";
    if (s < 1e-3) return (s * 1e6).toFixed(s < 1e-5 ? 1 : 0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(s < 1e-2 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }
  function fmtBps(b) {
    if (b >= 1e9) return (b / 1e9).toFixed(2) + " Gbit/s";
    if (b >= 1e6) return (b / 1e6).toFixed(2) + " Mbit/s";
    if (b >= 1e3) return (b / 1e3).toFixed(1) + " kbit/s";
    return b.toFixed(0) + " bit/s";
  }
  function fmtTime(ms) { const d = new Date(ms); return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0"); }

  // --- canvases -----------------------------------------------------------
  function ctxOf(id) {
    const c = $(id), r = c.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(r.width * dpr) || c.height !== Math.round(r.height * dpr)) {
      c.width = Math.round(r.width * dpr); c.height = Math.round(r.height * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, r.width, r.height);
    g.font = "11px system-ui, sans-serif";
    return { g, w: r.width, h: r.height };
  }
  const PAD = { l: 58, r: 10, t: 8, b: 18 };

  // timeChart draws series over time: series = [{key, color, dash}], y log or linear.
  function timeChart(id, series, opts) {
    const { g, w, h } = ctxOf(id);
    const pw = w - PAD.l - PAD.r, ph = h - PAD.t - PAD.b;
    if (points.length < 2) { g.fillStyle = "#889"; g.fillText("waiting for data…", PAD.l + 8, PAD.t + 20); return; }
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    let lo = Infinity, hi = -Infinity;
    for (const p of points) for (const s of series) { const v = s.value(p); if (v === null) continue; if (opts.log && v <= 0) continue; lo = Math.min(lo, v); hi = Math.max(hi, v); }
    // Show the bands up to a little past the last threshold.
    if (opts.bands) hi = Math.max(hi, opts.bands[opts.bands.length - 1].from * 1.5);
    if (!isFinite(lo)) { lo = opts.log ? 1e-6 : 0; hi = opts.log ? 1e-3 : 1; }
    if (!opts.log) { lo = 0; if (hi <= 0) hi = 1; hi *= 1.1; }
    else { lo = Math.pow(10, Math.floor(Math.log10(lo))); hi = Math.pow(10, Math.ceil(Math.log10(hi))); if (hi <= lo) hi = lo * 10; }
    const X = (t) => PAD.l + (t1 === t0 ? 0 : (t - t0) / (t1 - t0) * pw);
    const Y = opts.log ? (v) => PAD.t + ph - (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) * ph
                       : (v) => PAD.t + ph - (v - lo) / (hi - lo) * ph;
    if (opts.bands) for (const b of opts.bands) {
      const y0 = Y(Math.min(b.to, hi)), y1 = Y(Math.max(b.from, lo));
      g.fillStyle = b.color; g.fillRect(PAD.l, y0, pw, y1 - y0);
    }
    g.strokeStyle = "#dde"; g.fillStyle = "#556"; g.lineWidth = 1;
    const ticks = [];
    if (opts.log) for (let v = lo; v <= hi * 1.0001; v *= 10) ticks.push(v);
    else for (let i = 0; i <= 4; i++) ticks.push(lo + (hi - lo) * i / 4);
    for (const v of ticks) { const y = Y(v); g.beginPath(); g.moveTo(PAD.l, y); g.lineTo(PAD.l + pw, y); g.stroke(); g.fillText(opts.fmt(v), 2, y + 4); }
    g.fillText(fmtTime(t0).slice(0, 8), PAD.l, h - 4);
    const r = fmtTime(t1).slice(0, 8); g.fillText(r, PAD.l + pw - g.measureText(r).width, h - 4);
    // event markers
    for (const e of events) {
      if (e.t < t0 || e.t > t1) continue;
      if (!["failover", "down", "resync", "divergence", "join", "joined"].includes(e.kind)) continue;
      g.strokeStyle = e.kind === "failover" || e.kind === "down" ? "#d93a3a" : e.kind === "divergence" || e.kind === "resync" ? "#c08a00" : "#2f6fd6";
      g.setLineDash([3, 3]); g.beginPath(); g.moveTo(X(e.t), PAD.t); g.lineTo(X(e.t), PAD.t + ph); g.stroke(); g.setLineDash([]);
    }
    for (const s of series) {
      g.strokeStyle = s.color; g.lineWidth = 1.6; g.setLineDash(s.dash || []);
      g.beginPath(); let pen = false;
      for (const p of points) {
        const v = s.value(p);
        if (v === null || (opts.log && v <= 0)) { pen = false; continue; }
        const x = X(p.t), y = Y(Math.min(Math.max(v, lo), hi));
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      }
      g.stroke(); g.setLineDash([]);
    }
    let lx = PAD.l + 6;
    for (const s of series) { if (!s.label) continue; g.fillStyle = s.color; g.fillRect(lx, PAD.t + 2, 10, 3); g.fillStyle = "#334"; g.fillText(s.label, lx + 13, PAD.t + 8); lx += g.measureText(s.label).width + 26; }
  }

  function distChart(id, bars) {
    const { g, w, h } = ctxOf(id);
    const pw = w - PAD.l - PAD.r, ph = h - PAD.t - PAD.b;
    const max = Math.max(1, ...bars.map((b) => b.n));
    const bw = pw / bars.length;
    g.fillStyle = "#556";
    for (let i = 0; i <= 4; i++) { const v = max * i / 4, y = PAD.t + ph - v / max * ph; g.fillText(v.toFixed(0), 2, y + 4); }
    bars.forEach((b, i) => {
      const bh = b.n / max * ph;
      g.fillStyle = "#2f6fd6"; g.fillRect(PAD.l + i * bw + 1, PAD.t + ph - bh, Math.max(1, bw - 2), bh);
      if (i % 4 === 3) { g.fillStyle = "#556"; g.fillText(fmtSec(b.le_s), PAD.l + i * bw - 8, h - 4); }
    });
  }

  // --- host cards ---------------------------------------------------------
  function card(hv) {
    let c = document.querySelector(`.host[data-host="${hv.name}"]`);
    if (!c) {
      c = el("div", "host"); c.dataset.host = hv.name;
      c.innerHTML = `<h2><span class="name"></span><span class="badge" data-field="role"></span><span class="dot" data-field="lagdot" title="lag colour"></span></h2>
<table><tr><td>epoch</td><td data-field="epoch"></td><td>protected</td><td data-field="protected"></td></tr>
<tr><td>lag</td><td data-field="lag"></td><td>held outputs</td><td data-field="held"></td></tr>
<tr><td>outputs timed</td><td data-field="hold_count"></td><td>released</td><td data-field="released"></td></tr>
<tr><td>failovers</td><td data-field="failovers"></td><td>divergences</td><td data-field="divergences"></td></tr>
<tr><td>resyncs/restores</td><td data-field="restores"></td><td>stalls</td><td data-field="stalls"></td></tr>
<tr><td>log bandwidth</td><td data-field="bandwidth"></td><td>round trip</td><td data-field="rtt"></td></tr>
<tr><td>transport</td><td data-field="transport"></td><td>joins</td><td data-field="joins"></td></tr></table>
<div class="prog" title="join progress"><div data-field="joinbar" style="width:0"></div></div>`;
      c.querySelector(".name").textContent = hv.name;
      $("hosts").appendChild(c);
    }
    const set = (f, v) => { const e = c.querySelector(`[data-field="${f}"]`); if (e.textContent !== String(v)) e.textContent = v; };
    const s = hv.sample;
    c.classList.toggle("down", !hv.up);
    const role = c.querySelector('[data-field="role"]');
    role.className = "badge " + (hv.up ? (s ? s.role : "") : "down");
    role.textContent = hv.up ? (s ? s.role : "?") : "DOWN";
    c.querySelector('[data-field="lagdot"]').className = "dot " + (hv.up ? hv.lag_color : "");
    if (!s) return;
    set("epoch", s.epoch);
    set("protected", s.role === "primary" ? (s.protected ? "yes" : "NO") : "–");
    set("lag", s.role === "primary" ? `${s.lag_entries} entries · ${s.lag_s === 0 && s.lag_entries > 0 ? "< 10 ms" : fmtSec(s.lag_s)} · ${s.lag_bytes} B` : `${s.replay_backlog_entries} to replay`);
    set("held", s.held_outputs);
    set("hold_count", hv.up ? hv.hold_count : "–");
    set("released", s.released_outputs);
    set("failovers", s.failovers);
    set("divergences", s.divergences);
    set("restores", s.role === "primary" ? s.checkpoint_pauses + " pauses, " + fmtSec(s.checkpoint_pause_s) : s.checkpoints_restored);
    set("stalls", s.stalls);
    set("bandwidth", hv.up ? fmtBps(hv.bandwidth_bps) : "–");
    set("rtt", hv.up ? fmtSec(hv.rtt_s) : "–");
    set("transport", s.transport);
    set("joins", s.joins);
    const pct = s.join_total_bytes > 0 ? Math.min(100, 100 * s.join_sent_bytes / s.join_total_bytes) : 0;
    c.querySelector('[data-field="joinbar"]').style.width = (s.syncing || s.protected ? pct : 0) + "%";
  }

  function addEvents(list) {
    const ol = $("events");
    for (const e of list) {
      if (seen.has(e.id)) continue;
      seen.add(e.id); events.push(e);
      const li = el("li", e.kind); li.dataset.kind = e.kind; li.dataset.host = e.host;
      li.appendChild(el("time", "", fmtTime(e.t)));
      li.appendChild(document.createTextNode(e.text));
      ol.insertBefore(li, ol.firstChild);
    }
  }

  function draw(f) {
    const lagBands = [
      { from: 0, to: f.lag_yellow_s, color: "rgba(59,181,74,.10)" },
      { from: f.lag_yellow_s, to: f.lag_red_s, color: "rgba(230,184,0,.15)" },
      { from: f.lag_red_s, to: 1e9, color: "rgba(217,58,58,.10)" },
    ];
    timeChart("c-lat", [
      { label: "p50", color: "#3bb54a", value: (p) => (p.n > 0 ? p.p50_s : null) },
      { label: "p99", color: "#2f6fd6", value: (p) => (p.n > 0 ? p.p99_s : null) },
      { label: "p99.9", color: "#d93a3a", value: (p) => (p.n > 0 ? p.p999_s : null) },
    ], { log: true, fmt: fmtSec });
    distChart("c-dist", f.dist);
    timeChart("c-lag", [{ label: "lag", color: "#333", value: (p) => (p.primary ? p.lag_s : null) }], { log: false, fmt: fmtSec, bands: lagBands });
    timeChart("c-bw", [{ label: "log bandwidth", color: "#7a3fc4", value: (p) => (p.primary ? p.bandwidth_bps : null) }], { log: false, fmt: fmtBps });
    timeChart("c-rtt", [{ label: "round trip", color: "#0a8a8a", value: (p) => (p.primary && p.rtt_s > 0 ? p.rtt_s : null) }], { log: false, fmt: fmtSec });
    const ln = $("lag-now");
    ln.className = "lag " + (f.pair.lag_color || "");
    // A lag of entries written since the sampler's last point (10 ms) is
    // under its resolution.
    const lagText = (s, n) => (s === 0 && n > 0 ? "< 10 ms" : fmtSec(s));
    ln.textContent = f.pair.primary ? `${lagText(f.pair.lag_s, f.pair.lag_entries)} (${f.pair.lag_entries} entries)` : "no primary";
    $("bw-now").textContent = f.pair.primary ? fmtBps(f.pair.bandwidth_bps) : "–";
    $("rtt-now").textContent = f.pair.primary ? fmtSec(f.pair.rtt_s) : "–";
    const vm = f.hosts.find((h) => h.sample);
    if (vm) $("vm").textContent = "vm " + vm.sample.vm + (f.pair.primary ? " · primary " + f.pair.primary : " · NO PRIMARY");
  }

  function onFrame(f) {
    if (f.history) for (const p of f.history) if (!points.length || p.t > points[points.length - 1].t) points.push(p);
    if (!points.length || f.pair.t > points[points.length - 1].t) points.push(f.pair);
    while (points.length > HISTORY) points.shift();
    addEvents(f.events || []);
    for (const hv of f.hosts) card(hv);
    draw(f);
    last = f;
    const lat = Date.now() - f.t_ms;
    updateLatencies.push(lat);
    if (updateLatencies.length > 1000) updateLatencies.shift();
    $("updlat").textContent = lat + " ms";
    document.body.dataset.seq = f.seq;
  }

  setInterval(() => { if (last) $("age").textContent = ((Date.now() - last.t_ms) / 1000).toFixed(1) + " s ago"; }, 250);

  const es = new EventSource("events");
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn open"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn"; };
  es.onmessage = (m) => onFrame(JSON.parse(m.data));
  window.addEventListener("resize", () => { if (last) draw(last); });
})();
