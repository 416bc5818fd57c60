// Perch dashboard: the last hour of stored telemetry per device and numeric payload field, charted
// with uPlot, then kept live from GET /v1/projects/P/telemetry:watch (server-sent events read with
// fetch, so the admin token travels in the Authorization header, never in a URL).
"use strict";

const MAX_POINTS = 2000;           // per series kept on screen
const $ = (id) => document.getElementById(id);
let charts = new Map();            // "device/field" -> {plot, xs, ys}
let controller = null;

function headers() {
  const token = $("token").value.trim();
  sessionStorage.setItem("perch-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

function query(extra) {
  const p = new URLSearchParams(extra);
  const device = $("device").value.trim();
  if (device) p.set("deviceId", device);
  return p.toString();
}

async function get(path, extra) {
  const project = encodeURIComponent($("project").value.trim());
  const r = await fetch(`/v1/projects/${project}/${path}?${query(extra)}`, { headers: headers() });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

function series(device, field) {
  const key = device + "/" + field;
  let s = charts.get(key);
  if (!s) {
    const box = document.createElement("div");
    box.className = "chart";
    box.innerHTML = `<h2></h2>`;
    box.querySelector("h2").textContent = `${device} — ${field}`;
    $("charts").appendChild(box);
    s = { xs: [], ys: [] };
    s.plot = new uPlot({
      width: Math.min(1000, window.innerWidth - 60), height: 220,
      series: [{}, { label: field, stroke: "#2e86de", width: 1.5 }],
      axes: [{}, {}],
    }, [s.xs, s.ys], box);
    charts.set(key, s);
  }
  return s;
}

function add(point, redraw) {
  if (!point.deviceId || !point.json || typeof point.json !== "object") return;
  const t = Date.parse(point.publishTime) / 1000;
  for (const [field, value] of Object.entries(point.json)) {
    if (typeof value !== "number") continue;
    const s = series(point.deviceId, field);
    s.xs.push(t); s.ys.push(value);
    if (s.xs.length > MAX_POINTS) { s.xs.shift(); s.ys.shift(); }
    if (redraw) s.plot.setData([s.xs, s.ys]);
  }
}

function flag(a) {
  const row = document.createElement("tr");
  row.className = "anomaly";
  for (const text of [a.publishTime, a.deviceId, a.field, a.value,
                      `${a.mean.toFixed(2)} ± ${a.std.toFixed(2)}`, a.z.toFixed(1)]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  $("anomalies").prepend(row);
}

async function watch(signal) {
  const project = encodeURIComponent($("project").value.trim());
  const r = await fetch(`/v1/projects/${project}/telemetry:watch?${query({})}`, { headers: headers(), signal });
  if (!r.ok) throw new Error((await r.json()).error.message);
  $("status").textContent = "live";
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (event === "point") add(JSON.parse(data), true);
      else if (event === "anomaly") flag(JSON.parse(data));
    }
  }
  $("status").textContent = "disconnected";
}

async function show() {
  if (controller) controller.abort();
  controller = new AbortController();
  charts = new Map();
  $("charts").innerHTML = ""; $("anomalies").innerHTML = "";
  $("status").textContent = "loading…";
  try {
    const since = new Date(Date.now() - 3600 * 1000).toISOString();
    const { points } = await get("telemetry", { since, pageSize: 10000 });
    points.forEach((p) => add(p, false));
    charts.forEach((s) => s.plot.setData([s.xs, s.ys]));
    const { anomalies } = await get("anomalies", { since, pageSize: 100 });
    anomalies.forEach(flag);
    await watch(controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") $("status").textContent = "error: " + e.message;
  }
}

$("token").value = sessionStorage.getItem("perch-token") || "";
const params = new URLSearchParams(location.search);
if (params.get("project")) $("project").value = params.get("project");
if (params.get("device")) $("device").value = params.get("device");
$("go").addEventListener("click", show);
show();
