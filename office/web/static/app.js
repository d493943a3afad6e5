// crackseg office page: reads the read-only JSON API (/api/v1) and draws the fleet, the crack map,
// a crack's detail and the segment table. No framework, no build step, no CDN: Leaflet is served
// by the same server. Every value from the database is put in the page with textContent, never
// as HTML.
"use strict";
(function () {
  const SEVERITY_COLOUR = { low: "#e0b000", medium: "#f07800", high: "#d01c1c" };
  const TRACK_COLOUR = "#4a6fa5";
  const SEGMENT_PAGE = 100;
  const CRACK_PAGE = 100;
  const TABS = ["fleet", "cracks", "segments", "crack"];
  const $ = (id) => document.getElementById(id);

  let settings = null;
  let map = null;
  let trackLayer = null;
  let crackLayer = null;
  let highlightLayer = null;
  let fitted = false;
  let selectedId = null;
  let mapSignature = "";
  let segmentOffset = 0;
  let crackOffset = 0;
  const crackPaths = new Map();

  async function api(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${path}: HTTP ${r.status}`);
    return body;
  }

  function cell(row, text, cls, title) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text == null ? "-" : String(text);
    if (cls) td.className = cls;
    if (title) td.title = title;
    row.appendChild(td);
    return td;
  }

  function badge(text, cls, title) {
    const s = document.createElement("span");
    s.className = `badge ${cls}`;
    s.textContent = text;
    if (title) s.title = title;
    return s;
  }

  function num(v, digits) {
    return v == null || Number.isNaN(v) ? "-" : Number(v).toFixed(digits);
  }

  function ago(iso) {
    if (!iso) return "-";
    const s = (Date.now() - Date.parse(iso)) / 1000;
    if (s < 0) return "just now";
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} days ago`;
  }

  function latlngs(feature) {
    return feature.geometry ? feature.geometry.coordinates.map(([lon, lat]) => [lat, lon]) : null;
  }

  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

  function viewBbox() {
    const b = map.getBounds().pad(0.1);
    return [clamp(b.getWest(), -180, 180), clamp(b.getSouth(), -90, 90),
      clamp(b.getEast(), -180, 180), clamp(b.getNorth(), -90, 90)].map((v) => v.toFixed(7)).join(",");
  }

  // -- tabs -----------------------------------------------------------------------------------
  function showTab(name) {
    for (const t of TABS) {
      $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
      $(t).hidden = t !== name;
    }
  }

  // -- header ---------------------------------------------------------------------------------
  function showSummary(s) {
    $("n-cracks").textContent = s.cracks;
    $("n-segments").textContent = s.segments;
    $("n-messages").textContent = s.messages;
    $("n-gaps").textContent = s.seq_gaps;
    $("n-quarantined").textContent = s.quarantined;
    $("n-pending").textContent = s.observations_pending;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (!fitted && s.extent) {
      const [x0, y0, x1, y1] = s.extent;
      map.fitBounds([[y0, x0], [y1, x1]], { padding: [30, 30] });
      fitted = true;
    }
    const note = [];
    if (s.cracks_unplaced) note.push(`${s.cracks_unplaced} cracks have no position and are not on the map`);
    $("map-note").dataset.unplaced = note.join("; ");
  }

  // -- fleet ----------------------------------------------------------------------------------
  function showFleet(f) {
    $("n-online").textContent = `${f.online} / ${f.total}`;
    const body = $("fleet-table").tBodies[0];
    body.replaceChildren();
    for (const v of f.vehicles) {
      const tr = document.createElement("tr");
      tr.dataset.device = v.device_id;
      const h = v.health || {};
      cell(tr, v.device_id);
      const state = v.stale ? "stale" : v.state;
      cell(tr, badge(state, `state-${state}`, v.stale ? `says online, nothing heard for over ${f.stale_after_s} s`
        : `since ${v.state_ts || "-"}`));
      cell(tr, ago(v.last_seen), null, v.last_seen);
      cell(tr, h.fps_out == null ? "-" : `${num(h.fps_out, 1)} / ${num(h.fps_in, 1)}`, null, "processed / captured");
      cell(tr, h.outbox_depth == null ? "-" : String(h.outbox_depth), null,
        h.outbox_oldest_age_s == null ? "" : `oldest ${num(h.outbox_oldest_age_s, 0)} s`);
      cell(tr, [v.model_name, v.model_version].filter(Boolean).join(" ") || "-");
      const bits = [ago(v.health_ts)];
      if (h.cpu_percent != null) bits.push(`cpu ${num(h.cpu_percent, 0)}%`);
      if (h.temperature_c != null) bits.push(`${num(h.temperature_c, 0)} °C`);
      if (h.camera && h.camera !== "ok") bits.push(`camera ${h.camera}`);
      cell(tr, v.health_ts ? bits.join(", ") : "-", null, v.health_ts);
      cell(tr, v.messages);
      cell(tr, v.missing_seq, v.missing_seq ? "cond-poor" : null);
      body.appendChild(tr);
    }
  }

  // -- map ------------------------------------------------------------------------------------
  function drawMap(cracks, segments) {
    const signature = JSON.stringify([cracks.features.map((c) => [c.id, c.properties.severity,
      c.properties.last_seen]), segments.features.map((s) => [s.id, s.properties.last_seen])]);
    if (signature !== mapSignature) {
      mapSignature = signature;
      trackLayer.clearLayers();
      crackLayer.clearLayers();
      crackPaths.clear();
      for (const s of segments.features) {
        const ll = latlngs(s);
        if (ll) L.polyline(ll, { color: TRACK_COLOUR, weight: 10, opacity: 0.25, interactive: false }).addTo(trackLayer);
      }
      // worst first from the API: draw in reverse so the worst end up on top
      for (const c of [...cracks.features].reverse()) {
        const ll = latlngs(c);
        if (!ll) continue;
        const p = c.properties;
        const line = L.polyline(ll, { color: SEVERITY_COLOUR[p.severity] || "#555", weight: 5, opacity: 0.95,
          lineCap: "round", className: `crack crack-${p.severity}` });
        const tip = document.createElement("span");
        tip.textContent = `#${c.id} ${p.type}, ${p.severity}, ${num(p.length_m, 2)} m`;
        line.bindTooltip(tip, { sticky: true });
        line.on("click", () => showCrack(c.id));
        line.addTo(crackLayer);
        const el = line.getElement();
        if (el) el.setAttribute("data-crack-id", String(c.id));
        crackPaths.set(c.id, line);
      }
      markSelected();
    }
    const note = [];
    if (cracks.truncated) note.push(`showing the worst ${cracks.returned} of ${cracks.total} cracks in view; zoom in`);
    const unplaced = $("map-note").dataset.unplaced;
    if (unplaced) note.push(unplaced);
    $("map-note").textContent = note.join(" · ");
    $("map").dataset.cracksShown = String(crackPaths.size);
  }

  async function loadMap() {
    const bbox = viewBbox();
    const [cracks, segments] = await Promise.all([
      api(`/api/v1/cracks?placed=1&limit=${settings.crack_limit}&bbox=${bbox}`),
      api(`/api/v1/segments?order=id&limit=${settings.max_segments}&bbox=${bbox}`)]);
    drawMap(cracks, segments);
  }

  function markSelected() {
    for (const [id, line] of crackPaths) {
      const on = id === selectedId;
      line.setStyle({ weight: on ? 10 : 5, opacity: on ? 1 : 0.95 });
      if (on) line.bringToFront();
    }
  }

  // -- one crack ------------------------------------------------------------------------------
  function prop(dl, label, value) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value == null ? "-" : String(value);
    dl.append(dt, dd);
  }

  async function showCrack(id) {
    selectedId = id;
    markSelected();
    for (const r of $("crack-table").tBodies[0].rows) r.classList.toggle("selected", r.dataset.crackId === String(id));
    showTab("crack");
    const c = await api(`/api/v1/cracks/${id}`);
    const p = c.properties;
    $("crack-empty").hidden = true;
    $("crack-detail").hidden = false;
    $("crack-detail").dataset.crackId = String(c.id);
    $("crack-title").textContent = `Crack #${c.id}: ${p.type}`;
    const img = $("crack-snapshot");
    if (p.snapshot) {
      img.src = p.snapshot.url;
      img.alt = `best snapshot of crack ${c.id}`;
      $("crack-snapshot-caption").textContent =
        `${p.snapshot.device_id}, frame ${p.snapshot.frame_index ?? "-"}, ${p.snapshot.ts}`;
      $("crack-figure").hidden = false;
      $("crack-no-snapshot").hidden = true;
    } else {
      img.removeAttribute("src");
      $("crack-figure").hidden = true;
      $("crack-no-snapshot").hidden = false;
    }
    const dl = $("crack-props");
    dl.replaceChildren();
    prop(dl, "severity", badge(p.severity, `sev-${p.severity}`));
    prop(dl, "length", `${num(p.length_m, 2)} m`);
    prop(dl, "width max / median", `${num(p.width_max_mm, 1)} / ${num(p.width_median_mm, 1)} mm`);
    prop(dl, "observations", `${p.observations} in ${p.sightings} passes`);
    prop(dl, "vehicles", p.devices);
    prop(dl, "first seen", p.first_seen);
    prop(dl, "last seen", p.last_seen);
    prop(dl, "segment", p.segment ? `#${p.segment.id}, condition ${num(p.segment.condition_index, 0)} ` +
      `(${p.segment.condition_class})` : "-");
    prop(dl, "position", c.geometry ? c.geometry.coordinates[0].slice().reverse().join(", ") : "not placed");
    const body = $("crack-observations").tBodies[0];
    body.replaceChildren();
    for (const o of p.recent_observations) {
      const tr = document.createElement("tr");
      cell(tr, o.ts);
      cell(tr, o.device_id);
      cell(tr, badge(o.severity, `sev-${o.severity}`));
      cell(tr, num(o.length_m, 2), null, o.clipped ? "partly outside the frame" : "");
      cell(tr, num(o.width_max_mm, 1));
      cell(tr, num(o.confidence, 2));
      body.appendChild(tr);
    }
    history.replaceState(null, "", `#crack=${c.id}`);
  }

  // -- the crack list -------------------------------------------------------------------------
  async function loadCrackList() {
    const c = await api(`/api/v1/cracks?limit=${CRACK_PAGE}&offset=${crackOffset}`);
    const body = $("crack-table").tBodies[0];
    body.replaceChildren();
    for (const f of c.features) {
      const p = f.properties;
      const tr = document.createElement("tr");
      tr.className = f.id === selectedId ? "clickable selected" : "clickable";
      tr.dataset.crackId = String(f.id);
      cell(tr, `#${f.id}`);
      cell(tr, badge(p.severity, `sev-${p.severity}`));
      cell(tr, p.type);
      cell(tr, num(p.length_m, 2));
      cell(tr, num(p.width_max_mm, 1));
      cell(tr, `${p.observations} × / ${p.sightings} passes`);
      cell(tr, p.devices);
      cell(tr, ago(p.last_seen), null, p.last_seen);
      tr.addEventListener("click", () => {
        if (f.geometry) map.fitBounds(L.polyline(latlngs(f)).getBounds(), { padding: [80, 80], maxZoom: 21 });
        showCrack(f.id);
      });
      body.appendChild(tr);
    }
    $("cracks-note").textContent = c.total ? `worst first: ${c.offset + 1}-${c.offset + c.returned} of ${c.total}`
      : "no cracks yet";
    $("crack-prev").disabled = c.offset === 0;
    $("crack-next").disabled = !c.truncated;
  }

  // -- segments -------------------------------------------------------------------------------
  async function loadSegments() {
    const s = await api(`/api/v1/segments?order=worst&limit=${SEGMENT_PAGE}&offset=${segmentOffset}`);
    const body = $("segment-table").tBodies[0];
    body.replaceChildren();
    for (const f of s.features) {
      const p = f.properties;
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.dataset.segmentId = String(f.id);
      cell(tr, `#${f.id}`);
      cell(tr, num(p.condition_index, 1), `cond-${String(p.condition_class).replace(" ", "-")}`);
      cell(tr, p.condition_class);
      cell(tr, p.crack_count);
      cell(tr, num(p.crack_length_m, 2));
      cell(tr, num(p.crack_density_m_per_m2, 3));
      cell(tr, `${num(p.length_high_m, 1)} / ${num(p.length_medium_m, 1)} / ${num(p.length_low_m, 1)}`);
      cell(tr, num(p.length_m, 1));
      cell(tr, ago(p.last_seen), null, p.last_seen);
      tr.addEventListener("click", () => zoomToSegment(f, tr));
      body.appendChild(tr);
    }
    const last = s.offset + s.returned;
    $("segments-note").textContent = s.total ? `worst first: ${s.offset + 1}-${last} of ${s.total}` : "no segments yet";
    $("seg-prev").disabled = s.offset === 0;
    $("seg-next").disabled = !s.truncated;
  }

  function zoomToSegment(f, tr) {
    for (const r of tr.parentNode.children) r.classList.toggle("selected", r === tr);
    highlightLayer.clearLayers();
    const ll = latlngs(f);
    if (!ll) return;
    const line = L.polyline(ll, { color: "#111", weight: 4, dashArray: "6 6", interactive: false });
    line.addTo(highlightLayer);
    map.fitBounds(line.getBounds(), { padding: [60, 60] });
  }

  // -- start ----------------------------------------------------------------------------------
  async function refresh() {
    try {
      const [summary, fleet] = await Promise.all([api("/api/v1/summary"), api("/api/v1/fleet")]);
      showSummary(summary);
      showFleet(fleet);
      await Promise.all([loadMap(), loadCrackList(), loadSegments()]);
      document.body.dataset.ready = "1";
    } catch (err) {
      $("updated").textContent = `update failed: ${err.message}`;
    }
  }

  function legend() {
    const c = L.control({ position: "bottomright" });
    c.onAdd = () => {
      const div = L.DomUtil.create("div", "legend");
      for (const [cls, label] of [["high", "high"], ["medium", "medium"], ["low", "low"], ["track", "driven track"]]) {
        const row = document.createElement("div");
        const i = document.createElement("i");
        i.className = cls;
        row.append(i, label);
        div.appendChild(row);
      }
      return div;
    };
    return c;
  }

  async function start() {
    settings = await api("/api/v1/settings");
    map = L.map("map", { maxZoom: 22, zoomSnap: 0.25 });
    if (settings.tile_url) {
      L.tileLayer(settings.tile_url, { maxNativeZoom: settings.tile_max_zoom, maxZoom: 22,
        attribution: settings.tile_attribution }).addTo(map);
    }
    map.setView([20, 0], 2);
    L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);
    legend().addTo(map);
    trackLayer = L.layerGroup().addTo(map);
    highlightLayer = L.layerGroup().addTo(map);
    crackLayer = L.layerGroup().addTo(map);
    for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => showTab(t));
    $("crack-prev").addEventListener("click", () => { crackOffset = Math.max(0, crackOffset - CRACK_PAGE); loadCrackList(); });
    $("crack-next").addEventListener("click", () => { crackOffset += CRACK_PAGE; loadCrackList(); });
    $("seg-prev").addEventListener("click", () => { segmentOffset = Math.max(0, segmentOffset - SEGMENT_PAGE); loadSegments(); });
    $("seg-next").addEventListener("click", () => { segmentOffset += SEGMENT_PAGE; loadSegments(); });
    let timer = null;
    map.on("moveend", () => {
      clearTimeout(timer);
      timer = setTimeout(() => loadMap().catch((e) => { $("updated").textContent = e.message; }), 200);
    });
    await refresh();
    const m = /^#crack=(\d+)$/.exec(location.hash);
    if (m) showCrack(Number(m[1])).catch(() => {});
    setInterval(refresh, Math.max(5, settings.refresh_s) * 1000);
  }

  start().catch((err) => { $("updated").textContent = `cannot start: ${err.message}`; });
})();
