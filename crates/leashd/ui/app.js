// The leash Control UI: plain JavaScript, no build step. It talks to the
// same-origin API (a login cookie set by /login) and the WebSocket /api.

const $ = (s) => document.querySelector(s);
const state = {
  session: "",          // "" = the default policy for new sessions
  events: [],           // newest last, folded rows are derived
  maxEvents: 5000,
  policy: null,
  ws: null,
  attempts: 0,
  completions: [],
  completionIndex: 0,
  expanded: new Set(),  // process rows open to their decisions ("session|pid")
};

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function notice(text, error = false) {
  const n = $("#notice");
  n.textContent = text;
  n.className = error ? "notice error" : "notice";
  n.hidden = !text;
}

async function api(path, opts = {}) {
  const sep = path.includes("?") ? "&" : "?";
  const url = state.session && !path.startsWith("/api/sessions") ? `${path}${sep}session=${encodeURIComponent(state.session)}` : path;
  const r = await fetch(url, { credentials: "same-origin", ...opts });
  if (r.status === 401) {
    $("#auth-needed").hidden = false;
    throw new Error("not signed in");
  }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const err = new Error(body?.error ?? String(body));
    err.body = body;
    err.status = r.status;
    throw err;
  }
  return body;
}

const post = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}) });

// ---- sessions and the sensor's tier ----

async function loadSessions() {
  const { sessions } = await api("/api/sessions");
  const sel = $("#session-select");
  const keep = sel.value;
  sel.innerHTML = '<option value="">default policy (new sessions)</option>' +
    sessions.map((s) => `<option value="${esc(s.id)}">${esc(s.id.slice(0, 12))} · ${esc(s.command.join(" "))} · ${esc(s.state)}${s.protect_host === false ? " · no protect-host" : ""}</option>`).join("");
  // The newest running session is selected the first time.
  const running = sessions.filter((s) => s.state === "running");
  if (!keep && running.length && !state.sessionChosen) {
    sel.value = running[running.length - 1].id;
    await selectSession(sel.value);
  } else {
    sel.value = keep;
  }
}

async function loadStatus() {
  const s = await api("/api/status");
  const tier = s.sensor ? `tier: ${s.sensor.tier}` : "leash-sensor is not running";
  $("#tier").textContent = `${tier} · events ${s.events.published} published, ${s.events.stored} stored, ${s.events.dropped} dropped`;
  // Actions enforced the same way, for the same reason, said once.
  const ways = new Map();
  for (const c of s.sensor?.capabilities ?? []) {
    const k = `${c.mechanism}|${c.reason || ""}`;
    if (!ways.has(k)) ways.set(k, { ...c, actions: [] });
    ways.get(k).actions.push(c.action);
  }
  $("#capabilities").innerHTML = [...ways.values()]
    .map((c) => `<li><strong>${esc(c.actions.join(", "))}</strong>: ${esc(c.mechanism)}${c.reason ? ` <span class="muted">(${esc(c.reason)})</span>` : ""}</li>`)
    .concat((s.sensor?.not_refused ?? []).map((g) => `<li class="gap"><strong>not refused</strong>: ${esc(g.attempt)} <span class="muted">(${esc(g.why)})</span></li>`))
    .join("");
}

async function selectSession(id) {
  state.session = id;
  state.sessionChosen = true;
  state.events = [];
  renderEvents();
  connect();
  await loadPolicy();
  await loadSuggestions();
}

// ---- questions about denials (leash --ask) ----

async function loadAsks() {
  const { asks } = await api("/api/asks");
  const box = $("#asks");
  box.hidden = asks.length === 0;
  box.innerHTML = asks.map((a) => `<div class="ask" data-id="${esc(a.id)}" data-session="${esc(a.session)}">
    <strong>Denied, waiting for an answer</strong> · session ${esc(a.session.slice(0, 12))}:
    ${esc(a.action)} <code>${esc(a.resource)}</code> by ${esc(a.executable)}
    <span class="muted">(${a.policies.length ? "policy " + esc(a.policies.join(", ")) : "no permit"})</span>
    ${a.choices.map((c) => `<button class="answer" data-choice="${esc(c)}">${esc(c === "once" ? "Allow once" : c === "session" ? "Allow for this session" : c === "always" ? "Always allow" : "Deny")}</button>`).join("")}
    <span class="muted">denied at ${esc(new Date(a.deadline_unix_ms).toLocaleTimeString())} without an answer</span>
  </div>`).join("");
}

