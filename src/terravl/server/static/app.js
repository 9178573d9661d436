// TerraVL web map: search the served archive, see hits at their footprints (the imagery is the map), open one,
// read its caption and ask it a question. Talks only to this server's /api/v1; loads nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const map = L.map("map", { attributionControl: false, worldCopyJump: true }).setView([20, 0], 2);
const layer = L.layerGroup().addTo(map);
let box = null, boxLayer = null, drawing = false, selected = null;

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
