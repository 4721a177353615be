// The review queue: one item at a time; D = defect, F = good part (a false alarm when flagged), S = skip.
// Every decision is stored by the server (atomically, in Parquet) before the next item shows.
// Optionally, dragging on the original image brushes the defect's region (C clears it): sent with a D as a
// PNG of the image's own size, 255 where brushed, kept with the label (what `ear-stream refine` learns from).
// Every string from the results (ids, model versions, times, frame checks) reaches the page as text through
// el() and textContent, never as markup: a producer's id or a results part cannot inject anything.
"use strict";
(function () {
  let state = JSON.parse(document.getElementById("state").textContent);
  let position = 0; // index into state.queue (skipped items stay in the queue for the next visit)
  let busy = false;
  let applied = null; // the last "Applied: …" line, kept across re-renders
  let strokes = []; // the brushed region of the current item: [{ r, pts: [[x, y], …] }] in image pixels
  let stroke = null; // the stroke being drawn
  const api = "/api/p/" + encodeURIComponent(state.product);
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) { node.setAttribute(name, value); }
    node.append(...children);
    return node;
  }

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; }
  function num(x) { return Number(x).toPrecision(5); }

  function showMessage(text) {
    $("message").textContent = text || "";
    $("message").hidden = !text;
  }

  function renderCounts() {
    const c = state.counts;
    const count = (id, n, what) => el("span", {}, el("b", { id: id }, String(n)), " " + what);
    $("counts").replaceChildren(
      count("n-to-review", c.to_review, "to review"),
      count("n-confirmed", c.confirmed, "confirmed defects"),
      count("n-false-alarms", c.false_alarms, "false alarms"),
      count("n-escapes", c.escapes, "escapes found"),
      count("n-good-passes", c.good_passes, "good passes"),
      el("span", {}, `${c.results} results, ${c.flagged} flagged`),
    );
  }

  function point(p) {
    return [
      "threshold ", el("b", {}, num(p.threshold)),
      `: ${p.caught} of ${p.defects} defects caught, ${p.escapes} escapes (${pct(p.escape_rate)}), ` +
      `${p.false_alarms} false alarms (${pct(p.false_reject_rate)})`,
    ];
  }

  function renderThreshold() {
    const t = state.thresholds;
    const labels = t.labels || { defects: 0, good: 0 };
    const parts = [
      el("h2", {}, "Threshold on the reviewed items"),
      el("p", { class: "hint" },
        `${t.reviewed_same_weights} reviewed items judged by the current weights (${t.model_version || "unknown model"}); ` +
        "every flagged item and a sample of passed ones are queued, so the rates describe the reviewed items, not the line."),
      t.current ? el("p", { id: "current-point" }, "Current: ", ...point(t.current)) : el("p", {}, "Current: no reviewed items yet."),
    ];
    if (t.proposed) {
      parts.push(el("p", { id: "proposed-point" }, `Proposed (F1 ${t.proposed.f1.toFixed(3)}): `, ...point(t.proposed)));
      parts.push(state.can_apply
        ? el("button", { id: "apply" }, "Apply the proposed threshold…")
        : el("p", { class: "hint" }, "Start the station with --models to apply it."));
      parts.push(el("p", { class: "hint" },
        `Apply needs ${state.min_labels_per_class} labels of each class (now ${labels.defects} defects, ` +
        `${labels.good} good parts) and a threshold that rejects at most ` +
        `${pct(state.max_false_reject_rate_on_calibration)} of the model's held-out good images.`));
    } else {
      parts.push(el("p", { class: "hint" }, "A proposal needs both confirmed defects and good parts among the reviewed items."));
    }
    if (applied) { parts.push(el("p", { id: "applied", class: "applied" }, applied)); }
    $("threshold").replaceChildren(...parts);
    const apply = $("apply");
    if (apply) { apply.addEventListener("click", askToApply); }
  }

  function fact(name, value, id) {
    return [el("dt", {}, name), el("dd", id ? { id: id } : {}, value)];
  }

  function renderItem() {
    const item = state.queue[position];
    $("item").hidden = !item;
    $("done").hidden = !!item;
    document.querySelectorAll(".keys button").forEach((b) => { b.disabled = !item; });
    if (!item) { return; }
    const base = "/p/" + encodeURIComponent(state.product);
    const img = $("image");
    $("boxes").replaceChildren();
    strokes = [];
    stroke = null;
    img.onload = () => { drawBoxes(item, img); drawStrokes(); };
    img.onerror = () => { $("original").hidden = true; };
    $("original").hidden = false;
    img.src = base + "/image/" + encodeURIComponent(item.key);
    $("heat").hidden = !item.has_heatmap;
    if (item.has_heatmap) { $("heatmap").src = base + "/heatmap/" + encodeURIComponent(item.key) + ".png"; }
    const verdict = item.flagged
      ? el("span", { class: "flagged" }, "flagged")
      : el("span", { class: "passed" }, "passed (sample)");
    $("facts").replaceChildren(
      ...fact("id", item.id, "item-id"),
      ...fact("verdict", verdict),
      ...fact("score", `${num(item.score)} (threshold ${num(item.threshold)})`),
      ...fact("regions", String(item.regions.length)),
      ...(item.frame_check ? fact("frame check", item.frame_check, "frame-check") : []),
      ...fact("model", item.model_version, "item-model"),
      ...fact("processed", item.processed_at),
      ...fact("position", `${position + 1} of ${state.queue.length}`),
    );
  }

  // Boxes are in the original image's pixels. The SVG's user space is that image (viewBox = its natural
  // size) and it is fitted into the frame exactly as the <img> is (object-fit: contain, centred =
  // preserveAspectRatio xMidYMid meet), so a box lands on its defect whatever the image's aspect ratio.
  function drawBoxes(item, img) {
    const svg = $("boxes");
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.replaceChildren(...item.regions.map((r) => {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", String(Number(r.x0)));
      rect.setAttribute("y", String(Number(r.y0)));
      rect.setAttribute("width", String(Number(r.x1) - Number(r.x0) + 1));
      rect.setAttribute("height", String(Number(r.y1) - Number(r.y0) + 1));
      return rect;
    }));
  }

  // The brush works in the image's own pixels, through the same SVG user space as the boxes.
  function brushRadius() {
    const img = $("image");
    return Math.max(2, Math.round(Math.max(img.naturalWidth, img.naturalHeight) / 60));
  }

  function imagePoint(event) {
    const svg = $("boxes");
    const pt = svg.createSVGPoint();
    pt.x = event.clientX;
    pt.y = event.clientY;
    const p = pt.matrixTransform(svg.getScreenCTM().inverse());
    return [Math.round(p.x), Math.round(p.y)];
  }

  function drawStrokes() {
    const svg = $("boxes");
    svg.querySelectorAll("polyline").forEach((line) => line.remove());
    for (const s of strokes) {
      const line = document.createElementNS(SVG, "polyline");
      const pts = s.pts.length === 1 ? [s.pts[0], s.pts[0]] : s.pts;
      line.setAttribute("points", pts.map((p) => `${p[0]},${p[1]}`).join(" "));
      line.setAttribute("stroke-width", String(2 * s.r));
      svg.appendChild(line);
    }
    $("brushed").textContent = strokes.length ? "region brushed (C clears)" : "";
  }

  function startStroke(event) {
    if (!state.queue[position] || !$("image").naturalWidth) { return; }
    event.preventDefault();
    stroke = { r: brushRadius(), pts: [imagePoint(event)] };
    strokes.push(stroke);
    $("boxes").setPointerCapture(event.pointerId);
    drawStrokes();
  }

  function moveStroke(event) {
    if (!stroke) { return; }
    stroke.pts.push(imagePoint(event));
    drawStrokes();
  }

  function clearBrush() { strokes = []; stroke = null; drawStrokes(); }

  // The brushed region as a PNG of the image's size (base64): white strokes on black, nothing of the image.
  function maskPng() {
    const img = $("image");
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const s of strokes) {
      ctx.lineWidth = 2 * s.r;
      ctx.beginPath();
      ctx.moveTo(s.pts[0][0], s.pts[0][1]);
      for (const p of s.pts.slice(1)) { ctx.lineTo(p[0], p[1]); }
      if (s.pts.length === 1) { ctx.arc(s.pts[0][0], s.pts[0][1], s.r, 0, 2 * Math.PI); ctx.fill(); }
      ctx.stroke();
    }
    return canvas.toDataURL("image/png").split(",")[1];
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const text = await response.text();
    let data;
    try { data = JSON.parse(text); } catch (err) { data = { error: text }; }
    if (!response.ok) { throw new Error(data.error || response.statusText); }
    return data;
  }

  async function decide(label) {
    const item = state.queue[position];
    if (!item || busy) { return; }
    busy = true;
    try {
      const body = { key: item.key, label: label };
      if (label === "defect" && strokes.length) { body.mask = maskPng(); }
      const next = await post(api + "/label", body);
      const skipped = state.queue.slice(0, position).map((it) => it.key);
      state = next;
      position = state.queue.filter((it) => skipped.includes(it.key)).length;
      if (position >= state.queue.length) { position = 0; } // back to the skipped ones
      showMessage("");
      render();
    } catch (err) {
      showMessage("Not stored: " + err.message);
    } finally {
      busy = false;
    }
  }

  function skip() {
    if (state.queue.length) { position = (position + 1) % state.queue.length; renderItem(); }
  }

  function closeConfirm() { $("confirm").hidden = true; $("confirm").replaceChildren(); }

  // Step 1 of Apply: the server's proposal, with what it does, shown before anything changes.
  async function askToApply() {
    try {
      const p = (await post(api + "/threshold", {})).proposal;
      showMessage("");
      renderProposal(p);
    } catch (err) {
      closeConfirm();
      showMessage("Not applied: " + err.message);
    }
  }

  function renderProposal(p) {
    const after = p.operating_point, before = p.operating_point_before;
    const parts = [
      el("h2", {}, "Apply this threshold?"),
      el("p", { id: "proposal-threshold" },
        `threshold ${num(p.previous.threshold)} (${p.previous.policy}) → `, el("b", {}, num(p.threshold)), ` (${p.policy})`),
      el("p", { id: "proposal-reviewed" },
        `On the ${after.items} reviewed items: false rejects ${before.false_alarms} → ${after.false_alarms}, ` +
        `escapes ${before.escapes} → ${after.escapes}.`),
      el("p", { id: "proposal-held-out" },
        `Held-out good images rejected: ${pct(p.false_reject_rate_on_calibration)} ` +
        `(at most ${pct(p.max_false_reject_rate_on_calibration)}).`),
    ];
    if (p.refused) {
      parts.push(el("p", { id: "proposal-refused", class: "error" }, "Refused: " + p.refused));
      parts.push(el("button", { id: "cancel-apply" }, "Close"));
    } else {
      parts.push(el("button", { id: "confirm-apply" }, "Confirm"), el("button", { id: "cancel-apply" }, "Cancel"));
    }
    $("confirm").replaceChildren(...parts);
    $("confirm").hidden = false;
    $("cancel-apply").addEventListener("click", closeConfirm);
    const confirm = $("confirm-apply");
    if (confirm) { confirm.addEventListener("click", () => confirmApply(p)); }
  }

  // Step 2: the confirmed values go back; the server refuses them if the proposal changed meanwhile.
  async function confirmApply(p) {
    try {
      const next = await post(api + "/threshold",
        { confirm: true, threshold: p.threshold, model_version: p.previous.model_version });
      const r = next.report;
      delete next.report;
      state = next;
      applied = `Applied: threshold ${num(r.previous.threshold)} → ${num(r.threshold)} (${r.policy}), ` +
        `model version ${r.model_version}, by ${r.reviewer}.`;
      position = 0;
      closeConfirm();
      showMessage("");
      render();
    } catch (err) {
      closeConfirm();
      showMessage("Not applied: " + err.message);
    }
  }

  function render() { renderCounts(); renderItem(); renderThreshold(); }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    const key = event.key.toLowerCase();
    if (key === "d") { decide("defect"); } else if (key === "f") { decide("good"); } else if (key === "s") { skip(); }
    else if (key === "c") { clearBrush(); }
  });
  $("boxes").addEventListener("pointerdown", startStroke);
  $("boxes").addEventListener("pointermove", moveStroke);
  $("boxes").addEventListener("pointerup", () => { stroke = null; });
  $("boxes").addEventListener("pointercancel", () => { stroke = null; });
  $("clear").addEventListener("click", clearBrush);
  $("defect").addEventListener("click", () => decide("defect"));
  $("good").addEventListener("click", () => decide("good"));
  $("skip").addEventListener("click", skip);
  render();
})();
