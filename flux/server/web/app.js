// The Flux web view. It reads the admin API (/_flux/…) and builds the page with DOM calls
// only: every recorded value is set as text (never as markup), and control characters are
// shown as escapes. Recorded data is attacker-controlled; the page's CSP forbids inline
// script besides. No framework, no build step: this file is what the browser runs.

const API = "/_flux";
const UI = "/_flux/ui/";
const POLL_MS = 2000;
const SHORT = 18; // the CLI's short id (flux/_ids.py)

// -- building the DOM -------------------------------------------------------------------

// C0/C1 controls, DEL and the bidirectional overrides: shown as \xNN / \uNNNN, never obeyed.
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function visible(text) {
  return String(text).replace(CONTROLS, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
      : "\\u" + code.toString(16).padStart(4, "0");
  });
}

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, String(value));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(visible(child)));
  }
  return el;
}

function text(value) {
  // Any recorded value as readable text: strings as they are, the rest as JSON.
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

function pre(value) { return h("pre", {}, text(value)); }

function shortId(id) { return String(id || "").slice(0, SHORT); }

function pageOf(id) { return UI + "x/" + encodeURIComponent(id); }

function idLink(id, label) {
  if (!id) return "—";
  return h("span", { class: "mono" },
    h("a", { href: pageOf(id), title: id }, label || shortId(id)), copyButton(id));
}

function copyButton(value) {
  return h("button", {
    type: "button", class: "copy", title: "Copy " + value, "data-copy": value,
    onclick: (event) => {
      event.stopPropagation();
      const button = event.currentTarget;
      const done = () => { button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1200); };
      if (navigator.clipboard) navigator.clipboard.writeText(value).then(done, () => prompt("Copy:", value));
      else prompt("Copy:", value);
    },
  }, "copy");
}

function when(stamp) {
  if (!stamp) return "—";
  const date = new Date(String(stamp).replace(" ", "T").replace(/(\.\d{3})\d+/, "$1"));
  return isNaN(date) ? String(stamp) : date.toLocaleString();
}

function ms(value) {
  if (value === null || value === undefined) return "";
  return value >= 100 ? Math.round(value) + " ms" : Number(value).toFixed(1) + " ms";
}

function badge(status, http) {
  return h("span", { class: "badge " + (status === "ok" ? "ok" : "error") }, http ?? status);
}

function fileLine(file, line) { return file ? `${file}:${line ?? "?"}` : "—"; }

function rowLink(table, pk) {
  const key = Object.entries(pk || {}).map(([k, v]) => `${k}=${v}`).join(",");
  const id = Object.keys(pk || {}).length === 1 ? String(Object.values(pk)[0]) : key;
  return h("a", { href: UI + "row/" + encodeURIComponent(table) + "?id=" + encodeURIComponent(id), class: "row-link" },
    `${table}.${key}`);
}

