// TerraVL web map: search the served archive, see hits at their footprints (the imagery is the map), open one,
// read its caption and ask it a question, and compare it with another date of the same place (or two uploaded
// images): the changed regions are drawn on the map. With served knowledge bases, answers cite their evidence:
// a citation opens its item (an image, or a passage) and shows where it is on the map. Talks only to this server's /api/v1; loads nothing else.
"use strict";

const $ = (id) => document.getElementById(id);
const map = L.map("map", { attributionControl: false, worldCopyJump: true }).setView([20, 0], 2);
const layer = L.layerGroup().addTo(map);
const changeLayer = L.layerGroup().addTo(map);
const groundLayer = L.layerGroup().addTo(map);
const kbLayer = L.layerGroup().addTo(map);
let box = null, boxLayer = null, drawing = false, selected = null, shown = [], changeInputs = null;

function status(text, isError) {
  $("status").textContent = text || "";
  $("status").style.color = isError ? "#ffb4b4" : "";
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = body.error || {};
    throw new Error((e.field ? e.field + ": " : "") + (e.message || response.statusText));
  }
  return body;
}

function boundsOf(footprint) {
  if (!footprint || !footprint.coordinates) return null;
  const ring = footprint.type === "MultiPolygon" ? footprint.coordinates[0][0] : footprint.coordinates[0];
  const lons = ring.map((p) => p[0]), lats = ring.map((p) => p[1]);
  return { outline: ring.map((p) => [p[1], p[0]]),
           bounds: L.latLngBounds([Math.min(...lats), Math.min(...lons)], [Math.max(...lats), Math.max(...lons)]) };
}

function render(hits) {
  shown = hits;
  layer.clearLayers();
  const grid = $("results");
  grid.innerHTML = "";
  let all = null;
  hits.forEach((hit, i) => {
    const card = document.createElement("div");
    card.className = "hit";
    card.dataset.id = hit.id;
    const name = hit.path.split("/").pop();
    const geo = boundsOf(hit.footprint);
    card.innerHTML = `<img src="${hit.thumbnail}" alt="result ${i + 1}"><div>#${i + 1} · ${hit.score.toFixed(3)}</div>` +
      `<div title="${hit.path}">${name}</div>` + (geo ? "" : `<div class="nomap">no footprint</div>`);
    card.addEventListener("click", () => select(hit, card));
    grid.appendChild(card);
    if (geo) {
      L.imageOverlay(hit.thumbnail, geo.bounds, { className: "hit-overlay", alt: name }).addTo(layer);
      const outline = L.polygon(geo.outline, { color: "#ffd166", weight: 1, fill: true, fillOpacity: 0,
                                               className: "footprint" }).addTo(layer);
      outline.on("click", () => select(hit, card));
      all = all ? all.extend(geo.bounds) : L.latLngBounds(geo.bounds.getSouthWest(), geo.bounds.getNorthEast());
    }
  });
  if (all) map.fitBounds(all.pad(0.1));
  status(`${hits.length} result(s)` + (box ? " inside the box" : ""));
}

async function select(hit, card) {
  document.querySelectorAll(".hit.selected").forEach((el) => el.classList.remove("selected"));
  if (card) card.classList.add("selected");
  selected = hit;
  $("detail").hidden = false;
  $("detail-image").src = hit.thumbnail + "&size=512";
  $("detail-path").textContent = hit.path + (hit.acquired ? ` · ${hit.acquired}` : "");
  $("caption").textContent = "describing…";
  $("answer").textContent = "";
  $("ground-answer").textContent = "";
  groundLayer.clearLayers();
  fillCompare(hit);
  const form = new FormData();
  form.append("id", hit.id);
  form.append("index", hit.index);
  try {
    const result = await api("/api/v1/caption", { method: "POST", body: form });
    if (selected === hit) $("caption").textContent = result.caption;
  } catch (e) {
    $("caption").textContent = "(" + e.message + ")";
  }
}

async function search(event) {
  if (event) event.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, k: $("k").value || "12" });
  if (box) params.set("bbox", box.join(","));
  if ($("date-from").value) params.set("date_from", $("date-from").value);
  if ($("date-to").value) params.set("date_to", $("date-to").value);
  if ($("index").value) params.set("index", $("index").value);
  if ($("rerank").checked) params.set("rerank", "true");
  status("searching…");
  try { render(await api("/api/v1/search?" + params)); } catch (e) { status(e.message, true); }
}

