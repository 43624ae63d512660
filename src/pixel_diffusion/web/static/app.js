// The page: everything it shows comes from the server's JSON API (server.py); nothing is fetched
// from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
let samplers = [], defaults = null, lastSeed = 0, current = null, events = null, watch = null, upload = null;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text ?? value;
  select.appendChild(o);
}

function showError(error) { $("error").textContent = error ? String(error.message || error) : ""; }

// ---- runs ---------------------------------------------------------------------------------------

async function loadRuns() {
  const { runs } = await api("/api/runs");
  $("run").innerHTML = "";
  runs.forEach((run) => option($("run"), run.name));
  if (runs.length) await chooseRun();
}

async function chooseRun() {
  const run = await api(`/api/runs/${encodeURIComponent($("run").value)}`);
  const kept = $("checkpoint").value;
  $("checkpoint").innerHTML = "";
  run.checkpoints.forEach((c) => option($("checkpoint"), c));
  if (run.checkpoints.includes(kept)) $("checkpoint").value = kept;
  $("guidance").value = run.guidance ?? 1;  // the run's own scale (its preset's measured best)
  const walk = run.walk || {};  // the run's own walk: a distilled run's is 2 consistency steps
  if (defaults) {
    $("sampler").value = walk.sampler ?? defaults.sampler;
    $("steps").value = walk.steps ?? defaults.steps;
    $("spacing").value = walk.spacing ?? "";
  }
  describe(run);
  clearInterval(watch);
  if (run.training) watch = setInterval(async () => describe(await api(`/api/runs/${encodeURIComponent(run.name)}`)), 5000);
}

function describe(run) {
  const rows = [["preset", run.preset], ["data", run.data], ["steps trained", run.steps_trained],
                ["image", run.image_shape && run.image_shape.join(" x ")], ["classes", run.classes], ["kind", run.kind]];
  $("summary").innerHTML = "";
  rows.filter(([, v]) => v !== null && v !== undefined).forEach(([k, v]) => {
    const tr = $("summary").insertRow();
    tr.insertCell().textContent = k; tr.insertCell().textContent = v;
  });
  $("training").hidden = !run.training;
  $("label").innerHTML = "";
  option($("label"), "", "any");
  for (let k = 0; k < (run.classes || 0); k++) {
    option($("label"), k, run.on_clusters ? `cluster ${k}` : run.class_names[k] ?? k);  // "any": by their share
  }
  const curves = run.curves || { loss: [], kid: [] };
  plot($("loss"), curves.loss, "training loss", true);
  $("kid").hidden = !curves.kid.length;
  if (curves.kid.length) plot($("kid"), curves.kid, "KID", false);
  $("preview").hidden = !run.preview;
  if (run.preview) {
    $("preview").src = `/api/runs/${encodeURIComponent(run.name)}/preview.png?${run.preview}`;
    $("preview-caption").textContent = `newest preview, ${run.preview}`;
  }
}