function section(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

function show(...children) {
  const main = document.getElementById("app");
  main.replaceChildren(...children.flat(Infinity).filter((c) => c));
}

function problem(error) {
  return h("div", { class: "banner bad", role: "alert" }, error.message || String(error));
}

// -- talking to the admin API -------------------------------------------------------------

async function call(method, path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  const url = API + path + (query.toString() ? "?" + query : "");
  // X-Flux-Client: a state change must carry it (a page of another site cannot).
  const response = await fetch(url, { method, credentials: "same-origin",
    headers: { Accept: "application/json", "X-Flux-Client": "web" } });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    const error = new Error(response.status === 401 ? message + " (reload the page to sign in)" : message);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

const get = (path, params) => call("GET", path, params);
const post = (path, params) => call("POST", path, params);

// -- executions ---------------------------------------------------------------------------

const FILTERS = ["function", "status", "kind", "since", "window"];

function listPage() {
  const params = new URLSearchParams(location.search);
  const field = (name, label, input) => h("label", {}, label, input);
  const inputs = {
    function: h("input", { name: "function", placeholder: "any", size: 14 }),
    status: h("select", { name: "status" }, ["", "ok", "error", "4xx", "5xx"].map((s) => h("option", { value: s }, s || "any"))),
    kind: h("select", { name: "kind" }, ["", "http", "job", "cron", "replay", "resume", "invoke"].map((s) => h("option", { value: s }, s || "any"))),
    since: h("input", { name: "since", placeholder: "15m, 2h, 14:05", size: 12 }),
    window: h("input", { name: "window", placeholder: "14:00..14:05", size: 16 }),
  };
  for (const name of FILTERS) inputs[name].value = params.get(name) || "";
  const status = h("span", { class: "live", "aria-live": "polite" }, "live");
  const form = h("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); refresh(true); } },
    field("function", "function", inputs.function), field("status", "status", inputs.status),
    field("kind", "kind", inputs.kind), field("since", "since", inputs.since),
    field("window", "window", inputs.window), h("button", { type: "submit" }, "Filter"), status);
  for (const name of ["status", "kind"]) inputs[name].addEventListener("change", () => refresh(true));
  const body = h("tbody", {});
  const table = h("table", { class: "list", id: "executions" },
    h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "when"), h("th", { class: "hide-narrow" }, "kind"),
      h("th", {}, "what"), h("th", {}, "status"), h("th", { class: "num hide-narrow" }, "ms"), h("th", { class: "hide-narrow" }, "error"))),
    body);
  const message = h("div", {});
  show(h("h1", {}, "Executions"), section(null, form), message, section(null, h("div", { class: "scroll" }, table)));

  let known = null;
  let timer = null;
  async function refresh(changed) {
    const chosen = {};
    for (const name of FILTERS) chosen[name] = inputs[name].value.trim();
    if (changed) {
      const query = new URLSearchParams(Object.entries(chosen).filter(([, v]) => v));
      history.replaceState(null, "", UI + (query.toString() ? "?" + query : ""));
      known = null;
    }
    try {
      const { executions } = await get("/executions", { ...chosen, limit: 50 });
      message.replaceChildren();
      render(executions);
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (error) {
      message.replaceChildren(problem(error));
      status.textContent = "paused";
    }
  }
  function render(executions) {
    const rows = executions.map((e) => {
      const what = e.function || `${e.method || ""} /${e.route || ""}`;
      const row = h("tr", { class: e.status === "error" ? "failed" : "", "data-id": e.request_id,
        onclick: () => { location.href = pageOf(e.request_id); } },
        h("td", {}, idLink(e.request_id)), h("td", {}, when(e.started_at)), h("td", { class: "hide-narrow" }, e.kind),
        h("td", {}, what), h("td", { class: "status" }, e.status === "error" ? "✗ " : "", e.http_status ?? e.status),
        h("td", { class: "num hide-narrow" }, ms(e.duration_ms)),
        h("td", { class: "hide-narrow error-text" }, e.error_type ? `${e.error_type}: ${e.error_message ?? ""}` : ""));
      if (known && !known.has(e.request_id)) row.classList.add("new");
      return row;
    });
    body.replaceChildren(...rows);
    if (!executions.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no executions match")));
    known = new Set(executions.map((e) => e.request_id));
  }
  refresh(false);
  timer = setInterval(() => { if (!document.hidden) refresh(false); }, POLL_MS);
  window.addEventListener("pagehide", () => clearInterval(timer));
}

// -- one execution ------------------------------------------------------------------------

async function executionPage(id) {
  show(h("h1", {}, "Execution ", h("span", { class: "mono" }, shortId(id))), h("p", { class: "muted" }, "Loading…"));
  let exported, trace;
  try {
    [exported, trace] = await Promise.all([get(`/executions/${encodeURIComponent(id)}`), get(`/executions/${encodeURIComponent(id)}/trace`)]);
  } catch (error) {
    show(h("h1", {}, "Execution ", h("span", { class: "mono" }, shortId(id))), problem(error));
    return;
  }
  const record = exported.record;
  const mutations = exported.mutations || [];
  let why = null;
  if (record.status !== "ok") {
    try { why = await get(`/executions/${encodeURIComponent(record.request_id)}/why`); } catch (error) { why = { failed: error }; }
  }
  const what = record.function ? `${record.method || record.kind} /${record.route || ""} → ${record.function}` : `${record.method || ""} /${record.route || ""}`;
  const head = [
    h("h1", {}, "Execution ", idLink(record.request_id)),
    h("div", { class: "facts" }, h("span", {}, what), badge(record.status, record.http_status), h("span", {}, record.kind),
      h("span", {}, when(record.started_at)), h("span", {}, ms(record.duration_ms)),
      record.code_sha ? h("span", { class: "mono" }, "code " + record.code_sha.slice(0, 8) + (record.code_dirty ? " (dirty)" : "")) : null,
      record.tenant ? h("span", {}, "tenant " + record.tenant) : null),
    links(record, trace),
  ];
  const warnings = (trace.incomplete || []).map((gap) => h("div", { class: "banner warn incomplete" },
    "incomplete record: ", gap.what, " at ", fileLine(gap.file, gap.line), " was not recorded"));
  const parts = [head, warnings];
  if (why) parts.push(why.failed ? problem(why.failed) : await whyPanel(why, record));
  parts.push(exchange(record));
  parts.push(waterfall(record, mutations));
  if (record.logs && record.logs.length) parts.push(section("Log", logTable(record.logs)));
  if (record.status !== "ok" && record.function) parts.push(resumePanel(record));
  show(parts);
}

function links(record, trace) {
  const items = [];
  const parent = trace.parent || (record.parent_id ? { request_id: record.parent_id } : null);
  if (parent) items.push(h("span", { class: "link-parent" }, "enqueued by ", idLink(parent.request_id)));
  if (record.replay_of) items.push(h("span", {}, "replay of ", idLink(record.replay_of)));
  if (record.resumed_from) items.push(h("span", {}, "resumes ", idLink(record.resumed_from)));
  for (const job of trace.jobs || []) {
    items.push(h("span", { class: "link-job" }, `job ${job.function} (${job.status}, ${job.attempts}/${job.max_attempts})`,
      job.last_request_id ? [" · last run ", idLink(job.last_request_id)] : null));
  }
  for (const other of trace.derived || []) {
    items.push(h("span", { class: "link-derived" }, other.kind === "resume" ? "resumed by " : "replayed by ", idLink(other.request_id),
      " ", badge(other.status, other.http_status)));
  }
  return items.length ? h("div", { class: "links" }, items) : null;
}

async function whyPanel(why, record) {
  const cause = why.root_cause || {};
  const loc = why.location || {};
  const rows = [
    ["Root cause", h("span", {}, h("span", { class: "cause", id: "root-cause" }, cause.message), " ", h("span", { class: "muted" }, `[${cause.class}]`))],
  ];
  if (loc.file) {
    const where = h("div", {}, h("span", { class: "mono", id: "location" }, fileLine(loc.file, loc.line)),
      h("span", { class: "muted" }, ` (${loc.function || ""}${loc.code_sha ? " · code " + loc.code_sha.slice(0, 8) : ""})`));
    try {
      const code = await get("/source", { file: loc.file, line: loc.line || 1 });
      where.append(h("pre", { class: "code" }, code.lines.map((l) => h("span", { class: l.line === loc.line ? "hit" : "" },
        h("span", { class: "ln" }, String(l.line)), l.text, "\n"))));
    } catch { /* the file is not on this server: the location stands alone */ }
    rows.push(["Location", where]);
  }
  rows.push(["Data changes", why.mutations.length ? h("ul", {}, why.mutations.map((m) => h("li", {},
    rowLink(m.table, m.pk), " ", m.op.toLowerCase(), " ",
    h("span", { class: "muted" }, Object.entries(m.changes || {}).slice(0, 5).map(([c, [o, n]]) => o === null ? `${c}: ${text(n)}` : `${c}: ${text(o)} → ${text(n)}`).join("  ")),
    m.rolled_back ? h("span", { class: "rolled" }, " (rolled back)") : null))) : h("span", { class: "muted" }, "none")]);
  const dep = why.departure;
  if (dep) {
    rows.push(["Departed", h("div", {}, "from the last success ", idLink(dep.from), ": ", dep.description, " ",
      h("a", { href: UI + "diff?a=" + encodeURIComponent(dep.from) + "&b=" + encodeURIComponent(record.request_id), id: "diff-last-success" }, "diff with it"),
      Object.entries(dep.config || {}).map(([key, [then, now]]) => h("div", {}, `config ${key} was ${text(then)}, here ${text(now)}`)))]);
  }
  const similar = why.similar || [];
  const summary = why.similar_summary || {};
  rows.push(["Similar", similar.length || summary.count > 1
    ? h("div", {}, summary.count ? `seen ${summary.count} time(s), this one included · first ${when(summary.first_seen)} · last ${when(summary.last_seen)} ` : "",
      [["the same failure:", similar.filter((n) => n.distance === 0)],
       ["alike, not the same:", similar.filter((n) => n.distance !== 0)]]
        .filter(([, list]) => list.length)
        .map(([label, list]) => h("div", {}, label, " ", list.map((n) => [idLink(n.request_id), " "]))))
    : h("span", { class: "muted" }, "no earlier failure like it")]);
  if (why.suggestion) rows.push(["Suggestion", h("div", { id: "suggestion" }, why.suggestion)]);
  rows.push(["Model", askModel(record)]);
  return section("Why it failed", h("dl", { class: "why" }, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)])));
}