async function searchByImage() {
  const file = $("example").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("k").value || "12");
  if (box) form.append("bbox", box.join(","));
  if ($("date-from").value) form.append("date_from", $("date-from").value);
  if ($("date-to").value) form.append("date_to", $("date-to").value);
  if ($("index").value) form.append("index", $("index").value);
  status("searching by image…");
  try { render(await api("/api/v1/search", { method: "POST", body: form })); } catch (e) { status(e.message, true); }
}

async function ask(event) {
  event.preventDefault();
  if (!selected) return;
  const form = new FormData();
  form.append("id", selected.id);
  form.append("index", selected.index);
  form.append("question", $("question").value);
  $("answer").textContent = "thinking…";
  try {
    const result = await api("/api/v1/ask", { method: "POST", body: form });
    $("answer").textContent = result.answer;
  } catch (e) { $("answer").textContent = "(" + e.message + ")"; }
}

// Find in this tile: what an expression names, drawn on the map (regions in WGS84) with its score and area.
function showGround(result) {
  groundLayer.clearLayers();
  const answer = $("ground-answer");
  answer.textContent = "";
  if (!result.found) {
    answer.textContent = `nothing here matches "${result.expression}" (best score ${result.best_score.toFixed(2)}, ` +
      `a match needs ${result.floor.toFixed(2)})`;
    status("nothing found");
    return;
  }
  if (result.coordinates === "wgs84") {
    const shapes = L.geoJSON(result.regions, {
      style: () => ({ color: "#06d6a0", weight: 2, fillColor: "#06d6a0", fillOpacity: 0.35, className: "ground-region" }),
      onEachFeature: (feature, shape) => {
        const p = feature.properties || {};
        const tip = document.createElement("span");
        tip.textContent = `#${p.rank} · score ${Number(p.score).toFixed(2)} · ${area(p.area_m2, p.pixels)} · ${p.position}`;
        shape.bindTooltip(tip);
      },
    }).addTo(groundLayer);
    map.fitBounds(shapes.getBounds().pad(0.5));
  }
  const best = result.instances[0];
  answer.textContent = `${result.instances.length} found (${result.method}) · best score ${best.score.toFixed(2)} · ` +
    `${area(best.area_m2, best.pixels)} · ${best.position}` +
    (result.coordinates === "pixel" ? " · no georeference: pixel boxes only" : "") + " · ";
  const link = document.createElement("a");
  link.href = result.links.preview;
  link.target = "_blank";
  link.rel = "noopener";
  link.textContent = "preview";
  answer.append(link);
  status(`${result.instances.length} region(s) for "${result.expression}"`);
}

$("ground-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!selected) return;
  const form = new FormData();
  form.append("id", selected.id);
  form.append("index", selected.index);
  form.append("expression", $("ground-expression").value);
  form.append("all", $("ground-all").checked ? "true" : "false");
  $("ground-answer").textContent = "looking…";
  groundLayer.clearLayers();
  try {
    showGround(await api("/api/v1/ground", { method: "POST", body: form }));
  } catch (e) { $("ground-answer").textContent = "(" + e.message + ")"; }
});

// Change: the selected tile against another result of the same place, or two uploaded images.
function overlapArea(a, b) {
  const south = Math.max(a.getSouth(), b.getSouth()), north = Math.min(a.getNorth(), b.getNorth());
  const west = Math.max(a.getWest(), b.getWest()), east = Math.min(a.getEast(), b.getEast());
  return north > south && east > west ? (north - south) * (east - west) : 0;
}

function fillCompare(hit) {
  // the other results that overlap the selected tile, most overlap first (tiles without a footprint: the others
  // without one, which the server compares pixel for pixel when they have the same size)
  const here = boundsOf(hit.footprint);
  const others = shown.filter((h) => h.id !== hit.id || h.index !== hit.index).map((h) => {
    const there = boundsOf(h.footprint);
    return { hit: h, overlap: here && there ? overlapArea(here.bounds, there.bounds) : (!here && !there ? 1e-12 : 0) };
  }).filter((o) => o.overlap > 0 && o.hit.index === hit.index).sort((a, b) => b.overlap - a.overlap);
  const choice = $("compare-with");
  choice.innerHTML = "";
  for (const { hit: h } of others) {
    const option = document.createElement("option");
    option.value = h.id;
    option.textContent = `#${h.id} · ${h.path.split("/").pop()}` + (h.acquired ? ` · ${h.acquired}` : "");
    choice.appendChild(option);
  }
  if (!others.length) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = "no other result of this place";
    choice.appendChild(option);
  }
  $("compare-button").disabled = !others.length;
}

function changeForm(extra) {
  const form = new FormData();
  for (const [key, value] of Object.entries(changeInputs)) form.append(key, value);
  form.append("method", $("change-method").value);
  for (const [key, value] of Object.entries(extra || {})) form.append(key, value);
  return form;
}

