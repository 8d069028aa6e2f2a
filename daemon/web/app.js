// app.js: the dashboard. Fetches /api/status every few seconds and redraws;
// every text that comes from the daemon (names come from certificates) goes
// into the page through textContent or an attribute, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PERIOD_MS = 3000;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1e4) return Math.round(v).toLocaleString("en");
  return Number(v).toFixed(digits === undefined ? 3 : digits);
}

function ago(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

function columnsText(cols) {
  const out = [];
  for (let i = 0; i < cols.length;) {
    let j = i;
    while (j + 1 < cols.length && cols[j + 1] === cols[j] + 1) j++;
    out.push(j >= i + 2 ? cols[i] + "-" + cols[j] : String(cols[i]));
    i = j >= i + 2 ? j + 1 : i + 1;
  }
  return out.length ? out.join(",") : "–";
}

// plot draws y over x as a polyline with one circle (class "pt") per point.
function plot(box, xs, ys) {
  clear(box);
  const W = 600, H = 180, L = 56, R = 10, T = 10, B = 24;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const pts = [];
  for (let i = 0; i < xs.length; i++) if (ys[i] !== null && ys[i] !== undefined) pts.push([xs[i], ys[i]]);
  svg.appendChild(el("svg:line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.appendChild(el("svg:line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  if (pts.length === 0) {
    svg.appendChild(el("svg:text", { class: "tick", x: L + 10, y: H / 2 }, "no committed round yet"));
    box.appendChild(svg);
    return;
  }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.05 + 1e-6; y1 += Math.abs(y1) * 0.05 + 1e-6; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  svg.appendChild(el("svg:polyline", { class: "line", points: pts.map(p => sx(p[0]) + "," + sy(p[1])).join(" ") }));
  for (const p of pts) {
    const c = el("svg:circle", { class: "pt", cx: sx(p[0]), cy: sy(p[1]), r: 3 });
    c.appendChild(el("svg:title", {}, "round " + p[0] + ": " + fmt(p[1])));
    svg.appendChild(c);
  }
  svg.appendChild(el("svg:text", { class: "tick", x: 2, y: T + 8 }, fmt(y1)));
  svg.appendChild(el("svg:text", { class: "tick", x: 2, y: H - B }, fmt(y0)));
  svg.appendChild(el("svg:text", { class: "tick", x: L, y: H - 6 }, "round " + x0));
  svg.appendChild(el("svg:text", { class: "tick", x: W - R - 60, y: H - 6 }, "round " + x1));
  box.appendChild(svg);
}

function summary(s) {
  const box = clear(document.getElementById("summary"));
  const items = [["round", s.round], ["step", s.step], ["loss", fmt(s.coordinator ? s.run_loss : s.loss)],
                 ["tokens/s", fmt(s.coordinator ? s.run_tokens_per_s : s.tokens_per_s, 0)],
                 ["members", s.members.length], ["daemon", s.name], ["version", s.version + " / protocol " + s.protocol]];
  for (const [k, v] of items) {
    const sp = el("span", {}, k + " ");
    sp.appendChild(el("b", {}, v));
    box.appendChild(sp);
  }
  document.getElementById("run-id").textContent = s.run_id || "";
}

function members(s) {
  const tb = clear(document.querySelector("#members tbody"));
  for (const m of s.members) {
    const tr = el("tr", { "data-name": m.name });
    tr.appendChild(el("td", {}, m.id));
    tr.appendChild(el("td", { class: "member-name" }, m.name));
    tr.appendChild(el("td", { class: "state-" + m.state }, m.state));
    tr.appendChild(el("td", {}, columnsText(m.columns)));
    tr.appendChild(el("td", {}, m.round));
    tr.appendChild(el("td", {}, fmt(m.loss)));
    tr.appendChild(el("td", {}, fmt(m.tokens_per_s, 1)));
    tr.appendChild(el("td", {}, ago(m.last_seen_unix_ms, s.now_unix_ms)));
    tb.appendChild(tr);
  }
  if (!s.members.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 8 }, s.coordinator ? "no members yet" : "members are listed on the coordinator's dashboard"));
    tb.appendChild(tr);
  }
}