function askModel(record) {
  // flux why --ai, asked by the server (its [ai] table, its key, its code). The answer is
  // the model's text: shown as text, like everything else.
  const out = h("div", { id: "ai-answer" });
  const ask = h("button", { type: "button", id: "ai-ask" }, "Ask the model (flux why --ai)");
  ask.addEventListener("click", async () => {
    ask.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Asking…"));
    try {
      const { ai } = await post(`/executions/${encodeURIComponent(record.request_id)}/why/ai`, {});
      out.replaceChildren(ai.answer ? h("pre", {}, ai.answer) : h("div", { class: "banner warn" }, ai.error || "no answer"),
        ai.model ? h("div", { class: "muted" }, `${ai.model}${ai.truncated ? " · prompt cut to the size cap" : ""}`) : null);
    } catch (error) { out.replaceChildren(problem(error)); }
    ask.disabled = false;
  });
  return h("div", {}, ask, out);
}

function exchange(record) {
  const request = record.request || {};
  const response = record.response || {};
  const reqHead = `${request.method || record.method || ""} /${request.route || record.route || ""}`;
  return h("div", { class: "grid2" },
    section("Request", h("div", { class: "mono request-line" }, reqHead),
      Object.keys(request.query || {}).length ? [h("h3", { class: "muted" }, "query"), pre(request.query)] : null,
      h("details", {}, h("summary", { class: "muted" }, "headers"), pre(request.headers || {})),
      h("div", { class: "request-body" }, pre(request.body))),
    section("Response", h("div", {}, badge(record.status, response.status ?? record.http_status)),
      record.error ? h("div", { class: "error-text" }, `${record.error.type || "error"}: ${record.error.message || ""}`) : null,
      pre(response.body)));
}