function area(m2, pixels) {
  if (m2 === null || m2 === undefined) return `${pixels.toLocaleString()} pixels`;
  return m2 >= 1e6 ? `${(m2 / 1e6).toFixed(2)} km²` : `${Math.round(m2).toLocaleString()} m²`;
}

function showChange(result) {
  changeLayer.clearLayers();
  const regions = L.geoJSON(result.regions, {
    style: () => ({ color: "#e63946", weight: 2, fillColor: "#e63946", fillOpacity: 0.35, className: "change-region" }),
    onEachFeature: (feature, shape) => {
      const p = feature.properties || {};
      const tip = document.createElement("span");
      tip.textContent = `${area(p.area_m2, p.pixels)} · ${p.position}` +
        (p.class_before ? ` · ${p.class_before} → ${p.class_after}` : "");
      shape.bindTooltip(tip);
    },
  }).addTo(changeLayer);
  if (result.regions.features.length) map.fitBounds(regions.getBounds().pad(0.2));
  $("change").hidden = false;
  $("change-panel").open = true;
  $("change-summary").textContent = `${(100 * result.changed_fraction).toFixed(1)} % changed · ` +
    `${area(result.changed_area_m2, result.changed_pixels)} · ${result.region_count} region(s) · ${result.method}`;
  $("change-caption").textContent = result.caption;
  const dates = [[result.before_date, result.before_caption], [result.after_date, result.after_caption]];
  $("change-dates").textContent = dates.map(([d, c], i) => (i ? "After" : "Before") + (d ? ` (${d})` : "") +
                                            (c ? `: ${c}` : "")).join(" · ");
  $("change-preview").src = result.links.preview;
  $("change-preview-link").href = result.links.preview;
  const files = $("change-files");
  files.textContent = "";
  const kinds = [["mask", "mask GeoTIFF"], ["change", "probability GeoTIFF"], ["regions", "regions GeoJSON"]];
  for (const [name, label] of kinds) {
    const a = document.createElement("a");
    a.href = result.links[name];
    a.textContent = label;
    files.append(a, " ");
  }
  $("change-answer").textContent = "";
  const notes = result.warnings.length ? " · " + result.warnings.join("; ") : "";
  status(`${result.region_count} changed region(s)` + notes);
}

async function runChange(inputs) {
  changeInputs = inputs;
  changeLayer.clearLayers();
  $("change").hidden = false;
  $("change-panel").open = true;
  $("change-caption").textContent = "comparing…";
  for (const id of ["change-summary", "change-dates", "change-files", "change-answer"]) $(id).textContent = "";
  $("change-preview").removeAttribute("src");
  status("comparing the two dates…");
  try {
    showChange(await api("/api/v1/change", { method: "POST", body: changeForm() }));
  } catch (e) {
    $("change-caption").textContent = "(" + e.message + ")";
    status(e.message, true);
  }
}

$("compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!selected) return;
  const other = shown.find((h) => String(h.id) === $("compare-with").value && h.index === selected.index);
  if (!other) return;
  // the earlier date is "before" when both are dated
  const [before, after] = selected.acquired && other.acquired && other.acquired < selected.acquired
    ? [other, selected] : [selected, other];
  runChange({ before_id: before.id, after_id: after.id, index: selected.index });
});
$("pair-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const before = $("before-file").files[0], after = $("after-file").files[0];
  if (before && after) runChange({ before, after });
});
$("ask-change-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!changeInputs) return;
  $("change-answer").textContent = "thinking…";
  try {
    const result = await api("/api/v1/ask-change", { method: "POST",
                                                     body: changeForm({ question: $("change-question").value }) });
    $("change-answer").textContent = result.answer;
  } catch (e) { $("change-answer").textContent = "(" + e.message + ")"; }
});

// Knowledge base: an answer with numbered citations; each cited item is listed (image items with their picture)
// and, where it has a place, drawn on the map. Text from the server is set as text, never as HTML.
function evidenceItem(item, kb) {
  const li = document.createElement("li");
  li.id = `kb-evidence-${item.rank}`;
  if (item.kind === "image") {
    const img = document.createElement("img");
    img.src = `/api/v1/kb/items/${item.id}/image?kb=${encodeURIComponent(kb)}&size=192`;
    img.alt = `evidence ${item.rank}`;
    li.append(img);
  }
  const head = document.createElement("div");
  const title = document.createElement("strong");
  title.textContent = item.title || item.label || item.kind;
  const source = document.createElement("span");
  source.className = "source";
  source.textContent = ` · ${item.source}${item.ref && !item.ref.startsWith("{") ? " " + item.ref : ""}` +
    (item.date ? ` · ${item.date}` : "") + ` · score ${item.score.toFixed(3)}`;
  head.append(title, source);
  li.append(head);
  if (item.text) {
    const text = document.createElement("div");
    text.textContent = item.text.length > 400 ? item.text.slice(0, 400) + "…" : item.text;
    li.append(text);
  }
  if (item.url && /^https?:\/\//.test(item.url)) {
    const a = document.createElement("a");
    a.href = item.url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = "link";
    li.append(a);
  }
  return li;
}

