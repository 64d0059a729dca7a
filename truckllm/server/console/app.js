// TruckLLM operator console. Plain JavaScript, no dependencies, nothing loaded from
// elsewhere. The admin key lives in this tab's sessionStorage only and goes out as a
// Bearer token to the admin API of this origin; nothing else is stored. Data reaches the
// page through textContent and DOM nodes, never as HTML.
"use strict";

const STORAGE_KEY = "truckllm.admin";
const REFRESH_MS = 2000;
const WINDOW_S = 3600;

const $ = (selector) => document.querySelector(selector);
let timer = null;
let history = { t: [], requests: [], errors: [], p50_ms: [], p95_ms: [], tokens: [], cost_usd: [] };
let historyNow = 0;
let configOriginal = "";
let configDirty = false;
let keyConfig = new Map();      // key id -> its entry in the running config (models, expires)
let editingKey = null;          // id of the key the dialog edits; null: a new key

// ---------------------------------------------------------------- API

function adminKey() { return sessionStorage.getItem(STORAGE_KEY); }

async function api(method, path, body, contentType) {
  const headers = { Authorization: "Bearer " + adminKey() };
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, cache: "no-store",
                                       credentials: "omit" });
  if (response.status === 401) {
    signOut("The admin key was not accepted.");
    throw new Error("unauthorised");
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  return { status: response.status, ok: response.ok, data };
}

function errorText(result) {
  const error = result.data && result.data.error;
  return error ? error.message : "HTTP " + result.status;
}

// ---------------------------------------------------------------- sign in / out

function showApp(on) {
  $("#login").hidden = on;
  $("#app").hidden = !on;
  $("#nav").hidden = !on;
  $("#logout").hidden = !on;
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#admin-key");
  const key = input.value.trim();
  input.value = "";                 // the key never stays in the page
  if (!key) return;
  sessionStorage.setItem(STORAGE_KEY, key);
  $("#login-error").textContent = "";
  try {
    const result = await api("GET", "/admin/v1/status");
    if (!result.ok) throw new Error(errorText(result));
  } catch (error) {
    if (error.message !== "unauthorised") signOut("Could not reach the admin API: " + error.message);
    return;
  }
  start();
}

function signOut(message) {
  sessionStorage.removeItem(STORAGE_KEY);
  clearTimeout(timer);
  timer = null;
  showApp(false);
  $("#login-error").textContent = message || "";
  $("#admin-key").focus();
}

function start() {
  showApp(true);
  history = { t: [], requests: [], errors: [], p50_ms: [], p95_ms: [], tokens: [], cost_usd: [] };
  historyNow = 0;
  loadConfig();
  refresh();
}

// ---------------------------------------------------------------- live refresh

async function refresh() {
  clearTimeout(timer);
  if (!adminKey()) return;
  if (!document.hidden) {
    try {
      await Promise.all([loadStatus(), loadProviders(), loadKeys(), loadHistory(), loadLogs()]);
      $("#banner").textContent = "";
    } catch (error) {
      if (error.message === "unauthorised") return;
      $("#banner").textContent = "Cannot reach TruckLLM (" + error.message + "); retrying.";
    }
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden && adminKey()) refresh(); });

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  if (digits !== undefined) return Number(value).toFixed(digits);
  return Number(value).toLocaleString("en-US");
}