function tree(spans) {
  const byParent = new Map();
  for (const span of spans) {
    const key = span.parent_id || "";
    if (!byParent.has(key)) byParent.set(key, []);
    byParent.get(key).push(span);
  }
  const ids = new Set(spans.map((s) => s.id));
  const order = [];
  const visit = (span, depth) => {
    order.push([span, depth]);
    for (const child of (byParent.get(span.id) || []).sort((a, b) => a.start_ms - b.start_ms)) visit(child, depth + 1);
  };
  for (const root of spans.filter((s) => !s.parent_id || !ids.has(s.parent_id)).sort((a, b) => a.start_ms - b.start_ms)) visit(root, 0);
  return order;
}

function waterfall(record, mutations) {
  const spans = record.spans || [];
  const end = Math.max(1, record.duration_ms || 0, ...spans.map((s) => (s.start_ms || 0) + (s.duration_ms || 0)));
  const list = h("div", { class: "waterfall", id: "waterfall" });
  for (const [span, depth] of tree(spans)) {
    const left = ((span.start_ms || 0) / end) * 100;
    const width = Math.max(0.3, ((span.duration_ms || 0) / end) * 100);
    const bar = h("div", { class: "bar" });
    bar.style.left = left + "%"; // set through the DOM, which the CSP allows (no inline style attribute)
    bar.style.width = Math.min(width, 100 - left) + "%";
    const name = h("div", { class: "name", title: span.name }, h("span", { class: "kind" }, span.kind), span.status === "error" ? "✗ " : "", span.name);
    name.style.paddingLeft = depth * 14 + "px";
    let detail = null;
    const row = h("div", { class: "span" + (span.status === "error" ? " err" : ""), "data-span": span.id, role: "button", tabindex: 0,
      onclick: () => {
        if (detail) { detail.remove(); detail = null; return; }
        detail = spanDetail(span, record, mutations);
        row.after(detail);
      } }, name, h("div", { class: "track" }, bar), h("div", { class: "ms" }, ms(span.duration_ms)));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") row.click(); });
    list.append(row);
  }
  return section("Spans", h("p", { class: "muted" }, `${spans.length} spans over ${ms(end)} — click one to open it`), list);
}

