// The review queue: one item at a time; D = defect, F = good part (a false alarm when flagged), S = skip.
// Every decision is stored by the server (atomically, in Parquet) before the next item shows.
"use strict";
(function () {
  let state = JSON.parse(document.getElementById("state").textContent);
  let position = 0; // index into state.queue (skipped items stay in the queue for the next visit)
  let busy = false;
  const api = "/api/p/" + encodeURIComponent(state.product);
  const $ = (id) => document.getElementById(id);

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; }

  function renderCounts() {
    const c = state.counts;
    $("counts").innerHTML =
      `<span><b id="n-to-review">${c.to_review}</b> to review</span>` +
      `<span><b id="n-confirmed">${c.confirmed}</b> confirmed defects</span>` +
      `<span><b id="n-false-alarms">${c.false_alarms}</b> false alarms</span>` +
      `<span><b id="n-escapes">${c.escapes}</b> escapes found</span>` +
      `<span><b id="n-good-passes">${c.good_passes}</b> good passes</span>` +
      `<span>${c.results} results, ${c.flagged} flagged</span>`;
  }

  function point(p) {
    return `threshold <b>${p.threshold.toPrecision(5)}</b>: ${p.caught} of ${p.defects} defects caught, ` +
      `${p.escapes} escapes (${pct(p.escape_rate)}), ${p.false_alarms} false alarms (${pct(p.false_reject_rate)})`;
  }

  function renderThreshold() {
    const t = state.thresholds;
    let html = `<h2>Threshold on the reviewed items</h2>`;
    html += `<p class="hint">${t.reviewed_same_weights} reviewed items judged by the current weights` +
      ` (${t.model_version || "unknown model"}); every flagged item and a sample of passed ones are` +
      ` queued, so the rates describe the reviewed items, not the line.</p>`;
    html += t.current ? `<p id="current-point">Current: ${point(t.current)}</p>` : "<p>Current: no reviewed items yet.</p>";
    if (t.proposed) {
      html += `<p id="proposed-point">Proposed (F1 ${t.proposed.f1.toFixed(3)}): ${point(t.proposed)}</p>`;
      html += state.can_apply
        ? `<button id="apply">Apply the proposed threshold</button>`
        : `<p class="hint">Start the station with --models to apply it.</p>`;
    } else {
      html += `<p class="hint">A proposal needs both confirmed defects and good parts among the reviewed items.</p>`;
    }
    if (state.applied) { html += `<p id="applied" class="applied">${state.applied}</p>`; }
    $("threshold").innerHTML = html;
    const apply = $("apply");
    if (apply) { apply.addEventListener("click", applyThreshold); }
  }

  function renderItem() {
    const item = state.queue[position];
    $("item").hidden = !item;
    $("done").hidden = !!item;
    document.querySelectorAll(".keys button").forEach((b) => { b.disabled = !item; });
    if (!item) { return; }
    const base = "/p/" + encodeURIComponent(state.product);
    const img = $("image");
    img.onload = () => drawBoxes(item, img);
    img.onerror = () => { $("original").hidden = true; };
    $("original").hidden = false;
    img.src = base + "/image/" + item.key;
    $("heat").hidden = !item.has_heatmap;
    if (item.has_heatmap) { $("heatmap").src = base + "/heatmap/" + item.key + ".png"; }
    const verdict = item.flagged ? '<span class="flagged">flagged</span>' : '<span class="passed">passed (sample)</span>';
    $("facts").innerHTML =
      `<dt>id</dt><dd id="item-id"></dd><dt>verdict</dt><dd>${verdict}</dd>` +
      `<dt>score</dt><dd>${item.score.toPrecision(5)} (threshold ${item.threshold.toPrecision(5)})</dd>` +
      `<dt>regions</dt><dd>${item.regions.length}</dd>` +
      (item.frame_check ? `<dt>frame check</dt><dd id="frame-check"></dd>` : "") +
      `<dt>model</dt><dd>${item.model_version}</dd><dt>processed</dt><dd>${item.processed_at}</dd>` +
      `<dt>position</dt><dd>${position + 1} of ${state.queue.length}</dd>`;
    $("item-id").textContent = item.id; // ids come from producers: text, never markup
    if (item.frame_check) { $("frame-check").textContent = item.frame_check; }
  }

  function drawBoxes(item, img) {
    const svg = $("boxes");
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    svg.innerHTML = item.regions.map((r) =>
      `<rect x="${r.x0}" y="${r.y0}" width="${r.x1 - r.x0 + 1}" height="${r.y1 - r.y0 + 1}"></rect>`).join("");
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) { throw new Error(data.error || response.statusText); }
    return data;
  }

  async function decide(label) {
    const item = state.queue[position];
    if (!item || busy) { return; }
    busy = true;
    try {
      const next = await post(api + "/label", { key: item.key, label: label });
      const skipped = state.queue.slice(0, position).map((it) => it.key);
      state = { ...next, applied: state.applied };
      position = state.queue.filter((it) => skipped.includes(it.key)).length;
      if (position >= state.queue.length) { position = 0; } // back to the skipped ones
      render();
    } catch (err) {
      alert("Not stored: " + err.message);
    } finally {
      busy = false;
    }
  }

  function skip() {
    if (state.queue.length) { position = (position + 1) % state.queue.length; renderItem(); }
  }

  async function applyThreshold() {
    try {
      const next = await post(api + "/threshold", {});
      const r = next.report;
      state = { ...next, applied: `Applied: threshold ${r.previous.threshold.toPrecision(5)} → ` +
        `${r.threshold.toPrecision(5)} (${r.policy}), model version ${r.model_version}.` };
      position = 0;
      render();
    } catch (err) {
      alert("Not applied: " + err.message);
    }
  }

  function render() { renderCounts(); renderItem(); renderThreshold(); }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    const key = event.key.toLowerCase();
    if (key === "d") { decide("defect"); } else if (key === "f") { decide("good"); } else if (key === "s") { skip(); }
  });
  $("defect").addEventListener("click", () => decide("defect"));
  $("good").addEventListener("click", () => decide("good"));
  $("skip").addEventListener("click", skip);
  render();
})();