function usd(value) {
  if (value === null || value === undefined) return "–";
  return "$" + (value >= 100 ? value.toFixed(0) : value >= 1 ? value.toFixed(2) : value.toFixed(4));
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

function when(unix) {
  return unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

function badge(status) { return el("span", { class: "badge " + status, text: status }); }

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---------------------------------------------------------------- status

async function loadStatus() {
  const { data } = await api("GET", "/admin/v1/status");
  const last = data.last_reload;
  const facts = [
    ["Version", data.version],
    ["Config", "v" + data.config.version + " · sha256 " + data.config.sha256.slice(0, 12)],
    ["Loaded", when(data.config.loaded_at)],
    ["Last reload", last ? last.result + " (" + last.trigger + ") " + when(last.at) : "none since start"],
    ["Uptime", duration(data.uptime_s)],
    ["In flight", num(data.inflight)],
    ["Watching the file", data.config.watching ? "yes" : "no"],
  ];
  if (data.needs_restart.length) facts.push(["Needs a restart", data.needs_restart.join(", ")]);
  $("#status-list").replaceChildren(...facts.map(([name, value]) =>
    el("div", {}, el("dt", { text: name }), el("dd", { text: value }))));
  const errors = last && last.result === "error" ? last.errors : [];
  $("#reload-errors").replaceChildren(...(errors.length
    ? [el("p", { class: "error", text: "The last reload failed; the running config stays:" }),
       el("ul", {}, ...errors.map((e) => el("li", { text: (e.location ? e.location + " " : "") + e.path + ": " + e.message })))]
    : []));
  $("#config-meta").textContent = "v" + data.config.version + " · " + data.config.path;
}

// ---------------------------------------------------------------- providers

async function loadProviders() {
  const { data } = await api("GET", "/admin/v1/providers");
  const rows = [];
  const select = $("#log-filters [name=provider]");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "any" }),
    ...data.providers.map((p) => el("option", { value: p.id, text: p.id, selected: p.id === chosen })));
  for (const provider of data.providers) {
    const sum = (field) => provider.keys.reduce((total, key) => total + (key[field] || 0), 0);
    rows.push(el("tr", { class: "provider" },
      el("th", { scope: "row", text: provider.id }), el("td", { text: provider.type }),
      el("td", {}, badge(provider.status)), el("td", { class: "num", text: num(sum("usage_req")) }),
      el("td", { class: "num", text: num(sum("usage_tokens")) }), el("td", { class: "num", text: num(sum("errors")) }),
      el("td"), el("td")));
    for (const key of provider.keys) {
      rows.push(el("tr", { class: "sub" },
        el("td", { text: "key " + key.id }), el("td"), el("td", {}, badge(key.status)),
        el("td", { class: "num", text: num(key.usage_req) }), el("td", { class: "num", text: num(key.usage_tokens) }),
        el("td", { class: "num", text: num(key.errors) }), el("td", { text: key.last_error || "" }),
        el("td", { text: key.cooldown_until || "" })));
    }
  }
  fillRows($("#providers-table tbody"), rows);
}

// ---------------------------------------------------------------- client keys

function limitText(limit, used) {
  return limit === null || limit === undefined ? null : num(used) + " / " + num(limit);
}

async function loadKeys() {
  const { data } = await api("GET", "/admin/v1/keys");
  const select = $("#log-filters [name=key]");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "any" }),
    ...data.keys.map((k) => el("option", { value: k.id, text: k.id, selected: k.id === chosen })));
  $("#keys-open").hidden = data.keys.length > 0;
  fillRows($("#keys-table tbody"), data.keys.map((key) => {
    const limits = key.limits || {};
    const current = key.current || {};
    const inUse = [
      ["rpm", limitText(limits.rpm, current.requests_last_minute)],
      ["tpm", limitText(limits.tpm, current.tokens_last_minute)],
      ["in flight", limitText(limits.max_concurrent, current.in_flight)],
    ].filter(([, text]) => text).map(([name, text]) => name + " " + text).join(" · ") || "no limits";
    const spend = el("td", { class: "num" }, usd(key.spend_usd));
    if (key.budget_usd !== null && key.budget_usd !== undefined) {
      const share = key.budget_usd > 0 ? Math.min(1, key.spend_usd / key.budget_usd) : 1;
      const fill = el("span");
      fill.style.width = (share * 100).toFixed(1) + "%";     // CSSOM: allowed by the page's CSP
      spend.append(" / " + usd(key.budget_usd) + " " + (key.budget_period || "total"),
        el("span", { class: "meter" + (share >= 1 ? " full" : ""), role: "img",
                     "aria-label": Math.round(share * 100) + "% of the budget spent" }, fill));
    }
    const entry = keyConfig.get(key.id) || {};
    return el("tr", { "data-key": key.id },
      el("th", { scope: "row", text: key.id }), el("td", { class: "num", text: num(key.requests) }),
      el("td", { class: "num", text: num(key.tokens) }), spend, el("td", { text: inUse }),
      el("td", { text: entry.models ? entry.models.join(", ") : "all" }),
      el("td", { text: entry.expires || "never" }),
      el("td", {},
        el("button", { type: "button", class: "small secondary", onclick: () => openKeyDialog(key.id),
                       "aria-label": "Edit key " + key.id, text: "Edit" }), " ",
        el("button", { type: "button", class: "small ghost", onclick: () => resetKey(key.id),
                       "aria-label": "Reset the counters of key " + key.id, text: "Reset" }), " ",
        el("button", { type: "button", class: "small danger", onclick: () => revokeKey(key.id),
                       "aria-label": "Revoke key " + key.id, text: "Revoke" })));
  }));
}

