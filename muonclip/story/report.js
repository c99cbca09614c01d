// report.html's panels: vanilla JS, no library; draws each chart from #story-data and wires its controls.
// Loaded by muonclip/story/widgets.py and inlined into the page (the report makes no network request).
(function () {
"use strict";
const D = JSON.parse(document.getElementById("story-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const C = D.colors;
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(x, d) {
  if (x === null || x === undefined || !isFinite(x)) return "n/a";
  if (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 1e-3)) return x.toExponential(2).replace(/e([+-])(\d)$/, "e$10$2");
  return x.toFixed(d);
}
function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/"/g, "&quot;"); }
function field(name, value, text) {
  return '<span data-field="' + name + '" data-value="' + esc(value) + '">' + esc(text) + "</span>";
}
function ticks(lo, hi, log) {
  if (log) { const out = []; for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) out.push(Math.pow(10, p)); return out.filter(t => t >= lo * 0.999 && t <= hi * 1.001); }
  const raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || mag;
  const out = []; for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}
function scale(d0, d1, r0, r1, log) {
  if (log) { const a = Math.log(d0), b = Math.log(d1); return v => r0 + (Math.log(Math.max(v, d0)) - a) / (b - a) * (r1 - r0); }
  return v => r0 + (v - d0) / ((d1 - d0) || 1) * (r1 - r0);
}
function indexAt(steps, step) {  // the last row at or before ``step``
  let lo = 0, hi = steps.length - 1;
  if (step <= steps[0]) return 0;
  while (lo < hi) { const m = (lo + hi + 1) >> 1; if (steps[m] <= step) lo = m; else hi = m - 1; }
  return lo;
}
// A line chart: spec = {lines:[{x, y, color, label, faint}], tau, zones, log, ylabel, bars:{x, y, label}, ticks:[x...]}
function chart(svg, spec) {
  const W = 720, top = 12, left = 56, right = 12, mainH = 230, barH = spec.bars ? 70 : 0;
  const H = top + mainH + (barH ? barH + 14 : 0) + 34;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const xs = spec.lines.flatMap(l => l.x), ys = spec.lines.flatMap(l => l.y).filter(v => !spec.log || v > 0);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y1 = Math.max(...ys, spec.tau ? spec.tau * 1.3 : 0) * 1.08, y0 = spec.log ? Math.min(...ys) / 1.3 : 0;
  const X = scale(x0, x1, left, W - right), Y = scale(y0, y1, top + mainH, top, spec.log);
  if (spec.zones && spec.tau) {
    el("rect", {x: left, y: Y(spec.tau), width: W - right - left, height: top + mainH - Y(spec.tau), fill: C.safe}, svg);
    el("rect", {x: left, y: top, width: W - right - left, height: Y(spec.tau) - top, fill: C.danger}, svg);
    el("text", {x: left + 6, y: top + mainH - 6}, svg).textContent = "safe zone (below τ)";
    el("text", {x: W - right - 6, y: top + 14, "text-anchor": "end"}, svg).textContent = "danger zone (above τ)";
  }
  for (const t of ticks(y0 || (spec.log ? 1e-3 : 0), y1, spec.log)) {
    if (t < y0 || t > y1) continue;
    el("line", {x1: left, x2: W - right, y1: Y(t), y2: Y(t), stroke: "#000", "stroke-opacity": 0.08}, svg);
    el("text", {x: left - 4, y: Y(t) + 4, "text-anchor": "end"}, svg).textContent = String(+t.toPrecision(6));
  }
  const axisY = top + mainH + (barH ? barH + 14 : 0);
  for (const t of ticks(x0, x1, false)) el("text", {x: X(t), y: axisY + 16, "text-anchor": "middle"}, svg).textContent = t;
  el("text", {x: (left + W) / 2, y: axisY + 31, "text-anchor": "middle"}, svg).textContent = "step";
  el("text", {x: 12, y: top + mainH / 2, transform: "rotate(-90 12 " + (top + mainH / 2) + ")", "text-anchor": "middle"}, svg).textContent = spec.ylabel;
  if (spec.tau) {
    el("line", {x1: left, x2: W - right, y1: Y(spec.tau), y2: Y(spec.tau), stroke: C.tau, "stroke-dasharray": "5 4"}, svg);
    el("text", {x: W - right - 4, y: Y(spec.tau) - 4, "text-anchor": "end", "data-tau": spec.tau}, svg).textContent = spec.tauLabel || ("τ = " + spec.tau);
  }
  const cursor = el("line", {y1: top, y2: axisY, stroke: "#222", "stroke-width": 1}, svg);
  const dots = [], legend = el("g", {}, svg);
  spec.lines.forEach((l, i) => {
    const pts = l.x.map((x, j) => X(x).toFixed(1) + "," + Y(l.y[j]).toFixed(1)).join(" ");
    el("polyline", {points: pts, fill: "none", stroke: l.color, "stroke-width": l.faint ? 1.2 : 1.8, "stroke-opacity": l.faint ? 0.45 : 1}, svg);
    dots.push(el("circle", {r: 4, fill: l.color}, svg));
    el("rect", {x: left + 8, y: top + 20 + 15 * i, width: 14, height: 3, fill: l.color}, legend);
    el("text", {x: left + 26, y: top + 25 + 15 * i}, legend).textContent = l.label;
  });
  for (const t of spec.ticks || []) el("line", {x1: X(t), x2: X(t), y1: top + mainH - 8, y2: top + mainH, stroke: C.clipped, "stroke-width": 1.5}, svg);
  if (barH) {
    const b = spec.bars, bmax = Math.max(1, ...b.y), BY = scale(0, bmax, top + mainH + 14 + barH, top + mainH + 14);
    const w = Math.max(1, (W - right - left) / b.x.length);
    b.x.forEach((x, j) => { if (b.y[j] > 0) el("rect", {x: X(x) - w / 2, y: BY(b.y[j]), width: w, height: BY(0) - BY(b.y[j]), fill: C.clipped}, svg); });
    el("text", {x: left + 4, y: top + mainH + 26}, svg).textContent = b.label + " (max " + bmax + ")";
  }
  const tip = el("g", {class: "tip", visibility: "hidden"}, svg), tipBox = el("rect", {rx: 3, height: 18 + 14 * spec.lines.length, width: 200}, tip);
  const tipText = [0, ...spec.lines.keys()].map(() => el("text", {}, tip));
  const hit = el("rect", {x: left, y: top, width: W - right - left, height: axisY - top, fill: "transparent"}, svg);
  hit.addEventListener("mousemove", ev => {
    const r = svg.getBoundingClientRect(), px = (ev.clientX - r.left) * W / r.width;
    const step = Math.round(x0 + (px - left) / (W - right - left) * (x1 - x0));
    const bx = Math.min(px + 10, W - 210);
    tip.setAttribute("visibility", "visible");
    tipBox.setAttribute("x", bx); tipBox.setAttribute("y", top + 4);
    tipText.forEach((t, i) => { t.setAttribute("x", bx + 6); t.setAttribute("y", top + 18 + 14 * i); });
    tipText[0].textContent = "step " + step;
    spec.lines.forEach((l, i) => { const j = indexAt(l.x, step); tipText[i + 1].textContent = l.label + ": " + fmt(l.y[j], 2) + (spec.tau ? " (" + fmt(l.y[j] / spec.tau, 3) + " τ)" : ""); });
    svg.dataset.hover = tipText.map(t => t.textContent).join(" | ");
  });
  hit.addEventListener("mouseleave", () => tip.setAttribute("visibility", "hidden"));
  return function setStep(step) {
    cursor.setAttribute("x1", X(step)); cursor.setAttribute("x2", X(step));
    spec.lines.forEach((l, i) => { const j = indexAt(l.x, step); dots[i].setAttribute("cx", X(l.x[j])); dots[i].setAttribute("cy", Y(l.y[j])); });
  };
}
function q(sel) { return document.querySelector(sel); }
function wire(name, fn) {
  const ctl = q('[data-control="' + name + '"]'), out = q('[data-readout="' + name + '"]');
  if (!ctl || !out) return;
  const run = () => { out.innerHTML = fn(ctl.value); };
  ctl.addEventListener("input", run); ctl.addEventListener("change", run); run();
}
// The dragon, the guardrail, the lifecycle: a step slider over the first line's run.
for (const key of ["dragon", "guardrail", "lifecycle"]) {
  const d = D[key], svg = q('[data-chart="' + key + '"]');
  if (!d || !svg) continue;
  const lines = d.lines.map((l, i) => ({x: l.steps, y: l.max_logit, label: l.label, color: C[l.optimizer] || "#555", faint: i > 0 && key === "guardrail"}));
  const main = d.lines[0], clipSteps = main.steps.filter((s, j) => main.n_clipped[j] > 0);
  const setStep = chart(svg, {lines, tau: d.tau, tauLabel: d.tau_label, zones: key === "dragon", ylabel: "max logit", log: false,
    bars: key === "dragon" ? null : {x: main.steps, y: main.n_clipped, label: "heads clipped"}, ticks: key === "dragon" ? [] : clipSteps});
  wire(key + "-step", v => {
    const step = +v; setStep(step);
    return d.lines.map((l, i) => {
      const j = indexAt(l.steps, step), m = l.max_logit[j];
      return (i === 0 ? field("step", l.steps[j], "step " + l.steps[j]) + " · " : " · ") + l.label + ": max logit " +
        field(i === 0 ? "max_logit" : "max_logit_" + i, m, fmt(m, 2)) + " = " + field(i === 0 ? "ratio" : "ratio_" + i, m / d.tau, fmt(m / d.tau, 3)) + " τ" +
        (i === 0 ? ", heads clipped " + field("n_clipped", l.n_clipped[j], l.n_clipped[j]) : "");
    }).join("");
  });
}
// The rogue heads: every head at a step; one head over the run.
(function () {
  const d = D.rogue, bars = q('[data-chart="rogue-bars"]'), one = q('[data-chart="rogue-head"]');
  if (!d || !bars || !one) return;
  const n = d.heads.length, W = 720, H = 220, left = 40, right = 8, top = 10, bottom = 40;
  const ever = new Set(d.clipped.flat()), peak = Math.max(1.2, ...d.logits.flat().map(v => v / d.tau)) * 1.05;
  bars.setAttribute("viewBox", "0 0 " + W + " " + H);
  const Y = scale(0, peak, H - bottom, top), w = (W - left - right) / n;
  for (const t of ticks(0, peak, false)) el("text", {x: left - 4, y: Y(t) + 4, "text-anchor": "end"}, bars).textContent = fmt(t, 1);
  const rects = d.heads.map((h, i) => {
    el("text", {x: left + w * (i + 0.5), y: H - bottom + 12, "text-anchor": "end", transform: "rotate(-60 " + (left + w * (i + 0.5)) + " " + (H - bottom + 12) + ")", style: "font-size:8px"}, bars).textContent = h;
    return el("rect", {x: left + w * i + 1, width: Math.max(1, w - 2), "data-head": h}, bars);
  });
  el("line", {x1: left, x2: W - right, y1: Y(1), y2: Y(1), stroke: C.tau, "stroke-dasharray": "5 4"}, bars);
  el("text", {x: W - right, y: Y(1) - 4, "text-anchor": "end"}, bars).textContent = "τ = " + d.tau + " (max logit / τ = 1)";
  el("text", {x: 8, y: top + 90, transform: "rotate(-90 8 " + (top + 90) + ")", "text-anchor": "middle"}, bars).textContent = "max logit / τ";
  let draw = null;
  wire("rogue-step", v => {
    const i = indexAt(d.steps, +v), row = d.logits[i], now = new Set(d.clipped[i]);
    rects.forEach((r, h) => {
      const ratio = row[h] / d.tau;
      r.setAttribute("y", Y(ratio)); r.setAttribute("height", Y(0) - Y(ratio)); r.dataset.value = ratio;
      r.setAttribute("fill", now.has(h) ? C.muon : (ever.has(h) ? C.clipped : "#9aa5b1"));
      r.setAttribute("class", now.has(h) ? "clipped" : "");
    });
    if (draw) draw(d.steps[i]);  // the chosen head's chart follows the step
    const top = row.indexOf(Math.max(...row));
    return field("step", d.steps[i], "step " + d.steps[i]) + " · heads clipped " + field("n_clipped", now.size, now.size) +
      (now.size ? " (" + [...now].map(h => d.heads[h]).join(", ") + ")" : "") + " · largest " + d.heads[top] + " " +
      field("top_ratio", row[top] / d.tau, fmt(row[top] / d.tau, 3)) + " τ";
  });
  wire("rogue-head", v => {
    const h = d.heads.indexOf(v), ys = d.logits.map(r => r[h] / d.tau);
    const clips = d.steps.filter((s, i) => d.clipped[i].includes(h));
    while (one.firstChild) one.removeChild(one.firstChild);
    draw = chart(one, {lines: [{x: d.steps, y: ys, label: v + ": max logit / τ", color: C.muonclip}], tau: 1, tauLabel: "τ", ylabel: "max logit / τ", ticks: clips});
    draw(+q('[data-control="rogue-step"]').value);
    const pk = Math.max(...ys);
    return field("head", v, v) + " · peak " + field("peak_ratio", pk, fmt(pk, 3)) + " τ · clipped on " + field("clip_steps", clips.length, clips.length) +
      " steps" + (clips.length ? " (first " + field("first_clip", clips[0], clips[0]) + ", last " + field("last_clip", clips[clips.length - 1], clips[clips.length - 1]) + ")" : "");
  });
})();
// The trade-off: softmax(gamma * l) of a measured row; l = log p up to a constant, which softmax ignores.
(function () {
  const d = D.tradeoff, svg = q('[data-chart="tradeoff"]');
  if (!d || !svg) return;
  const arm = q('[data-control="tradeoff-arm"]'), gam = q('[data-control="tradeoff-gamma"]');
  const W = 720, H = 200, left = 40, top = 10, bottom = 36, n = d.tokens.length, w = (W - left - 8) / n;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const Y = scale(0, 1, H - bottom, top);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) el("text", {x: left - 4, y: Y(t) + 4, "text-anchor": "end"}, svg).textContent = t;
  const rects = d.tokens.map((tok, i) => {
    el("text", {x: left + w * (i + 0.5), y: H - bottom + 14, "text-anchor": "middle", style: "font-size:9px"}, svg).textContent = tok;
    return el("rect", {x: left + w * i + 2, width: w - 4, fill: i === d.keyword_pos ? C.keyword : C.distractor}, svg);
  });
  function scaled() {
    const a = d.arms[+arm.value], g = +gam.value, p = a.attention;
    const e = p.map(x => x > 0 ? Math.exp(g * Math.log(x)) : 0), s = e.reduce((u, v) => u + v, 0);
    return {a, g, p: e.map(x => x / s)};
  }
  function update() {
    const {a, g, p} = scaled();
    rects.forEach((r, i) => { r.setAttribute("y", Y(p[i])); r.setAttribute("height", Y(0) - Y(p[i])); r.dataset.value = p[i]; });
    const kw = p[d.keyword_pos], other = Math.max(...p.filter((x, i) => i !== d.keyword_pos && i !== n - 1));
    // the keyword's logit lead over the strongest distractor, log(p_kw / p_other), scales with gamma
    const gap = Math.log(kw / other);
    q('[data-readout="tradeoff-gamma"]').innerHTML = "γ " + field("gamma", g, g.toFixed(2)) + " · keyword " + field("keyword", kw, fmt(kw, 3)) +
      " · largest distractor " + field("distractor", other, fmt(other, 3)) + " · logit lead " + field("gap", gap, fmt(gap, 2));
    q('[data-readout="tradeoff-arm"]').innerHTML = field("arm", a.label, a.label) + ", step " + field("step", a.step, a.step) + ", head L" + a.best_head[0] + "H" + a.best_head[1];
  }
  arm.addEventListener("input", update); arm.addEventListener("change", update);
  gam.addEventListener("input", update); gam.addEventListener("change", update); update();
})();
})();
