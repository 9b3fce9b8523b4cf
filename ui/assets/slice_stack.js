// The Study page's slice viewer, in the browser (a Streamlit custom component v2: no iframe, no build step).
//
// Why in the browser: a slice change that goes through the server (a rerun, a websocket round trip, a figure
// redraw) took about half a second in a real browser. Here the slices and heatmaps the server has sent are kept,
// so ←/→, the slider and the buttons redraw at once; the server is told which slice is shown (its table,
// strip-chart line and downloads follow) and which slices this page holds, and it sends what is missing,
// nearest to the shown slice first, while `pending` says more is coming.
//
// data (from ui/slice_stack.py): n, k (the server's shown slice, 0-based), grey_id / blend_id (what the images
// depend on: series, plane, window; method, class, opacity, colour map), greys {k: data URI}, blends {k: {src,
// title, peak, scale}}, captions [n], colours [css colours, 0 -> 1], goto {k, nonce},
// pending. State sent back: view = {k, grey_id, blend_id, greys: "0101…", blends: "0011…", goto (the last jump
// applied: a report from before a jump must not undo it), tick}.

const VIEWERS = new WeakMap(); // one per mounted element: it outlives reruns (Streamlit calls us on each)
const POLL_MS = 250; // while the server has more to send: ask again this soon after the last answer
const REPORT_MS = 40; // coalesce held-down keys into one report to the server

function mask(list, n) {
  let s = "";
  for (let i = 0; i < n; i++) s += list[i] ? "1" : "0";
  return s;
}

// Widgets that use ← → themselves (Streamlit's sliders, number boxes, select boxes, tables, radio groups…): a key
// pressed there is theirs, not a slice step.
const OWN_ARROWS = new Set(["slider", "spinbutton", "combobox", "listbox", "option", "textbox", "menu", "menuitem",
  "tab", "tablist", "radio", "radiogroup", "grid", "gridcell"]);

function editable(node) {
  if (!node || !node.tagName) return false;
  const tag = node.tagName.toUpperCase();
  return tag === "TEXTAREA" || tag === "SELECT" || node.isContentEditable ||
    (tag === "INPUT" && !node.classList.contains("sv-range")) ||
    OWN_ARROWS.has((node.getAttribute && node.getAttribute("role")) || "");
}

function build(root) {
  const q = (sel) => root.querySelector(sel);
  const v = {
    root, n: 0, k: null, greyId: null, blendId: null, greys: [], blends: [], captions: [],
    lastGoto: null, tick: 0, pollTimer: null, reportTimer: null, attached: false, setState: null,
    zoom: { s: 1, x: 0, y: 0 }, drag: null,
    el: {
      range: q(".sv-range"), prev: q(".sv-prev"), next: q(".sv-next"), label: q(".sv-label"),
      grey: q(".sv-grey"), blend: q(".sv-blend"), waitGrey: q(".sv-wait-grey"), waitBlend: q(".sv-wait-blend"),
      left: q(".sv-title-left"), right: q(".sv-title-right"), peak: q(".sv-peak"), hover: q(".sv-hover"),
      grad: q(".sv-cbar-grad"), cbarTitle: q(".sv-cbar-title"), boxes: root.querySelectorAll(".sv-box"),
    },
  };
  v.el.prev.addEventListener("click", () => step(v, -1));
  v.el.next.addEventListener("click", () => step(v, 1));
  v.el.range.addEventListener("input", () => show(v, Number(v.el.range.value) - 1, true));
  v.onKey = (e) => {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const target = e.composedPath ? e.composedPath()[0] : e.target;
    if (editable(target) || (target && target.classList && target.classList.contains("sv-range"))) return;
    e.preventDefault();
    step(v, e.key === "ArrowRight" ? 1 : -1);
  };
  v.el.boxes.forEach((box) => zoomable(v, box));
  return v;
}

function attach(v) {
  if (!v.attached) document.addEventListener("keydown", v.onKey);
  v.attached = true;
}

function connected(v) {
  const host = v.root.host || v.root; // a ShadowRoot's host element, or the element itself
  return host.isConnected;
}

function cleanup(v) {
  // Streamlit may call a render's cleanup after the next render has started; only a viewer that has really left
  // the page lets go of the keyboard and its timers.
  setTimeout(() => {
    if (connected(v)) return;
    document.removeEventListener("keydown", v.onKey);
    v.attached = false;
    clearTimeout(v.pollTimer);
    clearTimeout(v.reportTimer);
  }, 0);
}

function step(v, delta) {
  if (v.k === null) return;
  show(v, Math.min(Math.max(v.k + delta, 0), v.n - 1), true);
}

function report(v) {
  clearTimeout(v.reportTimer);
  v.tick += 1;
  v.setState("view", { k: v.k, grey_id: v.greyId, blend_id: v.blendId, greys: mask(v.greys, v.n),
    blends: mask(v.blends, v.n), goto: v.lastGoto, tick: v.tick });
}

function show(v, k, tellServer) {
  if (!(k >= 0 && k < v.n)) return;
  v.k = k;
  draw(v);
  if (tellServer) {
    clearTimeout(v.reportTimer);
    v.reportTimer = setTimeout(() => report(v), REPORT_MS);
  }
}

