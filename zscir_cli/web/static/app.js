// The zscir page: every string from the user or the service is set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const GALLERY_PAGE = 48;
const state = { info: null, index: null, galleryOffset: 0, objectUrl: null };

async function api(url, options) {
  let resp;
  try {
    resp = await fetch(url, options);
  } catch (e) {
    throw { error: "The service cannot be reached.", hint: "Check that 'zscir serve' is still running." };
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    if (body && typeof body.error === "string") throw body;
    throw { error: `The service answered ${resp.status} ${resp.statusText}.`, hint: "" };
  }
  return body;
}

function showError(e) {
  $("error-msg").textContent = (e && e.error) || String(e);
  $("error-hint").textContent = (e && e.hint) || "";
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

function imageUrl(id, size) {
  const q = new URLSearchParams({ index: state.index });
  if (size) q.set("size", String(size));
  return `/api/images/${encodeURIComponent(id)}?${q}`;
}

// small renders (the shapes lab) are scaled up without blur; photos are smoothed as usual
function sharpen(img) {
  img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 128));
}

function figure(id, lines, onClick) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = id;
  img.loading = "lazy";
  sharpen(img);
  img.addEventListener("error", () => { img.alt = "no image"; });
  img.src = imageUrl(id, 256);
  fig.appendChild(img);
  const cap = document.createElement("figcaption");
  lines.forEach(([text, cls], i) => {
    if (i) cap.appendChild(document.createElement("br"));
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text;
    cap.appendChild(span);
  });
  fig.appendChild(cap);
  fig.dataset.id = id;
  fig.title = id;
  fig.addEventListener("click", () => onClick(id));
  return fig;
}

function setReferenceId(id) {
  $("ref-file").value = "";
  $("ref-id").value = id;
  showReference();
  window.scrollTo({ top: 0, behavior: "smooth" });
  $("text").focus();
}

function showReference() {
  const img = $("ref-img"), label = $("ref-label"), file = $("ref-file").files[0];
  const id = $("ref-id").value.trim();
  if (state.objectUrl) { URL.revokeObjectURL(state.objectUrl); state.objectUrl = null; }
  if (file) {
    state.objectUrl = URL.createObjectURL(file);
    img.src = state.objectUrl;
    img.hidden = false;
    label.textContent = `upload: ${file.name}`;
  } else if (id) {
    img.src = imageUrl(id, 256);
    img.hidden = false;
    label.textContent = id;
  } else {
    img.hidden = true;
    img.removeAttribute("src");
    label.textContent = "none yet: upload an image, paste an id, or pick one from the gallery";
  }
}

function renderResults(res) {
  const box = $("results");
  box.replaceChildren();
  $("summary").textContent = `${res.results.length} results for ${res.reference} + "${res.text}": method ${res.method}` +
    (res.run ? ` (run ${res.run})` : "") + `, index ${res.index}, model ${res.model}`;
  for (const r of res.results) {
    const fig = figure(r.id, [[`#${r.rank} ${r.id}`, ""], [r.score.toPrecision(4), "score"]], setReferenceId);
    fig.classList.add("result");
    box.appendChild(fig);
  }
  if (!res.results.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No results: the index has no other image.";
    box.appendChild(p);
  }
}

async function submitQuery(event) {
  event.preventDefault();
  clearError();
  const form = new FormData();
  const file = $("ref-file").files[0];
  const id = $("ref-id").value.trim();
  if (file) form.append("image", file, file.name);
  if (id) form.append("reference", id);
  form.append("text", $("text").value);
  form.append("method", $("method").value);
  form.append("k", $("k").value);
  form.append("index", state.index || "");
  $("submit").disabled = true;
  try {
    renderResults(await api("/api/query", { method: "POST", body: form }));
  } catch (e) {
    showError(e);
  } finally {
    $("submit").disabled = false;
  }
}

async function loadGallery() {
  const box = $("gallery");
  try {
    const q = new URLSearchParams({ index: state.index, offset: state.galleryOffset, limit: GALLERY_PAGE });
    const page = await api(`/api/ids?${q}`);
    box.replaceChildren(...page.ids.map((id) => figure(id, [[id, ""]], setReferenceId)));
    const last = Math.min(page.offset + page.ids.length, page.total);
    $("gallery-count").textContent = `(${page.offset + 1}-${last} of ${page.total}; click one to make it the reference)`;
    $("gallery-prev").disabled = page.offset === 0;
    $("gallery-next").disabled = last >= page.total;
  } catch (e) {
    showError(e);
  }
}

function option(value, text, selected) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  o.selected = selected;
  return o;
}

async function init() {
  try {
    const info = await api("/api/info");
    state.info = info;
    state.index = info.default_index;
    $("model").textContent = `model ${info.model}`;
    $("index").replaceChildren(...info.indexes.map((ix) =>
      option(ix.key, `${ix.key} (${ix.size} images, ${ix.kind})`, ix.key === info.default_index)));
    $("method").replaceChildren(...info.methods.map((m) =>
      option(m.name, m.run ? `${m.name} (run ${m.run})` : m.name, m.name === info.default_method)));
    $("k").max = String(info.limits.max_k);
    $("text").maxLength = info.limits.max_text_chars;
    await loadGallery();
  } catch (e) {
    showError(e);
  }
}

$("query-form").addEventListener("submit", submitQuery);
$("ref-file").addEventListener("change", () => { if ($("ref-file").files[0]) $("ref-id").value = ""; showReference(); });
$("ref-id").addEventListener("input", () => { $("ref-file").value = ""; showReference(); });
$("ref-img").addEventListener("error", () => {
  if (!$("ref-img").hidden && !$("ref-file").files[0]) $("ref-label").textContent = `${$("ref-id").value.trim()} (no such image in this index)`;
});
sharpen($("ref-img"));
$("error-close").addEventListener("click", clearError);
$("index").addEventListener("change", () => {
  state.index = $("index").value;
  state.galleryOffset = 0;
  $("ref-id").value = "";
  showReference();
  $("results").replaceChildren();
  loadGallery();
});
$("gallery-prev").addEventListener("click", () => { state.galleryOffset = Math.max(0, state.galleryOffset - GALLERY_PAGE); loadGallery(); });
$("gallery-next").addEventListener("click", () => { state.galleryOffset += GALLERY_PAGE; loadGallery(); });
init();
