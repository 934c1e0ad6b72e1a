// The labeling page: shows the batch the server picked, sends each answer at once (in order), polls for the next
// batch and the accuracy, and walks the audit's suspects. Text from the store is only ever set as text, never HTML.
"use strict";

const app = {
  view: null,          // the server's last /api/state
  local: new Map(),    // id -> {answer, skipped}: answers sent and not yet in a server view
  current: 0,          // index of the shown image in the batch
  batchNumber: -1,
  queue: Promise.resolve(),
  pending: 0,
  highlight: 0,        // the class button Enter picks
  auditOffset: 0,
  auditLimit: 24,
};
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, payload) {
  const options = payload === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)};
  const response = await fetch(path, options);
  let data;
  try { data = await response.json(); } catch (err) { data = {error: `${response.status} ${response.statusText}`}; }
  if (!response.ok) throw new Error(data.error || `request failed (${response.status})`);
  return data;
}

function showMessage(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

function setPending(delta) {
  app.pending += delta;
  document.body.dataset.pending = String(app.pending);
  $("saved").textContent = app.pending ? "saving…" : (app.view && app.view.version ? "every answer saved" : "");
}

// ------------------------------------------------------------------------------------------------ state
function items() {
  if (!app.view) return [];
  return app.view.batch.items.map((item) => ({...item, ...(app.local.get(item.id) || {})}));
}

const isOpen = (item) => !item.answer && !item.skipped;

function applyView(view) {
  app.view = view;
  for (const item of view.batch.items) {  // what the server confirms needs no local copy
    const mine = app.local.get(item.id);
    if (mine && mine.answer === item.answer && Boolean(mine.skipped) === Boolean(item.skipped)) app.local.delete(item.id);
  }
  if (view.batch.number !== app.batchNumber) {
    app.batchNumber = view.batch.number;
    app.local.clear();
    const all = items();
    app.current = Math.max(0, all.findIndex(isOpen));
  }
  $("undo").disabled = !view.undo;
  $("undo").title = view.undo ? `revert the last answer: ${view.undo.id} → ${view.undo.label}` : "no answer to undo";
  render();
}

async function refresh() {
  if (app.pending) return;
  try { applyView(await api("/api/state")); } catch (err) { showMessage(`the server does not answer: ${err.message}`); }
}

function advance() {
  const all = items();
  for (let step = 1; step <= all.length; step++) {
    const k = (app.current + step) % all.length;
    if (isOpen(all[k])) { app.current = k; return; }
  }
}

function send(path, payload, item, change) {
  app.local.set(item.id, change);
  advance();
  app.highlight = 0;
  $("filter").value = "";
  render();
  setPending(+1);
  app.queue = app.queue.then(async () => {
    try {
      const view = await api(path, payload);
      showMessage("");
      setPending(-1);
      if (!app.pending) applyView(view);
    } catch (err) {
      app.local.delete(item.id);
      const back = items().findIndex((it) => it.id === item.id);
      if (back >= 0) app.current = back;  // show the image whose answer was refused
      setPending(-1);
      showMessage(err.message);
      render();
    }
  });
}

function answer(label, newClass = false) {
  const item = items()[app.current];
  if (!item) return;
  send("/api/answer", {id: item.id, label, new_class: newClass}, item, {answer: label, skipped: false});
}

function skip() {
  const item = items()[app.current];
  if (!item) return;
  send("/api/skip", {id: item.id}, item, {answer: null, skipped: true});
}

async function undo() {
  if (app.pending || !app.view || !app.view.undo) return;
  try {
    const view = await api("/api/undo", {});
    const id = app.view.undo.id;
    app.local.delete(id);
    showMessage("");
    applyView(view);
    const back = items().findIndex((it) => it.id === id);
    if (back >= 0) { app.current = back; render(); }  // the undone image is on screen again
  } catch (err) { showMessage(err.message); }
}

// ------------------------------------------------------------------------------------------------ drawing
function thumb(src, cls, alt) {
  const img = el("img", {src, alt, class: cls || "", loading: "lazy"});
  img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 128));
  img.addEventListener("error", () => { img.alt = "cannot be read"; });
  return img;
}

function matches() {
  const text = $("filter").value.trim().toLowerCase();
  const classes = app.view ? app.view.classes : [];
  if (!text) return classes;
  const starts = classes.filter((c) => c.name.toLowerCase().startsWith(text));
  const inside = classes.filter((c) => !c.name.toLowerCase().startsWith(text) && c.name.toLowerCase().includes(text));
  return starts.concat(inside);
}