function placeOf(item) {
  if (item.footprint) return L.geoJSON(item.footprint, { style: () => ({ color: "#1d6fb8", weight: 2, fillOpacity: 0.15 }) });
  if (item.lon !== null && item.lon !== undefined) return L.circleMarker([item.lat, item.lon], { radius: 7, color: "#1d6fb8" });
  return null;
}

function showCitation(item) {
  document.querySelectorAll("#kb-evidence li.cited").forEach((el) => el.classList.remove("cited"));
  const li = $(`kb-evidence-${item.rank}`);
  if (li) { li.classList.add("cited"); li.scrollIntoView({ block: "nearest" }); }
  kbLayer.clearLayers();
  const place = placeOf(item);
  if (place) {
    place.bindTooltip(`[${item.rank}] ${item.title || item.source}`).addTo(kbLayer);
    if (place.getBounds) map.fitBounds(place.getBounds().pad(0.5)); else map.setView(place.getLatLng(), 12);
  }
}

function showKbAnswer(result) {
  const answer = $("kb-answer"), list = $("kb-evidence");
  answer.textContent = "";
  list.innerHTML = "";
  kbLayer.clearLayers();
  const byRank = new Map(result.evidence.map((item) => [item.rank, item]));
  // the answer's text, with each [n] a link to evidence n
  result.answer.split(/(\[\d+\])/).forEach((part) => {
    const cited = /^\[(\d+)\]$/.exec(part);
    const item = cited && byRank.get(Number(cited[1]));
    if (item) {
      const a = document.createElement("a");
      a.className = "cite";
      a.textContent = part;
      a.title = item.title || item.source;
      a.addEventListener("click", () => showCitation(item));
      answer.append(a);
    } else answer.append(part);
  });
  const by = document.createElement("div");
  by.className = "source";
  by.style.fontWeight = "normal";
  by.textContent = `answered by ${result.answered_by}` +
    (result.image_answer ? ` · the image alone: ${result.image_answer}` : "") +
    (result.found ? "" : ` · best relevance ${result.best_relevance.toFixed(2)}`);
  answer.append(by);
  for (const item of result.evidence) {
    const li = evidenceItem(item, result.kb);
    if (result.citations.includes(item.rank)) li.classList.add("cited");
    li.addEventListener("click", () => showCitation(item));
    list.append(li);
    const place = placeOf(item);
    if (place) place.bindTooltip(`[${item.rank}] ${item.title || item.source}`).addTo(kbLayer);
  }
  const first = result.evidence.find((item) => result.citations.includes(item.rank) && placeOf(item));
  if (first) showCitation(first);
  status(result.found ? `${result.citations.length} citation(s)` : "not found in the knowledge base");
}

$("kb-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  form.append("question", $("kb-question").value);
  form.append("kb", $("kb").value);
  if ($("kb-about-tile").checked) {
    if (!selected) { $("kb-answer").textContent = "(select a tile first, or untick \"about the selected tile\")"; return; }
    form.append("id", selected.id);
    form.append("index", selected.index);
  }
  $("kb-answer").textContent = "looking it up…";
  $("kb-evidence").innerHTML = "";
  try {
    showKbAnswer(await api("/api/v1/ask", { method: "POST", body: form }));
  } catch (e) { $("kb-answer").textContent = "(" + e.message + ")"; }
});

api("/api/v1/kbs").then((list) => {
  if (!list.length) return;
  for (const item of list) {
    const option = document.createElement("option");
    option.value = item.name;
    option.textContent = `${item.name} (${item.items} items)`;
    $("kb").appendChild(option);
  }
  $("kb-panel").hidden = false;
}).catch(() => {});  // no knowledge base served: the panel stays hidden

// Chat: a conversation about the selected tile (POST /api/v1/chat; one session per tile, a new tile starts a new
// one); the regions, boxes and hits an answer refers to are drawn on the map. Server text is set as text only.
const chatLayer = L.layerGroup().addTo(map);
let chat = { session: null, tile: null };