function spanDetail(span, record, mutations) {
  const attrs = span.attrs || {};
  const parts = [h("div", { class: "mono" }, fileLine(span.file, span.line), " · started at ", ms(span.start_ms), " · took ", ms(span.duration_ms))];
  if (span.error) parts.push(h("div", { class: "error-text" }, `${span.error.type || "error"}: ${span.error.message || ""}`));
  if (attrs.sql) {
    parts.push(h("h3", {}, "SQL"), pre(attrs.sql));
    if (attrs.params && attrs.params.length) parts.push(h("h3", {}, "parameters"), pre(attrs.params));
    if (attrs.rowcount !== undefined) parts.push(h("div", { class: "muted" }, `${attrs.rowcount} row(s)`));
  }
  const tape = (record.tape || []).filter((t) => t.span_id === span.id);
  if (span.kind === "http" || attrs.url) {
    // The answer is on the tape (what replay and resume serve); older records kept it on the span.
    const answer = attrs.response || (tape.find((t) => t.kind === "http") || {}).value;
    parts.push(h("h3", {}, "HTTP request"), h("div", { class: "mono" }, `${attrs.method || ""} ${attrs.url || ""}`));
    if (attrs.request) parts.push(pre(attrs.request));
    parts.push(h("h3", {}, "HTTP response"), answer ? pre(answer) : h("div", { class: "muted" }, attrs.status ? `status ${attrs.status}` : "no answer"));
  }
  if (tape.length) parts.push(h("h3", {}, "tape"), h("table", {}, tape.map((t) => h("tr", {}, h("td", {}, t.kind), h("td", { class: "mono" }, t.key), h("td", {}, pre(t.value))))));
  const changed = mutations.filter((m) => m.span_id === span.id);
  if (changed.length) {
    parts.push(h("h3", {}, "data changes"), h("ul", {}, changed.map((m) => h("li", {},
      rowLink(m.table_schema === "public" ? m.table_name : `${m.table_schema}.${m.table_name}`, m.pk), " ", String(m.op).toLowerCase(), " ",
      h("span", { class: "muted" }, (m.changed_cols || []).join(", ")), m.rolled_back ? h("span", { class: "rolled" }, " (rolled back)") : null))));
  }
  const logs = (record.logs || []).filter((l) => l.span_id === span.id);
  if (logs.length) parts.push(h("h3", {}, "log"), logTable(logs));
  const rest = Object.fromEntries(Object.entries(attrs).filter(([k]) => !["sql", "params", "request", "response", "url", "method", "rowcount"].includes(k)));
  if (Object.keys(rest).length) parts.push(h("details", {}, h("summary", { class: "muted" }, "attributes"), pre(rest)));
  return h("div", { class: "detail", "data-detail": span.id }, parts);
}

function logTable(logs) {
  return h("table", { class: "log" }, logs.map((l) => h("tr", {},
    h("td", { class: "muted" }, l.level || ""), h("td", {}, l.message ?? l.msg ?? ""),
    h("td", { class: "mono muted" }, Object.keys(l.fields || {}).length ? JSON.stringify(l.fields) : ""))));
}