async function answerAsk(button) {
  const box = button.closest(".ask");
  try {
    await post(`/api/asks/${encodeURIComponent(box.dataset.id)}`, { session: box.dataset.session, choice: button.dataset.choice });
    notice(`Answered: ${button.dataset.choice}`);
  } catch (err) {
    notice(err.message, true);
  }
  loadAsks().catch(() => {});
}

// ---- events ----

function connect() {
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
  }
  const status = $("#status");
  status.textContent = "Connecting";
  status.className = "badge connecting";
  const q = state.session ? `?session=${encodeURIComponent(state.session)}` : "";
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api${q}`);
  state.ws = ws;
  let first = true;
  ws.onopen = () => {
    state.attempts = 0;
    status.textContent = "Connected";
    status.className = "badge connected";
  };
  ws.onmessage = (m) => {
    const text = String(m.data);
    // The first frame is the history as NDJSON; then one event per frame.
    const lines = first ? text.split("\n").filter(Boolean) : [text];
    if (first) state.events = [];
    first = false;
    let policyChanged = false;
    for (const l of lines) {
      try {
        const e = JSON.parse(l);
        state.events.push(e);
        if (e.kind === "policy" && (!state.session || e.session === state.session || !e.session)) policyChanged = true;
        if (e.details?.ask_id || e.action === "ask.answer") loadAsks().catch(() => {});
      } catch (_) { /* not an event */ }
    }
    if (state.events.length > state.maxEvents) state.events.splice(0, state.events.length - state.maxEvents);
    scheduleRender();
    if (policyChanged) schedulePolicyReload();
  };
  ws.onclose = () => {
    status.textContent = "Error";
    status.className = "badge error";
    state.attempts += 1;
    setTimeout(connect, Math.min(1000 * state.attempts, 5000));
  };
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderEvents();
  });
}

let policyTimer = null;
function schedulePolicyReload() {
  clearTimeout(policyTimer);
  policyTimer = setTimeout(() => loadPolicy({ keepDraft: true }).catch(() => {}), 300);
}

function decisionOf(e) {
  if (e.decision === "denied") return "denied";
  if (!e.decision && e.details?.ask_id) return "asking";
  if (e.would_deny) return "would-deny";
  if (e.decision === "allowed") return "allowed";
  return "";
}

function filtered() {
  const text = $("#filter-text").value.trim().toLowerCase();
  const decision = $("#filter-decision").value;
  const kind = $("#filter-kind").value;
  return state.events.filter((e) => {
    if (decision && e.decision !== decision) return false;
    if (kind && e.kind !== kind) return false;
    if (text) {
      const hay = `${e.action} ${e.resource} ${e.exe} ${(e.policies || []).join(" ")} ${e.tool ?? ""} ${e.server ?? ""}`.toLowerCase();
      if (!hay.includes(text)) return false;
    }
    return true;
  });
}

// A process's lifecycle (fork, exit) is no decision: it folds into one row
// per process, which expands to show the decisions that process made.
function lifecycle(e) {
  return (e.action || "").startsWith("process.");
}

// Rows of events: identical events fold into one with a repeat count,
// newest first.
function foldRows(events, keyOf) {
  const rows = new Map();
  for (const e of events) {
    const key = keyOf(e);
    const r = rows.get(key);
    if (r) {
      r.count += 1;
      r.e = e;
      rows.delete(key);
      rows.set(key, r);
    } else {
      rows.set(key, { key, e, count: 1 });
    }
  }
  return [...rows.values()].reverse();
}

const decisionKey = (e) => `${e.session}|${e.action}|${e.resource}|${decisionOf(e)}|${(e.policies || []).join(",")}`;
const processKey = (e) => `${e.session}|${e.pid}`;

function decisionRow({ e, count }, child) {
  const d = decisionOf(e);
  const decidable = ["FileOpen", "FileOpenReadOnly", "FileOpenReadWrite", "ProcessExec", "NetworkConnect", "McpCall", "dns.refused", "dns.suspicious"].includes(e.action);
  const buttons = decidable
    ? `<button class="allow" title="allow this" data-effect="permit">✓</button><button class="deny" title="deny this" data-effect="forbid">✗</button>`
    : "";
  return `<tr class="${esc(d)}${child ? " child" : ""}" data-action="${esc(e.action)}" data-resource="${esc(e.resource)}" data-decision="${esc(d)}" data-session="${esc(e.session)}">
      <td class="muted">${esc((e.time || "").slice(11, 19))}</td>
      <td>${esc(e.action)}</td>
      <td class="resource">${esc(e.resource)}</td>
      <td>${d ? `<span class="badge ${esc(d)}">${esc({ allowed: "Allowed", denied: "Denied", "would-deny": "Would deny", asking: "Asking" }[d])}</span>` : ""}</td>
      <td class="count">${count > 1 ? count : ""}</td>
      <td class="policies">${esc((e.policies || []).join(", "))}</td>
      <td>${buttons}</td></tr>`;
}

function processRow({ key, e, count }, made) {
  const denied = made.filter((x) => decisionOf(x) === "denied").length;
  const open = state.expanded.has(key);
  // A fork names no program yet: the one its decisions name, else none.
  const exe = e.exe || made.find((x) => x.exe)?.exe || "";
  const summary = made.length ? `${made.length} decision${made.length > 1 ? "s" : ""}${denied ? `, ${denied} denied` : ""}` : "";
  return `<tr class="process${denied ? " has-denied" : ""}" data-process="${esc(key)}" data-action="process" data-resource="${esc(exe)}" data-decision="" data-decisions="${made.length}" title="the process's fork and exit; click for its decisions">
      <td class="muted">${esc((e.time || "").slice(11, 19))}</td>
      <td><span class="toggle">${made.length ? (open ? "▾" : "▸") : ""}</span> process</td>
      <td class="resource">${esc(exe)} <span class="muted">pid ${esc(String(e.pid ?? ""))}</span></td>
      <td>${summary ? `<span class="badge ${denied ? "denied" : "allowed"}">${esc(summary)}</span>` : ""}</td>
      <td class="count">${count > 1 ? count : ""}</td>
      <td class="policies"></td>
      <td></td></tr>`;
}

function renderEvents() {
  const list = filtered();
  // Decisions by process, for the process rows.
  const byProcess = new Map();
  for (const e of state.events) {
    if (lifecycle(e) || e.pid == null) continue;
    const k = processKey(e);
    if (!byProcess.has(k)) byProcess.set(k, []);
    byProcess.get(k).push(e);
  }
  const rows = foldRows(list, (e) => (lifecycle(e) ? `p|${processKey(e)}` : `d|${decisionKey(e)}`)).slice(0, 200);
  $("#events tbody").innerHTML = rows.map((r) => {
    if (!lifecycle(r.e)) return decisionRow(r, false);
    const key = processKey(r.e);
    const made = byProcess.get(key) || [];
    const row = processRow({ ...r, key }, made);
    if (!state.expanded.has(key)) return row;
    return row + foldRows(made, decisionKey).map((c) => decisionRow(c, true)).join("");
  }).join("");
  const denied = list.filter((e) => e.decision === "denied").length;
  $("#totals").textContent = `${list.length} events (${denied} denied), ${state.events.length} received`;
}

async function fromEvent(button) {
  const tr = button.closest("tr");
  const effect = button.dataset.effect;
  const body = { effect, action: { type: tr.dataset.action, name: tr.dataset.resource } };
  try {
    const path = tr.dataset.session && !state.session ? `/api/policies/add-from-action?session=${encodeURIComponent(tr.dataset.session)}` : "/api/policies/add-from-action";
    const snap = await post(path, body);
    notice(`${effect === "permit" ? "Allowed" : "Denied"}: ${tr.dataset.action} ${tr.dataset.resource}`);
    showPolicy(snap);
  } catch (e) {
    notice(e.message, true);
  }
}

// ---- policy ----

async function loadPolicy({ keepDraft = false } = {}) {
  const snap = await api("/api/policies");
  showPolicy(snap, keepDraft);
}

function policyText(snap) {
  return [snap.cedarFile, snap.cedarRuntime].filter((t) => t && t.trim()).join("\n\n") + "\n";
}

function showPolicy(snap, keepDraft = false) {
  const dirty = state.policy && $("#editor").value !== policyText(state.policy);
  state.policy = snap;
  $("#mode-current").textContent = state.session ? snap.mode : "default policy";
  for (const b of document.querySelectorAll("#mode-panel button")) {
    b.classList.toggle("active", state.session && b.dataset.mode === snap.mode);
    b.disabled = !state.session;
  }
  $("#lines").innerHTML = snap.lines.map((l) => `<li class="${esc(l.effect)}" data-id="${esc(l.id)}">
      ${esc(l.humanized)} <span class="origin">[${esc(l.id)}] ${esc(l.origin)}</span>
      <button class="quiet remove" title="remove">remove</button></li>`).join("");
  $("#admin-note").textContent = [
    snap.cedarAdmin ? "The administrator's policies (/etc/leash/policy.d) apply too and cannot be edited here." : "",
    snap.cedarProtectHost ? "protect-host applies too (no writes to git hooks, .envrc, the agents' settings); only `leash --no-protect-host` leaves it out." : "",
  ].filter(Boolean).join(" ");
  if (!(keepDraft && dirty)) {
    $("#editor").value = policyText(snap);
    highlight([]);
    validateSoon();
  }
}

function highlight(errorLines) {
  const text = $("#editor").value;
  const bad = new Set(errorLines);
  const re = /(\/\/[^\n]*)|("(?:[^"\\\n]|\\.)*"?)|\b(permit|forbid|when|unless|principal|action|resource|context|in|like|has|if|then|else|true|false)\b|([A-Za-z_][A-Za-z0-9_]*::)/g;
  const out = text.split("\n").map((line, i) => {
    let html = "";
    let last = 0;
    for (const m of line.matchAll(re)) {
      const t = m[1] ? "com" : m[2] ? "str" : m[3] ? "kw" : "ent";
      html += esc(line.slice(last, m.index)) + `<span class="tok-${t}">${esc(m[0])}</span>`;
      last = m.index + m[0].length;
    }
    html += esc(line.slice(last));
    return bad.has(i + 1) ? `<span class="err-line">${html || " "}</span>` : html;
  });
  $("#highlight").innerHTML = out.join("\n") + "\n";
  $("#highlight").scrollTop = $("#editor").scrollTop;
}

let validateTimer = null;
function validateSoon() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validate, 300);
}

async function validate() {
  const text = $("#editor").value;
  let r;
  try {
    r = await post("/api/policies/validate", { cedar: text.trim() ? text : " " });
  } catch (e) {
    return;
  }
  if ($("#editor").value !== text) return;
  const markers = [
    ...r.errors.map((e) => ({ cls: "error", line: e.line, text: `${e.line}:${e.column} ${e.message}${e.suggestion ? ` — ${e.suggestion}` : ""}` })),
    ...r.issues.map((i) => ({ cls: i.severity, line: 0, text: `${i.location} ${i.severity} [${i.code}] ${i.message}` })),
  ];
  $("#markers").innerHTML = markers.map((m) => `<li class="${esc(m.cls)}" data-line="${m.line}">${esc(m.text)}</li>`).join("");
  highlight(r.errors.map((e) => e.line));
}

async function save() {
  try {
    const snap = await post("/api/policies/persist", { cedar: $("#editor").value });
    showPolicy(snap);
    notice("Saved and applied");
  } catch (e) {
    notice(`Not saved: ${e.message}`, true);
    if (e.body?.errors) {
      $("#markers").innerHTML = e.body.errors.map((x) => `<li class="error" data-line="${x.line}">${esc(`${x.line}:${x.column} ${x.message}`)}</li>`).join("");
      highlight(e.body.errors.map((x) => x.line));
    }
  }
}

async function setMode(mode) {
  try {
    const snap = await post("/api/policies/mode", { mode });
    showPolicy(snap, true);
    notice(`Mode: ${mode}`);
  } catch (e) {
    notice(e.message, true);
  }
}

async function removeLine(id) {
  try {
    showPolicy(await post("/api/policies/delete", { id }));
    notice("Policy removed");
  } catch (e) {
    notice(e.message, true);
  }
}

async function replay() {
  if (!state.session) {
    notice("Choose a session to replay against", true);
    return;
  }
  try {
    const r = await post("/api/policies/replay", { cedar: $("#editor").value, session: state.session });
    const item = (f, what) => `<li>${what}: ${esc(f.event.action)} ${esc(f.event.resource)} ${f.inexact ? `<span class="muted">(${esc(f.inexact)})</span>` : ""}</li>`;
    $("#replay-result").innerHTML = `<p>${r.replayed} requests replayed: ${r.denied.length} would be denied, ${r.allowed.length} would be allowed, ${r.inexact.length} inexact.</p><ul>` +
      r.denied.map((f) => item(f, "would deny")).join("") + r.allowed.map((f) => item(f, "would allow")).join("") +
      r.inexact.slice(0, 20).map((f) => item(f, "inexact")).join("") + "</ul>";
  } catch (e) {
    notice(`Replay: ${e.message}`, true);
  }
}

async function loadSuggestions() {
  try {
    const r = await api("/suggest");
    $("#suggestions").innerHTML = r.suggestions.slice(0, 20).map((s, i) => `<li data-index="${i}">
      ${esc(s.Summary)} <span class="muted">(${s.EventCount} events, ${s.DeniedCount} denied)</span>
      <pre class="cedar">${esc(s.ProposedCedar)}</pre><button class="quiet add-suggestion">add</button></li>`).join("");
    state.suggestions = r.suggestions;
  } catch (_) { /* shown by api() */ }
}

// ---- completions ----

function cursorPos(t) {
  const before = t.value.slice(0, t.selectionStart).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

let completeController = null;
async function complete() {
  const t = $("#editor");
  completeController?.abort();
  completeController = new AbortController();
  try {
    const r = await api("/api/policies/complete", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ cedar: t.value, cursor: cursorPos(t), maxItems: 20 }),
      signal: completeController.signal,
    });
    state.completions = r.items;
    state.completionIndex = 0;
    renderCompletions();
  } catch (_) { /* aborted */ }
}

function renderCompletions() {
  const ul = $("#completions");
  ul.hidden = state.completions.length === 0;
  ul.innerHTML = state.completions.map((c, i) => `<li class="${i === state.completionIndex ? "sel" : ""}" data-i="${i}">${esc(c.label)} <span class="muted">${esc(c.detail)}</span></li>`).join("");
}

function accept(i) {
  const c = state.completions[i];
  if (!c) return;
  const t = $("#editor");
  const lines = t.value.split("\n");
  const offset = (line, col) => lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0) + col - 1;
  const start = offset(c.range.start.line, c.range.start.column);
  const end = offset(c.range.end.line, c.range.end.column);
  t.value = t.value.slice(0, start) + c.insertText + t.value.slice(end);
  t.selectionStart = t.selectionEnd = start + c.insertText.length;
  state.completions = [];
  renderCompletions();
  highlight([]);
  validateSoon();
}

// ---- wiring ----

window.addEventListener("DOMContentLoaded", async () => {
  $("#session-select").addEventListener("change", (e) => selectSession(e.target.value));
  for (const id of ["#filter-text", "#filter-decision", "#filter-kind"]) $(id).addEventListener("input", scheduleRender);
  $("#asks").addEventListener("click", (e) => {
    const b = e.target.closest("button.answer");
    if (b) answerAsk(b);
  });
  $("#events").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b) return fromEvent(b);
    const p = e.target.closest("tr.process");
    if (p) {
      const key = p.dataset.process;
      if (state.expanded.has(key)) state.expanded.delete(key); else state.expanded.add(key);
      scheduleRender();
    }
  });
  $("#lines").addEventListener("click", (e) => {
    if (e.target.closest("button.remove")) removeLine(e.target.closest("li").dataset.id);
  });
  $("#suggestions").addEventListener("click", async (e) => {
    if (!e.target.closest("button.add-suggestion")) return;
    const s = state.suggestions[Number(e.target.closest("li").dataset.index)];
    try {
      showPolicy(await post("/api/policies/add", { cedar: s.ProposedCedar }));
      notice("Suggestion added");
    } catch (err) {
      notice(err.message, true);
    }
  });
  for (const b of document.querySelectorAll("#mode-panel button")) b.addEventListener("click", () => setMode(b.dataset.mode));
  $("#save").addEventListener("click", save);
  $("#replay").addEventListener("click", replay);
  $("#reload").addEventListener("click", () => loadPolicy());
  $("#suggest-refresh").addEventListener("click", loadSuggestions);
  const ed = $("#editor");
  ed.addEventListener("input", (e) => {
    highlight([]);
    validateSoon();
    if (e.data && /["(:.=,\w]/.test(e.data)) complete();
  });
  ed.addEventListener("scroll", () => { $("#highlight").scrollTop = ed.scrollTop; });
  ed.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); save(); return; }
    if (e.ctrlKey && e.key === " ") { e.preventDefault(); complete(); return; }
    if ($("#completions").hidden) return;
    if (e.key === "ArrowDown") { e.preventDefault(); state.completionIndex = Math.min(state.completionIndex + 1, state.completions.length - 1); renderCompletions(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); state.completionIndex = Math.max(state.completionIndex - 1, 0); renderCompletions(); }
    else if (e.key === "Enter" || e.key === "Tab") { e.preventDefault(); accept(state.completionIndex); }
    else if (e.key === "Escape") { state.completions = []; renderCompletions(); }
  });
  $("#completions").addEventListener("mousedown", (e) => {
    const li = e.target.closest("li");
    if (li) { e.preventDefault(); accept(Number(li.dataset.i)); }
  });
  try {
    await loadSessions();
    if (!state.sessionChosen) {
      connect();
      await loadPolicy();
      await loadSuggestions();
    }
    await loadStatus();
  } catch (e) {
    if (e.message !== "not signed in") notice(e.message, true);
  }
  loadAsks().catch(() => {});
  setInterval(() => { loadSessions().catch(() => {}); loadStatus().catch(() => {}); loadAsks().catch(() => {}); }, 5000);
});