function experts(s) {
  const ex = s.experts, tb = clear(document.querySelector("#expert-map tbody"));
  for (let e = 0; e < ex.count; e++) {
    const tr = el("tr", { class: "expert-row" });
    tr.appendChild(el("td", {}, e));
    const owners = ex.owners[e] || [];
    tr.appendChild(el("td", { class: owners.length ? "" : "bad" }, owners.length ? owners.join(", ") : "(none)"));
    tr.appendChild(el("td", {}, fmt(ex.delta_norm[e], 4)));
    tb.appendChild(tr);
  }
  const hm = clear(document.getElementById("heatmap"));
  if (!ex.layers) { hm.appendChild(el("p", { class: "note" }, "no training step on this daemon yet")); return; }
  const t = el("table", { class: "heat" }), head = el("tr");
  head.appendChild(el("th", {}, ""));
  for (let e = 0; e < ex.count; e++) head.appendChild(el("th", {}, e));
  t.appendChild(head);
  const uniform = 1 / ex.count;
  for (let l = 0; l < ex.layers; l++) {
    const tr = el("tr");
    tr.appendChild(el("th", {}, "layer " + l));
    for (let e = 0; e < ex.count; e++) {
      const v = ex.router_load[l][e];
      const td = el("td", { title: "layer " + l + ", expert " + e + ": " + fmt(v, 4) });
      if (v !== null) {
        const h = Math.min(1, v / (2 * uniform));  // 0 .. twice uniform
        td.style.background = `hsl(${Math.round(220 - 220 * h)}, 70%, ${Math.round(85 - 30 * h)}%)`;
        td.textContent = Math.round(v * 100);
      }
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
  hm.appendChild(t);
}

function timeline(s) {
  const box = clear(document.getElementById("timeline"));
  const rounds = s.history.filter(r => r.nodes.length).slice(-12);
  if (!rounds.length) { box.appendChild(el("p", { class: "note" }, "no round timed yet")); return; }
  const names = [...new Set(rounds.flatMap(r => r.nodes.map(n => n.name)))].sort();
  const max = Math.max(...rounds.flatMap(r => r.nodes.map(n => (n.train_s || 0) + (n.wait_s || 0))), 1e-3);
  const rowH = 14, W = 900, L = 150, top = 4;
  const H = top + rounds.length * (names.length * rowH + 8);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  let y = top;
  for (const r of rounds) {
    for (const name of names) {
      const n = r.nodes.find(x => x.name === name);
      svg.appendChild(el("svg:text", { class: "tick", x: 0, y: y + 10 }, "round " + r.round + " " + name));
      if (n) {
        const wt = (n.train_s || 0) / max * (W - L - 70), ww = (n.wait_s || 0) / max * (W - L - 70);
        const bt = el("svg:rect", { class: "bar-train", x: L, y: y, width: wt, height: rowH - 3 });
        bt.appendChild(el("svg:title", {}, name + ": train " + fmt(n.train_s, 2) + " s"));
        const bw = el("svg:rect", { class: "bar-wait", x: L + wt, y: y, width: ww, height: rowH - 3 });
        bw.appendChild(el("svg:title", {}, name + ": wait " + fmt(n.wait_s, 2) + " s"));
        svg.appendChild(bt);
        svg.appendChild(bw);
        svg.appendChild(el("svg:text", { class: "tick", x: L + wt + ww + 4, y: y + 10 },
                           fmt(n.train_s, 1) + " + " + fmt(n.wait_s, 1) + " s"));
      }
      y += rowH;
    }
    y += 8;
  }
  box.appendChild(svg);
  const lg = el("div", { class: "legend" });
  const a = el("span", { class: "sw-train" }), b = el("span", { class: "sw-wait" });
  lg.appendChild(a); lg.appendChild(document.createTextNode("training"));
  lg.appendChild(b); lg.appendChild(document.createTextNode("waiting (announce, fetch, aggregate, commit)"));
  box.appendChild(lg);
}

function refusals(s) {
  const box = clear(document.getElementById("refusals"));
  const t = el("table"), head = el("tr");
  head.appendChild(el("th", {}, "reason")); head.appendChild(el("th", {}, "refused since start"));
  t.appendChild(head);
  for (const k in s.refusals) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, k));
    tr.appendChild(el("td", { class: s.refusals[k] ? "bad" : "ok" }, s.refusals[k]));
    t.appendChild(tr);
  }
  const tr = el("tr");
  tr.appendChild(el("td", {}, "digest mismatches"));
  tr.appendChild(el("td", { class: s.digest_mismatches ? "bad" : "ok" }, s.digest_mismatches));
  t.appendChild(tr);
  box.appendChild(t);
  const lr = s.last_round;
  if (lr) {
    box.appendChild(el("p", {}, "last round " + lr.round + ": " + lr.contributors + " contributor(s)"));
    const ul = el("ul");
    for (const r of lr.refused) ul.appendChild(el("li", { class: "bad" }, "refused: " + r));
    for (const n of lr.digest_mismatch) ul.appendChild(el("li", { class: "bad" }, "digest mismatch: " + n));
    if (ul.firstChild) box.appendChild(ul);
  }
}

function draw(s) {
  summary(s);
  const xs = s.history.map(r => r.round);
  plot(document.getElementById("plot-loss"), xs, s.history.map(r => r.loss));
  plot(document.getElementById("plot-tps"), xs, s.history.map(r => r.tokens_per_s));
  members(s);
  experts(s);
  timeline(s);
  refusals(s);
}

async function refresh() {
  const up = document.getElementById("updated");
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    draw(await r.json());
    up.textContent = "updated " + new Date().toLocaleTimeString();
    up.classList.remove("stale");
  } catch (e) {
    up.textContent = "not updating: " + e.message;
    up.classList.add("stale");
  }
}

refresh();
setInterval(refresh, PERIOD_MS);