function renderClasses(item) {
  const box = $("classes");
  box.replaceChildren();
  const shown = matches();
  const typed = $("filter").value.trim();
  shown.forEach((c, k) => {
    const button = el("button", {type: "button", "data-class": c.name, onclick: () => answer(c.name)});
    if (k < 9) button.append(el("kbd", {text: String(k + 1)}), " ");
    button.append(c.name, el("span", {class: "count", text: String(c.count)}));
    if (item && item.predicted === c.name) { button.classList.add("guess"); button.title = "the model's guess"; }
    if (typed && k === app.highlight) button.classList.add("first");
    button.disabled = !item || !isOpen(item) && false;
    box.append(button);
  });
  if (typed && !app.view.classes.some((c) => c.name === typed)) {
    const add = el("button", {type: "button", class: "add", "data-new-class": typed,
                              onclick: () => answer(typed, true)}, `+ new class “${typed}”`);
    if (!shown.length) add.classList.add("first");
    box.append(add);
  }
}

function renderAccuracy() {
  const history = app.view.accuracy;
  const box = $("accuracy");
  box.replaceChildren();
  const last = history.length ? history[history.length - 1] : null;
  if (!last) { box.append(el("p", {class: "meta", text: "measured after the first fit"})); return; }
  const headline = el("p");
  if (last.accuracy === null) headline.append(el("span", {class: "meta", text: last.detail}));
  else {
    headline.append(el("span", {class: "big", text: `${(100 * last.accuracy).toFixed(1)} %`}), " ");
    if (last.change !== null) {
      const points = 100 * last.change;
      headline.append(el("span", {class: points >= 0 ? "up" : "down",
                                  text: `${points >= 0 ? "+" : ""}${points.toFixed(1)} points since the last batch`}));
    }
    headline.append(el("br"), el("span", {class: "meta", text: last.detail}));
  }
  const table = el("table", {}, el("tr", {}, el("th", {text: "after batch"}), el("th", {text: "labels"}),
                                   el("th", {text: "CV accuracy"}), el("th", {text: "change"})));
  for (const h of history.slice(-8).reverse()) {
    table.append(el("tr", {title: h.detail}, el("td", {text: String(h.batch)}), el("td", {text: String(h.labels)}),
      el("td", {text: h.accuracy === null ? "–" : `${(100 * h.accuracy).toFixed(1)} %`}),
      el("td", {class: h.change > 0 ? "up" : h.change < 0 ? "down" : "",
                text: h.change === null ? "" : `${h.change >= 0 ? "+" : ""}${(100 * h.change).toFixed(1)}`})));
  }
  box.append(headline, table);
}

function renderStrip(all) {
  const strip = $("strip");
  strip.replaceChildren();
  all.forEach((item, k) => {
    const badge = item.answer ? el("span", {class: "badge", text: item.answer}) :
      item.skipped ? el("span", {class: "badge skipped", text: "skipped"}) : el("span", {class: "badge open", text: "…"});
    const figure = el("figure", {class: k === app.current ? "current" : "", "data-id": item.id,
                                 onclick: () => { app.current = k; render(); }},
                      thumb(item.thumb, "", item.id), el("figcaption", {}, badge));
    strip.append(figure);
  });
}

function render() {
  const view = app.view;
  if (!view) return;
  const all = items();
  const item = all[app.current];
  const open = all.filter(isOpen).length;
  $("summary").textContent = `${view.labels} labels · ${view.pool} images left to label · ${view.method}` +
    (view.busy ? ` · ${view.busy}…` : "");
  $("notice").hidden = !view.error;
  $("notice").textContent = view.error ? `${view.error.job}: ${view.error.message}` : "";
  $("batch-title").textContent = view.batch.number ? `Batch ${view.batch.number}: ${all.length - open} of ${all.length} done` : "Batch";
  $("batch-note").textContent = view.batch.note;
  const img = $("current-img");
  if (item && img.dataset.src !== item.thumb) {
    img.dataset.src = item.thumb;
    img.classList.remove("small");
    img.onload = () => img.classList.toggle("small", img.naturalWidth < 128);
    img.src = item.thumb;
  }
  img.hidden = !item;
  img.alt = item ? item.id : "";
  $("current-id").textContent = item ? item.id : "";
  $("current-guess").textContent = !item ? "" : item.answer ? `labeled ${item.answer} (click another class to change)` :
    item.skipped ? "skipped" : item.predicted ? `model's guess: ${item.predicted} — ${item.reason}` : item.reason;
  $("done").hidden = open > 0 && all.length > 0;
  $("done").textContent = all.length === 0 && !view.busy ? view.batch.note || "nothing to label" :
    `Batch done. ${view.busy ? view.busy + "…" : "Next batch ready."}`;
  renderClasses(item);
  renderStrip(all);
  renderAccuracy();
}