// -- resume -------------------------------------------------------------------------------

function resumePanel(record) {
  const out = h("div", { id: "resume-result" });
  const go = h("button", { type: "button", class: "danger", id: "resume-confirm", hidden: true }, "Resume now");
  const plan = h("button", { type: "button", class: "primary", id: "resume-plan" }, "Plan a resume");
  plan.addEventListener("click", async () => {
    plan.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Planning…"));
    try {
      const dry = await post(`/executions/${encodeURIComponent(record.request_id)}/resume`, { dry_run: "true" });
      out.replaceChildren(planTable(dry));
      go.hidden = Boolean(dry.refusal);
    } catch (error) { out.replaceChildren(problem(error)); }
    plan.disabled = false;
  });
  go.addEventListener("click", async () => {
    if (!confirm("Resume this execution with the code this server runs? Calls served from the tape are not sent again.")) return;
    go.disabled = plan.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Resuming…"));
    try {
      const done = await post(`/executions/${encodeURIComponent(record.request_id)}/resume`, {});
      out.replaceChildren(h("div", { class: "banner " + (done.status === "ok" ? "" : "bad"), id: "resume-done" },
        "resumed: ", badge(done.status, done.status), " ", done.request_id ? ["new execution ", idLink(done.request_id)] : "no execution recorded"),
      planTable(done));
      go.hidden = true;
    } catch (error) { out.replaceChildren(problem(error)); go.disabled = plan.disabled = false; }
  });
  return section("Resume", h("p", { class: "muted" }, "Finish this execution with today's code: what already happened outside is served from the tape; the rest runs live."),
    h("div", { class: "links" }, plan, go), out);
}

function planTable(result) {
  const rows = (result.plan || []).map((step) => h("tr", {}, h("td", { class: "mono" }, step.call), h("td", { class: "mode" }, step.mode)));
  return h("div", {},
    result.refusal ? h("div", { class: "banner bad" }, result.refusal) : null,
    (result.drift || []).map((d) => h("div", { class: "banner warn" }, `${fileLine(d.file, d.line)} reads something else now`)),
    h("table", { class: "plan", id: "resume-plan-table" }, h("thead", {}, h("tr", {}, h("th", {}, "call"), h("th", {}, "mode"))), h("tbody", {}, rows)));
}

// -- a row ----------------------------------------------------------------------------------