function draw(v) {
  const { el } = v;
  const k = v.k;
  el.range.max = String(v.n);
  el.range.value = String(k + 1);
  el.prev.disabled = k <= 0;
  el.next.disabled = k >= v.n - 1;
  el.label.innerHTML = "";
  const b = document.createElement("b");
  b.textContent = `Slice ${k + 1} of ${v.n}`;
  el.label.append(b, document.createTextNode(" · " + (v.captions[k] || "")));
  el.left.textContent = `Slice ${k + 1}`;
  const grey = v.greys[k];
  if (grey) {
    if (el.grey.dataset.slice !== String(k) || el.grey.dataset.id !== v.greyId) el.grey.src = grey;
    el.grey.dataset.slice = String(k);
    el.grey.dataset.id = v.greyId;
    el.grey.style.visibility = "visible";
  } else {
    el.grey.style.visibility = "hidden";
    el.grey.dataset.slice = "";
  }
  el.waitGrey.style.display = grey ? "none" : "flex";
  const blend = v.blends[k];
  if (blend) {
    if (el.blend.dataset.slice !== String(k) || el.blend.dataset.id !== v.blendId) el.blend.src = blend.src;
    el.blend.dataset.slice = String(k);
    el.blend.dataset.id = v.blendId;
    el.blend.style.visibility = "visible";
    el.right.textContent = blend.title;
    el.peak.textContent = blend.peak;
    el.cbarTitle.textContent = blend.scale;
  } else {
    el.blend.style.visibility = "hidden";
    el.blend.dataset.slice = "";
    el.right.textContent = "";
    el.peak.textContent = "";
  }
  el.waitBlend.style.display = blend ? "none" : "flex";
}

function zoomable(v, box) {
  // Scroll zooms around the pointer, drag pans, double-click resets; both panels move together.
  const apply = () => {
    const t = `translate(${v.zoom.x}px, ${v.zoom.y}px) scale(${v.zoom.s})`;
    v.el.grey.style.transform = t;
    v.el.blend.style.transform = t;
  };
  box.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = box.getBoundingClientRect();
    const px = e.clientX - r.left, py = e.clientY - r.top;
    const s = Math.min(Math.max(v.zoom.s * (e.deltaY < 0 ? 1.2 : 1 / 1.2), 1), 16);
    v.zoom.x = px - (px - v.zoom.x) * (s / v.zoom.s);
    v.zoom.y = py - (py - v.zoom.y) * (s / v.zoom.s);
    v.zoom.s = s;
    if (s === 1) { v.zoom.x = 0; v.zoom.y = 0; }
    apply();
  }, { passive: false });
  box.addEventListener("pointerdown", (e) => {
    v.drag = { x: e.clientX - v.zoom.x, y: e.clientY - v.zoom.y };
    box.setPointerCapture(e.pointerId);
  });
  box.addEventListener("pointerup", () => { v.drag = null; });
  box.addEventListener("pointermove", (e) => {
    if (v.drag) {
      v.zoom.x = e.clientX - v.drag.x;
      v.zoom.y = e.clientY - v.drag.y;
      apply();
    }
    const img = v.el.grey;
    const r = box.getBoundingClientRect();
    if (!img.naturalWidth) return;
    // The image is drawn "contain"-fitted in the box, then zoomed: back to the image's own pixels.
    const fit = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const ox = (r.width - img.naturalWidth * fit) / 2, oy = (r.height - img.naturalHeight * fit) / 2;
    const x = Math.floor(((e.clientX - r.left - v.zoom.x) / v.zoom.s - ox) / fit);
    const y = Math.floor(((e.clientY - r.top - v.zoom.y) / v.zoom.s - oy) / fit);
    v.el.hover.textContent = x >= 0 && y >= 0 && x < img.naturalWidth && y < img.naturalHeight ? `x=${x}, y=${y} px` : "";
  });
  box.addEventListener("dblclick", () => { v.zoom = { s: 1, x: 0, y: 0 }; apply(); });
}

function receive(v, data) {
  const n = Number(data.n) || 0;
  if (data.grey_id !== v.greyId || n !== v.n) { v.greys = new Array(n); v.greyId = data.grey_id; }
  if (data.blend_id !== v.blendId || n !== v.n) { v.blends = new Array(n); v.blendId = data.blend_id; }
  v.n = n;
  for (const [k, uri] of Object.entries(data.greys || {})) v.greys[Number(k)] = uri;
  for (const [k, b] of Object.entries(data.blends || {})) v.blends[Number(k)] = b;
  v.captions = data.captions || [];
  if (data.colours && data.colours.length) v.el.grad.style.background = `linear-gradient(to top, ${data.colours.join(", ")})`;
  let moved = false;
  const goto = data.goto || { k: null, nonce: 0 };
  if (v.k === null || v.k >= n) { // a new viewer starts where the server is (any earlier jump included)
    v.k = Math.min(Math.max(Number(data.k) || 0, 0), Math.max(n - 1, 0));
    v.lastGoto = goto.nonce;
  } else if (goto.nonce !== v.lastGoto && goto.k !== null) { // a jump asked for on the server (chart, "Go to")
    v.lastGoto = goto.nonce;
    moved = goto.k !== v.k;
    v.k = Math.min(Math.max(goto.k, 0), n - 1);
  }
  if (n > 0) draw(v);
  clearTimeout(v.pollTimer);
  if (v.tick === 0 || moved) report(v); // first render: tell the server what this page holds
  else if (data.pending) v.pollTimer = setTimeout(() => report(v), POLL_MS);
}

export default function (component) {
  const { parentElement, data, setStateValue } = component;
  let v = VIEWERS.get(parentElement);
  if (!v) {
    v = build(parentElement);
    VIEWERS.set(parentElement, v);
  }
  v.setState = setStateValue;
  attach(v);
  receive(v, data || {});
  return () => cleanup(v);
}