// ------------------------------------------------------------------------------------------------ keys
function onKey(event) {
  if ($("audit-view").hidden === false || event.ctrlKey || event.metaKey || event.altKey) return;
  const filter = $("filter");
  const inFilter = document.activeElement === filter;
  if (inFilter) {
    const shown = matches();
    if (event.key === "Enter") {
      event.preventDefault();
      const typed = filter.value.trim();
      if (shown.length) answer(shown[Math.min(app.highlight, shown.length - 1)].name);
      else if (typed) answer(typed, true);
    } else if (event.key === "Escape") { filter.value = ""; filter.blur(); app.highlight = 0; render(); }
    else if (event.key === "ArrowDown") { event.preventDefault(); app.highlight = Math.min(app.highlight + 1, shown.length - 1); render(); }
    else if (event.key === "ArrowUp") { event.preventDefault(); app.highlight = Math.max(app.highlight - 1, 0); render(); }
    return;
  }
  if (/^[1-9]$/.test(event.key)) {
    const shown = matches();
    const k = Number(event.key) - 1;
    if (k < shown.length) { event.preventDefault(); answer(shown[k].name); }
  } else if (event.key === "0") { event.preventDefault(); skip(); }
  else if (event.key === "Backspace") { event.preventDefault(); undo(); }
  else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
    event.preventDefault();
    const n = items().length;
    if (n) app.current = (app.current + (event.key === "ArrowRight" ? 1 : n - 1)) % n;
    render();
  } else if (event.key.length === 1 && /\S/.test(event.key)) {
    filter.focus();  // type-ahead: the key lands in the box
  }
}

// ------------------------------------------------------------------------------------------------ audit
async function loadAudit(refresh = false) {
  let page;
  try {
    page = await api(`/api/audit?offset=${app.auditOffset}&limit=${app.auditLimit}${refresh ? "&refresh=1" : ""}`);
  } catch (err) { showMessage(err.message); return; }
  const list = $("audit-list");
  list.replaceChildren();
  if (page.status === "running") {
    $("audit-note").textContent = "auditing the labels (out-of-fold fits)…";
    setTimeout(() => { if (!$("audit-view").hidden) loadAudit(); }, 1000);
    return;
  }
  if (page.status === "error") { $("audit-note").textContent = `the audit failed: ${page.error}`; return; }
  $("audit-note").textContent = page.note;
  const end = Math.min(page.offset + page.items.length, page.total);
  $("audit-range").textContent = page.total ? `${page.offset + 1}–${end} of ${page.total}` : "nothing left to check";
  $("audit-prev").disabled = page.offset === 0;
  $("audit-next").disabled = end >= page.total;
  for (const s of page.items) list.append(suspectCard(s));
}

function suspectCard(s) {
  const choose = el("select", {"aria-label": "another class"});
  for (const c of app.view ? app.view.classes : []) choose.append(el("option", {value: c.name, text: c.name}));
  choose.value = s.suggested;
  const decide = async (path, payload) => {
    try { await api(path, payload); showMessage(""); } catch (err) { showMessage(err.message); }
    loadAudit();
    refresh();
  };
  return el("div", {class: "suspect", "data-id": s.id}, thumb(s.thumb, "", s.id),
    el("div", {class: "id", text: s.id}),
    el("div", {text: `given ${s.given}, the model says ${s.suggested}`}),
    el("div", {class: "meta", text: `label quality ${s.score.toFixed(2)}`}),
    el("div", {class: "row"},
      el("button", {type: "button", class: "keep", onclick: () => decide("/api/keep", {id: s.id})}, `keep ${s.given}`),
      el("button", {type: "button", class: "fix", onclick: () => decide("/api/answer", {id: s.id, label: s.suggested})},
         `fix → ${s.suggested}`)),
    el("div", {class: "row"}, choose,
      el("button", {type: "button", onclick: () => decide("/api/answer", {id: s.id, label: choose.value})}, "set")));
}

// ------------------------------------------------------------------------------------------------ start
function route() {
  const audit = location.hash === "#audit";
  showMessage("");
  $("label-view").hidden = audit;
  $("audit-view").hidden = !audit;
  $("nav-label").classList.toggle("active", !audit);
  $("nav-audit").classList.toggle("active", audit);
  if (audit) loadAudit();
}

$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("new-class").addEventListener("click", () => { $("filter").focus(); showMessage(""); });
$("filter").addEventListener("input", () => { app.highlight = 0; render(); });
$("audit-prev").addEventListener("click", () => { app.auditOffset = Math.max(0, app.auditOffset - app.auditLimit); loadAudit(); });
$("audit-next").addEventListener("click", () => { app.auditOffset += app.auditLimit; loadAudit(); });
$("audit-refresh").addEventListener("click", () => { app.auditOffset = 0; loadAudit(true); });
document.addEventListener("keydown", onKey);
window.addEventListener("hashchange", route);
route();
refresh();
setInterval(() => { if (!document.hidden) refresh(); }, 1000);
window.labelApp = app;