async function rowPage(table) {
  const key = new URLSearchParams(location.search).get("id") || "";
  const title = h("h1", {}, "Row ", h("span", { class: "mono" }, `${table} ${key}`));
  show(title, h("p", { class: "muted" }, "Loading…"));
  let history, blame;
  try {
    [history, blame] = await Promise.all([get(`/state/${encodeURIComponent(table)}/history`, { id: key }),
      get(`/state/${encodeURIComponent(table)}/blame`, { id: key })]);
  } catch (error) { show(title, problem(error)); return; }
  const changes = (history.rows || []).map((r) => h("tr", { class: r.rolled_back ? "rolled-back" : "" },
    h("td", {}, when(r.at)), h("td", {}, r.op), h("td", {}, idLink(r.request_id)), h("td", {}, r.function || r.actor || ""),
    h("td", { class: "mono" }, fileLine(r.file, r.line)),
    h("td", {}, Object.entries(r.changes || {}).map(([c, [o, n]]) => h("div", { class: "mono" }, o === null ? `${c}: ${text(n)}` : `${c}: ${text(o)} → ${text(n)}`))),
    h("td", {}, r.rolled_back ? h("span", { class: "rolled" }, "rolled back") : "")));
  const columns = Object.entries(blame.columns || {}).map(([c, b]) => h("tr", {},
    h("td", { class: "mono" }, c), h("td", { class: "mono" }, text(b.value)), h("td", {}, idLink(b.request_id)),
    h("td", {}, b.function || b.actor || ""), h("td", { class: "mono" }, fileLine(b.file, b.line)), h("td", {}, when(b.at))));
  show(title,
    section("History", h("div", { class: "scroll" }, h("table", { id: "history" }, h("thead", {}, h("tr", {}, ["at", "op", "execution", "by", "where", "changes", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, changes.length ? changes : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no recorded change")))))),
    section("Blame", h("div", { class: "scroll" }, h("table", { id: "blame" }, h("thead", {}, h("tr", {}, ["column", "value", "execution", "by", "where", "at"].map((t) => h("th", {}, t)))),
      h("tbody", {}, columns)))));
}

// -- diff -----------------------------------------------------------------------------------

async function diffPage() {
  const params = new URLSearchParams(location.search);
  const a = h("input", { name: "a", placeholder: "execution A (baseline)", size: 22 });
  const b = h("input", { name: "b", placeholder: "execution B", size: 22 });
  a.value = params.get("a") || "";
  b.value = params.get("b") || "";
  const form = h("form", { class: "filters", method: "get", action: UI + "diff" },
    h("label", {}, "A", a), h("label", {}, "B", b), h("button", { type: "submit" }, "Compare"));
  const title = h("h1", {}, "Diff");
  if (!a.value || !b.value) { show(title, section(null, form)); return; }
  show(title, section(null, form), h("p", { class: "muted" }, "Loading…"));
  let diff;
  try { diff = await get("/diff", { a: a.value, b: b.value }); } catch (error) { show(title, section(null, form), problem(error)); return; }
  const s = diff.summary;
  const marks = { same: " ", changed: "~", added: "+", removed: "−" };
  const spans = diff.spans.map((c) => {
    const span = c.b || c.a || {};
    return h("tr", { class: c.status, "data-status": c.status },
      h("td", { class: "mark" }, marks[c.status]), h("td", {}, span.name || "?"),
      h("td", { class: "mono muted" }, fileLine(span.file, span.line)),
      h("td", { class: "num" }, c.latency_delta_ms === null || c.latency_delta_ms === undefined ? "" : (c.latency_delta_ms > 0 ? "+" : "") + ms(c.latency_delta_ms)),
      h("td", {}, Object.entries(c.changes || {}).map(([field, [o, n]]) => h("div", { class: "mono" }, `${field}: ${text(o)} → ${text(n)}`))));
  });
  const changes = (title2, changed) => Object.keys(changed || {}).length
    ? section(title2, h("table", {}, Object.entries(changed).map(([path, [o, n]]) => h("tr", {}, h("td", { class: "mono" }, path), h("td", {}, pre(o)), h("td", {}, pre(n))))))
    : null;
  const muts = diff.mutations || {};
  show(title, section(null, form),
    h("div", { class: "facts" }, h("span", {}, "A ", idLink(diff.a_id)), h("span", {}, "→ B ", idLink(diff.b_id)),
      h("span", { id: "diff-summary" }, `${s.same} same · ${s.changed} changed · ${s.added} added · ${s.removed} removed`),
      s.latency_delta_ms !== null ? h("span", {}, "latency " + (s.latency_delta_ms > 0 ? "+" : "") + ms(s.latency_delta_ms)) : null),
    section("Spans", h("div", { class: "scroll diff" }, h("table", { id: "diff-spans" }, h("tbody", {}, spans)))),
    changes("Input", diff.input), changes("Output", diff.output), changes("Error", diff.error), changes("Config", diff.config),
    Object.values(muts).some((m) => Object.keys(m).length)
      ? section("Data changes", h("table", {}, ["added", "removed", "changed"].flatMap((kind) => Object.entries(muts[kind] || {}).map(([key, value]) =>
        h("tr", {}, h("td", {}, kind), h("td", { class: "mono" }, key), h("td", {}, pre(value)))))))
      : null);
}

// -- start ----------------------------------------------------------------------------------

function start() {
  const button = document.getElementById("signout");
  if (button) {
    button.addEventListener("click", async () => {
      try { await post("/ui/signout", {}); } catch { /* signed out already */ }
      location.href = UI;
    });
  }
  const path = location.pathname.startsWith(UI) ? location.pathname.slice(UI.length) : "";
  const [page, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  if (page === "x" && arg) executionPage(arg);
  else if (page === "row" && arg) rowPage(arg);
  else if (page === "diff") diffPage();
  else listPage();
}

start();