function openKeyDialog(id) {
  editingKey = id;
  const form = $("#key-form");
  form.reset();
  $("#key-form-error").textContent = "";
  $("#key-dialog-title").textContent = id ? "Edit key " + id : "New client key";
  $("#key-save").textContent = id ? "Save" : "Create";
  form.elements.id.disabled = Boolean(id);
  if (id) {
    const entry = keyConfig.get(id) || {};
    form.elements.id.value = id;
    form.elements.models.value = (entry.models || []).join(", ");
    for (const name of ["rpm", "tpm", "max_concurrent", "budget_usd", "expires"]) {
      form.elements[name].value = entry[name] === undefined || entry[name] === null ? "" : entry[name];
    }
    form.elements.budget_period.value = entry.budget_period || "";
  }
  $("#key-dialog").showModal();
}

function keyBody(form) {
  const body = {};
  const models = form.elements.models.value.split(",").map((s) => s.trim()).filter(Boolean);
  body.models = models.length ? models : null;
  for (const name of ["rpm", "tpm", "max_concurrent"]) {
    const value = form.elements[name].value.trim();
    body[name] = value === "" ? null : Number(value);
  }
  const budget = form.elements.budget_usd.value.trim();
  body.budget_usd = budget === "" ? null : Number(budget);
  body.budget_period = form.elements.budget_period.value || null;
  body.expires = form.elements.expires.value.trim() || null;
  return body;
}

async function saveKey(event) {
  event.preventDefault();
  const form = $("#key-form");
  const body = keyBody(form);
  let result;
  if (editingKey) {
    result = await api("PATCH", "/admin/v1/keys/" + encodeURIComponent(editingKey), body);
  } else {
    const created = { id: form.elements.id.value.trim() };
    for (const [name, value] of Object.entries(body)) if (value !== null) created[name] = value;
    result = await api("POST", "/admin/v1/keys", created);
  }
  if (!result.ok) {
    const error = result.data && result.data.error;
    $("#key-form-error").textContent = errorText(result);
    const field = error && error.param && form.elements[error.param];
    if (field && field.focus) field.focus();
    return;
  }
  $("#key-dialog").close();
  if (!editingKey) showSecret(result.data.key);
  await loadConfig();
  refresh();
}

function showSecret(secret) {
  $("#secret-value").textContent = secret;
  $("#secret-copied").textContent = "";
  $("#secret-dialog").showModal();
}