function plot(canvas, points, title, log) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 24;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#222"; g.font = "12px sans-serif"; g.fillText(title, pad, 14);
  if (points.length < 2) return;
  const f = (v) => (log ? Math.log(Math.max(v, 1e-12)) : v);
  const xs = points.map((p) => p[0]), ys = points.map((p) => f(p[1]));
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  g.strokeStyle = "#0969da"; g.beginPath();
  points.forEach((p, k) => {
    const x = pad + ((p[0] - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
    const y = h - pad - ((ys[k] - y0) / (y1 - y0 || 1)) * (h - 2 * pad - 10);
    k ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillText(`step ${x1}`, w - pad - 60, h - 6);
}

// ---- samplers -----------------------------------------------------------------------------------

async function loadSamplers() {
  const registry = await api("/api/samplers");
  samplers = registry.samplers;
  samplers.forEach((s) => option($("sampler"), s.name, `${s.name} - ${s.description}`));
  registry.spacings.forEach((s) => option($("spacing"), s));
  defaults = registry.default;
  $("sampler").value = defaults.sampler;
  $("steps").value = defaults.steps;
}

// ---- jobs ---------------------------------------------------------------------------------------

function follow(job) {
  current = job;
  if (events) events.close();
  $("cancel").disabled = false;
  $("results").innerHTML = "";
  showError(null);
  events = new EventSource(`/api/jobs/${job.id}/events`);
  events.onmessage = (message) => {
    const state = JSON.parse(message.data);
    const where = state.state === "queued" ? `waiting, place ${state.position} in the queue` : state.state;
    $("status").textContent = `${state.kind} ${state.id}: ${where}` + (state.total ? `, step ${state.step} of ${state.total}` : state.step ? `, round ${state.step}` : "");
    $("progress").max = state.total || 1;
    $("progress").value = state.total ? state.step : state.state === "done" ? 1 : 0;
    if (state.preview) { $("live").src = state.preview; $("live").hidden = false; }
    if (["done", "cancelled", "failed"].includes(state.state)) {
      events.close(); events = null; $("cancel").disabled = true;
      if (state.error) showError(state.error);
      state.images.forEach((url, k) => {
        const a = document.createElement("a");
        a.href = url; a.download = `${state.kind}-${state.id}-${String(k).padStart(5, "0")}.png`;
        const img = document.createElement("img");
        img.src = url; img.alt = `result ${k}`;
        a.appendChild(img); $("results").appendChild(a);
      });
    }
  };
}

async function generate(event) {
  event.preventDefault();
  const seed = Number($("seed").value);
  const body = { run: $("run").value, checkpoint: $("checkpoint").value, sampler: $("sampler").value,
                 steps: Number($("steps").value), seed, n: Number($("n").value), guidance: Number($("guidance").value),
                 spacing: $("spacing").value || null, label: $("label").value === "" ? null : Number($("label").value) };
  try {
    follow(await api("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(body) }));
    lastSeed = seed;
  } catch (error) { showError(error); }
}

// ---- restore and inpaint ------------------------------------------------------------------------

const mask = { drawing: false, image: null, painted: null, last: null };

function showUpload(file) {
  upload = file;
  const img = new Image();
  img.onload = () => { mask.image = img; clearMask(); };
  img.src = URL.createObjectURL(file);
}

function clearMask() {
  const c = $("mask");
  mask.painted = document.createElement("canvas");
  mask.painted.width = c.width; mask.painted.height = c.height;
  redraw();
}

function redraw() {
  const g = $("mask").getContext("2d");
  g.clearRect(0, 0, $("mask").width, $("mask").height);
  if (mask.image) g.drawImage(mask.image, 0, 0, $("mask").width, $("mask").height);
  if (mask.painted) { g.globalAlpha = 0.6; g.drawImage(mask.painted, 0, 0); g.globalAlpha = 1; }
}

function paint(event) {
  // A stroke from the last point to this one, so that a quick drag leaves no gaps.
  if (!mask.drawing || !mask.painted) return;
  const box = $("mask").getBoundingClientRect();
  const point = [event.clientX - box.left, event.clientY - box.top];
  const from = mask.last || point;
  const g = mask.painted.getContext("2d");
  g.strokeStyle = "#fff"; g.lineWidth = 24; g.lineCap = "round";
  g.beginPath(); g.moveTo(...from); g.lineTo(...point); g.stroke();
  mask.last = point;
  redraw();
}

function maskBlob() {
  // White where drawn (generate), black elsewhere, as the server reads it.
  const c = document.createElement("canvas");
  c.width = mask.painted.width; c.height = mask.painted.height;
  const g = c.getContext("2d");
  g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height); g.drawImage(mask.painted, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

async function edit(kind) {
  if (!upload) { showError("choose an image first"); return; }
  const form = new FormData();
  form.append("image", upload); form.append("run", $("run").value); form.append("checkpoint", $("checkpoint").value);
  form.append("variations", $("variations").value); form.append("seed", $("seed").value);
  if (kind === "restore") form.append("strength", $("strength").value);
  else form.append("mask", await maskBlob(), "mask.png");
  try { follow(await api(`/api/${kind}`, { method: "POST", body: form })); } catch (error) { showError(error); }
}

// ---- wiring -------------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", async () => {
  $("run").addEventListener("change", () => chooseRun().catch(showError));
  $("generate-form").addEventListener("submit", generate);
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  $("reuse").addEventListener("click", () => { $("seed").value = lastSeed; });
  $("cancel").addEventListener("click", () => current && api(`/api/jobs/${current.id}/cancel`, { method: "POST" }).catch(showError));
  $("upload").addEventListener("change", (e) => e.target.files[0] && showUpload(e.target.files[0]));
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  $("restore-go").addEventListener("click", () => edit("restore"));
  $("inpaint-go").addEventListener("click", () => edit("inpaint"));
  $("clear-mask").addEventListener("click", clearMask);
  $("mask").addEventListener("mousedown", (e) => { mask.drawing = true; paint(e); });
  $("mask").addEventListener("mousemove", paint);
  window.addEventListener("mouseup", () => { mask.drawing = false; mask.last = null; });
  try { await loadSamplers(); await loadRuns(); } catch (error) { showError(error); }
});