function chatLine(who, text, note) {
  const li = document.createElement("li");
  li.className = who;
  const body = document.createElement("span");
  body.textContent = text;
  li.append(body);
  if (note) {
    const small = document.createElement("div");
    small.className = "source";
    small.textContent = note;
    li.append(small);
  }
  $("chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function drawChat(result) {
  chatLayer.clearLayers();
  if (result.coordinates !== "wgs84" || !result.regions || !result.regions.features.length) return;
  const shapes = L.geoJSON(result.regions, {
    style: () => ({ color: "#f4a261", weight: 2, fillColor: "#f4a261", fillOpacity: 0.3, className: "chat-region" }),
    onEachFeature: (feature, shape) => {
      const p = feature.properties || {};
      const tip = document.createElement("span");
      tip.textContent = [p.rank ? `#${p.rank}` : "", p.pixels !== undefined ? area(p.area_m2, p.pixels) : "",
                         p.position || "", p.score !== undefined ? `score ${Number(p.score).toFixed(2)}` : ""]
        .filter(Boolean).join(" · ");
      if (tip.textContent) shape.bindTooltip(tip);
    },
  }).addTo(chatLayer);
  for (const b of result.boxes || []) {
    if (b.box) L.geoJSON(b.box, { style: () => ({ color: "#ffffff", weight: 1, fill: false, dashArray: "4" }) }).addTo(chatLayer);
  }
  map.fitBounds(shapes.getBounds().pad(0.5));
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("chat-instruction").value.trim();
  if (!text) return;
  if (!selected) { chatLine("note", "(select a tile first: search, then click a result)"); return; }
  const key = `${selected.index}/${selected.id}`;
  const form = new FormData();
  form.append("instruction", text);
  if (chat.session && chat.tile === key) {
    form.append("session", chat.session);
  } else {  // a new tile: a new conversation about it
    chat = { session: null, tile: key };
    $("chat-log").textContent = "";
    chatLayer.clearLayers();
    form.append("id", selected.id);
    form.append("index", selected.index);
    chatLine("note", `about tile ${selected.id}`);
  }
  chatLine("you", text);
  $("chat-instruction").value = "";
  const pending = chatLine("bot", "…");
  try {
    const result = await api("/api/v1/chat", { method: "POST", body: form });
    chat.session = result.session;
    pending.remove();
    chatLine("bot", result.answer, `${result.task} · ${result.expert}` + (result.resolved ? ` · from ${result.resolved}` : ""));
    drawChat(result);
  } catch (e) {
    pending.remove();
    if (/^session/.test(e.message)) chat = { session: null, tile: null };  // expired: the next message starts afresh
    chatLine("note", "(" + e.message + ")");
  }
});

// Draw-a-box filter: press "Draw box", then drag on the map.
let start = null;
$("draw-box").addEventListener("click", () => {
  drawing = !drawing;
  $("draw-box").classList.toggle("active", drawing);
  if (drawing) map.dragging.disable(); else map.dragging.enable();
  status(drawing ? "drag on the map to draw a box" : "");
});
map.on("mousedown", (e) => { if (drawing) start = e.latlng; });
map.on("mousemove", (e) => {
  if (!drawing || !start) return;
  const b = L.latLngBounds(start, e.latlng);
  if (boxLayer) boxLayer.setBounds(b); else boxLayer = L.rectangle(b, { color: "#e63946", weight: 2, fill: false }).addTo(map);
});
map.on("mouseup", (e) => {
  if (!drawing || !start) return;
  const b = L.latLngBounds(start, e.latlng);
  start = null;
  drawing = false;
  map.dragging.enable();
  $("draw-box").classList.remove("active");
  box = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => +v.toFixed(6));
  $("clear-box").hidden = false;
  search();
});
$("clear-box").addEventListener("click", () => {
  box = null;
  if (boxLayer) { map.removeLayer(boxLayer); boxLayer = null; }
  $("clear-box").hidden = true;
  search();
});

$("search-form").addEventListener("submit", search);
$("date-from").addEventListener("change", search);
$("date-to").addEventListener("change", search);
$("example").addEventListener("change", searchByImage);
$("ask-form").addEventListener("submit", ask);
api("/api/v1/indexes").then((list) => {
  for (const item of list) {
    const option = document.createElement("option");
    option.value = item.name;
    option.textContent = `${item.name} (${item.tiles} tiles)`;
    $("index").appendChild(option);
  }
  status(`${list.reduce((n, i) => n + i.tiles, 0)} tiles indexed · type a query`);
}).catch((e) => status(e.message, true));