async function copySecret() {
  const value = $("#secret-value").textContent;
  try {
    await navigator.clipboard.writeText(value);
    $("#secret-copied").textContent = "Copied.";
  } catch {
    const range = document.createRange();     // no clipboard access: select it for Ctrl+C
    range.selectNodeContents($("#secret-value"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("#secret-copied").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

function forgetSecret() {
  $("#secret-value").textContent = "";        // shown once: gone from the page when closed
  $("#secret-copied").textContent = "";
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("#confirm-dialog");
    $("#confirm-text").textContent = text;
    const done = (answer) => () => { dialog.close(); resolve(answer); };
    $("#confirm-yes").onclick = done(true);
    $("#confirm-no").onclick = done(false);
    dialog.oncancel = () => resolve(false);
    dialog.showModal();
    $("#confirm-no").focus();
  });
}

async function revokeKey(id) {
  if (!await confirmAction("Revoke key " + id + "? It stops working at once and is removed from the config file.")) return;
  const result = await api("DELETE", "/admin/v1/keys/" + encodeURIComponent(id));
  $("#banner").textContent = result.ok ? "" : "Could not revoke " + id + ": " + errorText(result);
  await loadConfig();
  refresh();
}

async function resetKey(id) {
  if (!await confirmAction("Reset the usage and spend of key " + id + " for this period?")) return;
  const result = await api("POST", "/admin/v1/keys/" + encodeURIComponent(id) + "/reset");
  $("#banner").textContent = result.ok ? "" : "Could not reset " + id + ": " + errorText(result);
  refresh();
}

// ---------------------------------------------------------------- charts (hand-drawn SVG)

async function loadHistory() {
  const since = historyNow ? "?since=" + (historyNow - 1) : "";
  const { data } = await api("GET", "/admin/v1/history" + since);
  const series = data.series;
  // The current second was open when last read: drop it and take it again.
  const keepBefore = data.now - WINDOW_S + 1;
  const cut = historyNow ? historyNow - 1 : Infinity;
  const indexes = history.t.map((t, i) => i).filter((i) => history.t[i] >= keepBefore && history.t[i] < cut);
  for (const name of Object.keys(history)) {
    history[name] = indexes.map((i) => history[name][i]).concat(series[name] || []);
  }
  historyNow = data.now;
  drawCharts();
}

function dense(name, now) {
  const values = new Map(history.t.map((t, i) => [t, history[name][i]]));
  const points = [];
  for (let t = now - WINDOW_S + 1; t <= now; t++) points.push(values.get(t) || 0);
  return points;
}

function drawCharts() {
  const now = historyNow;
  if (!now) return;
  chart("#chart-requests", [dense("requests", now), dense("errors", now)], ["requests", "5xx errors"], short);
  chart("#chart-latency", [dense("p50_ms", now), dense("p95_ms", now)], ["p50", "p95"], (v) => short(v) + " ms");
  chart("#chart-tokens", [dense("tokens", now)], ["tokens"], short);
  chart("#chart-cost", [dense("cost_usd", now)], ["USD"], (v) => "$" + short(v));
}

function short(value) {
  if (value === 0) return "0";
  if (value >= 1e6) return (value / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M";
  if (value >= 1e3) return (value / 1e3).toPrecision(3).replace(/\.?0+$/, "") + "k";
  if (value >= 1) return String(Math.round(value * 10) / 10);
  if (value >= 0.01) return value.toFixed(2);
  return value.toExponential(0);
}

function chart(selector, series, names, format) {
  // Drawn at the container's own size, so text and lines are never stretched.
  const box = $(selector + " .chart");
  const width = Math.max(200, Math.round(box.clientWidth || 300)), height = 140;
  const left = 52, bottom = 16, top = 8;
  const max = Math.max(1e-9, ...series.flat());
  const niceMax = nice(max);
  const x = (i) => left + (i / (WINDOW_S - 1)) * (width - left - 4);
  const y = (v) => top + (1 - v / niceMax) * (height - top - bottom);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const totals = series.map((s, i) => names[i] + " peak " + format(Math.max(...s)));
  svg.setAttribute("aria-label", "Last hour: " + totals.join(", "));
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  for (const fraction of [0, 0.5, 1]) {
    const v = niceMax * fraction;
    add("line", { class: "gridline", x1: left, x2: width, y1: y(v), y2: y(v) });
    add("text", { class: "axis", x: left - 4, y: y(v) + 3, "text-anchor": "end" }, format(v));
  }
  for (const minutesAgo of width < 420 ? [60, 30, 0] : [60, 45, 30, 15, 0]) {
    const i = WINDOW_S - 1 - minutesAgo * 60;
    const anchor = minutesAgo === 60 ? "start" : minutesAgo === 0 ? "end" : "middle";
    add("text", { class: "axis", x: x(Math.max(0, i)), y: height - 3, "text-anchor": anchor },
        minutesAgo ? "-" + minutesAgo + " min" : "now");
  }
  series.forEach((values, index) => {
    // Bucket seconds into at most one point per pixel column of the viewBox.
    const step = Math.max(1, Math.floor(WINDOW_S / (width - left)));
    const points = [];
    for (let i = 0; i < values.length; i += step) {
      let peak = 0;
      for (let j = i; j < Math.min(values.length, i + step); j++) peak = Math.max(peak, values[j]);
      points.push(x(i).toFixed(1) + "," + y(peak).toFixed(1));
    }
    add("polyline", { class: "s" + (index + 1), points: points.join(" ") });
  });
  const legend = el("div", { class: "legend" }, ...names.map((name, i) => el("span", {}, el("i", { class: "l" + (i + 1) }), name)));
  box.replaceChildren(svg, legend);
}

function nice(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) if (value <= m * power) return m * power;
  return 10 * power;
}

// ---------------------------------------------------------------- request log

async function loadLogs() {
  const form = $("#log-filters");
  const params = new URLSearchParams();
  for (const name of ["provider", "key", "level", "status", "limit"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  if (!form.elements.status.checkValidity()) params.delete("status");
  const { data } = await api("GET", "/admin/v1/logs?" + params);
  fillRows($("#logs-table tbody"), (data.logs || []).map((entry) => el("tr", {},
    el("td", { text: entry.timestamp.replace("T", " ").replace("Z", "") }),
    el("td", {}, el("span", { class: "badge " + (entry.status >= 500 ? "bad" : entry.status >= 400 ? "warning" : "ok"), text: entry.status })),
    el("td", { text: entry.key_id || "" }), el("td", { text: entry.model || "" }),
    el("td", { text: entry.provider || "" }), el("td", { class: "num", text: num(entry.latency_ms, 0) + " ms" }),
    el("td", { class: "num", text: num(entry.tokens) }), el("td", { class: "num", text: usd(entry.cost_usd) }),
    el("td", {}, el("code", { text: entry.request_id })))));
}

// ---------------------------------------------------------------- config: edit, validate, diff, apply

async function loadConfig() {
  const [yamlText, json] = await Promise.all([api("GET", "/admin/v1/config?format=yaml"), api("GET", "/admin/v1/config")]);
  keyConfig = new Map((json.data.keys || []).map((entry) => [entry.id, entry]));
  configOriginal = yamlText.data;
  if (!configDirty) {
    $("#config-text").value = configOriginal;
    markLines([]);
  }
}

function markLines(badLines) {
  const count = $("#config-text").value.split("\n").length;
  const bad = new Set(badLines);
  const gutter = $("#gutter");
  const lines = [];
  for (let n = 1; n <= count; n++) {
    lines.push(bad.has(n) ? el("span", { class: "bad-line", text: n }) : document.createTextNode(n + "\n"));
  }
  gutter.replaceChildren(...lines);
  gutter.scrollTop = $("#config-text").scrollTop;
}

function lineOf(location) {
  const match = /:(\d+):(\d+)$/.exec(location || "");
  return match ? Number(match[1]) : null;
}

function goToLine(line) {
  const area = $("#config-text");
  const lines = area.value.split("\n");
  let start = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
  area.focus();
  area.setSelectionRange(start, start + (lines[line - 1] || "").length);
  const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 19;
  area.scrollTop = Math.max(0, (line - 4) * lineHeight);
}

function showIssues(errors) {
  const result = $("#config-result");
  const lines = errors.map((issue) => lineOf(issue.location)).filter(Boolean);
  markLines(lines);
  result.replaceChildren(el("p", { class: "error", text: errors.length === 1 ? "1 problem:" : errors.length + " problems:" }),
    el("ul", { id: "config-errors" }, ...errors.map((issue) => {
      const line = lineOf(issue.location);
      const text = (issue.path || "(top level)") + ": " + issue.message;
      return el("li", { "data-line": line || "" }, line
        ? el("button", { type: "button", class: "small ghost", onclick: () => goToLine(line), text: "line " + line }) : "",
        line ? " " : "", text);
    })));
}

async function validateConfig() {
  const result = await api("POST", "/admin/v1/config/validate", $("#config-text").value, "application/yaml");
  if (result.status !== 200) {
    $("#config-result").replaceChildren(el("p", { class: "error", text: errorText(result) }));
    return false;
  }
  if (result.data.valid) {
    markLines([]);
    $("#config-result").replaceChildren(el("p", {}, el("span", { class: "badge ok", text: "valid" })));
    return true;
  }
  showIssues(result.data.errors);
  return false;
}

function diffLines(before, after) {
  // Longest common subsequence over lines: fine for config files of a few thousand lines.
  const a = before.split("\n"), b = after.split("\n");
  const n = a.length, m = b.length;
  if (n * m > 4e6) return [["!", "The files are too large to compare here."]];
  const table = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (j < m && (i === n || table[i][j + 1] >= table[i + 1][j])) { out.push(["+", b[j]]); j++; }
    else { out.push(["-", a[i]]); i++; }
  }
  return out;
}

function showDiff() {
  const view = $("#config-diff-view");
  const changes = diffLines(configOriginal, $("#config-text").value);
  const shown = [];
  changes.forEach(([mark, text], index) => {
    const near = changes.slice(Math.max(0, index - 2), index + 3).some(([m]) => m !== " ");
    if (mark !== " " || near) shown.push(el("span", { class: mark === "+" ? "add" : mark === "-" ? "del" : "" }, mark + " " + text + "\n"));
  });
  view.replaceChildren(...(shown.length ? shown : [document.createTextNode("No changes.")]));
  view.hidden = false;
  return changes.some(([mark]) => mark !== " ");
}

async function applyConfig() {
  if (!await validateConfig()) return;
  if (!showDiff()) {
    $("#config-result").replaceChildren(el("p", { text: "Nothing to apply: no changes." }));
    return;
  }
  if (!await confirmAction("Apply this config? The file is rewritten (the previous one is kept as .bak) and reloaded.")) return;
  const result = await api("POST", "/admin/v1/config", $("#config-text").value, "application/yaml");
  if (!result.ok) {
    if (result.data && result.data.errors) showIssues(result.data.errors);
    else $("#config-result").replaceChildren(el("p", { class: "error", text: errorText(result) }));
    return;
  }
  configDirty = false;
  $("#config-diff-view").hidden = true;
  const restart = result.data.needs_restart && result.data.needs_restart.length
    ? " Needs a restart: " + result.data.needs_restart.join(", ") + "." : "";
  $("#config-result").replaceChildren(el("p", {}, el("span", { class: "badge ok", text: "applied" }),
    " version " + result.data.version + "." + restart));
  await loadConfig();
  refresh();
}

function revertConfig() {
  configDirty = false;
  $("#config-text").value = configOriginal;
  $("#config-result").replaceChildren();
  $("#config-diff-view").hidden = true;
  markLines([]);
}

// ---------------------------------------------------------------- theme

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(dark ? "light" : "dark");
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", () => signOut(""));
  $("#theme").addEventListener("click", toggleTheme);
  $("#new-key").addEventListener("click", () => openKeyDialog(null));
  $("#key-form").addEventListener("submit", saveKey);
  $("#key-cancel").addEventListener("click", () => $("#key-dialog").close());
  $("#secret-copy").addEventListener("click", copySecret);
  $("#secret-done").addEventListener("click", () => { forgetSecret(); $("#secret-dialog").close(); });
  $("#secret-dialog").addEventListener("close", forgetSecret);
  $("#log-filters").addEventListener("change", () => loadLogs().catch(() => {}));
  $("#log-filters").addEventListener("submit", (event) => { event.preventDefault(); loadLogs().catch(() => {}); });
  const area = $("#config-text");
  area.addEventListener("input", () => { configDirty = area.value !== configOriginal; markLines([]); });
  area.addEventListener("scroll", () => { $("#gutter").scrollTop = area.scrollTop; });
  $("#config-validate").addEventListener("click", validateConfig);
  $("#config-diff").addEventListener("click", showDiff);
  $("#config-apply").addEventListener("click", applyConfig);
  $("#config-revert").addEventListener("click", revertConfig);
  window.addEventListener("resize", drawCharts);
  if (adminKey()) start();
  else { showApp(false); $("#admin-key").focus(); }
});
