// sonoedge: the midwife's screen. No framework, nothing fetched from outside the box.
// The image and its overlay data arrive together in one WebSocket message per frame (or,
// in a browser that refuses the WebSocket, one HTTPS answer per frame); the overlay is
// drawn here, over the image, never burnt into its pixels.
"use strict";

const $ = (sel) => document.querySelector(sel);
const stats = { latencies: [], parts: [], frames: 0, bytes: 0, states: 0, lastHeader: null, lastState: null };
window.sonoedge = stats; // read by the tests and the bench

let catalog = {};
let languages = { en: "English" };
let ws = null;
let reconnectTimer = null;
let pending = null; // {header, bitmap} waiting for the next animation frame
let shownHeader = null;
let state = null;
let lastCaptured = null; // {exam_id, n}
let heatmapOn = false;
let audio = null;
let examCommand = null; // {action, until}: a Start or Stop sent, not yet seen in the state
let examFailedUntil = 0; // a Start or Stop the box did not take: said until then (ms)

// ---------------------------------------------------------------- text

// A count picks the catalog's plural form where it has one ("exam.running.one" for
// "1 frame"), by the language's own rule (French counts 0 as "one").
function pluralKey(key, vars) {
  if (!vars || typeof vars.n !== "number") return key;
  let form = "other";
  try { form = new Intl.PluralRules(catalog._lang || "en").select(vars.n); } catch (e) { /* old browser */ }
  return catalog[`${key}.${form}`] !== undefined ? `${key}.${form}` : key;
}

function t(key, vars) {
  let text = catalog[pluralKey(key, vars)];
  if (text === undefined) text = vars && vars._fallback !== undefined ? vars._fallback : key;
  if (vars) text = text.replace(/\{(\w+)\}/g, (m, k) => (vars[k] !== undefined ? vars[k] : m));
  return text;
}
stats.t = t; // the tests read the page's own wording through it

function planeName(label) {
  if (!label) return "";
  return t("plane." + label, { _fallback: label });
}

function pickLanguage() {
  const saved = localStorage.getItem("sonoedge.lang");
  if (saved) return saved;
  const nav = (navigator.language || "en").slice(0, 2).toLowerCase();
  return nav;
}

async function loadCatalog(lang) {
  let res = await fetch(`/i18n/${encodeURIComponent(lang)}.json`);
  if (!res.ok) res = await fetch("/i18n/en.json");
  catalog = await res.json();
  try { languages = JSON.parse(catalog._languages || "{}"); } catch (e) { languages = { en: "English" }; }
  document.documentElement.lang = catalog._lang || "en";
  for (const el of document.querySelectorAll("[data-i18n]")) {
    const key = el.getAttribute("data-i18n");
    if (catalog[key] !== undefined) el.textContent = catalog[key];
  }
  for (const sel of document.querySelectorAll("select.lang")) {
    sel.textContent = "";
    for (const [code, name] of Object.entries(languages)) {
      const opt = document.createElement("option");
      opt.value = code; opt.textContent = name;
      if (code === catalog._lang) opt.selected = true;
      sel.appendChild(opt);
    }
  }
  if (state) renderState(state);
  if (shownHeader) renderInstruction(shownHeader);
}

// ---------------------------------------------------------------- login

function showLogin(message) {
  if (ws) { try { ws.close(); } catch (e) { /* closing anyway */ } ws = null; }
  stopFallback();
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#pin").value = "";
  $("#pin").focus();
}

function showApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  connect();
}

async function login(ev) {
  ev.preventDefault();
  const pin = $("#pin").value;
  $("#unlock").disabled = true;
  try {
    const res = await fetch("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pin }), credentials: "same-origin",
    });
    if (res.ok) { showApp(); return; }
    let body = {};
    try { body = await res.json(); } catch (e) { body = {}; }
    const wait = body.retry_after_s || 0;
    if (res.status === 429 && body.error === "busy") showLogin(t("login.busy", { s: wait }));
    else if (res.status === 429) showLogin(t("login.braked", { s: wait }));
    else if (wait > 0) showLogin(t("login.wrong_wait", { s: wait }));
    else showLogin(t("login.wrong"));
  } catch (e) {
    showLogin(t("login.unreachable"));
  } finally {
    $("#unlock").disabled = false;
  }
}

async function api(path, body) {
  const res = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), credentials: "same-origin",
  });
  if (res.status === 401) { showLogin(t("login.expired")); throw new Error("401"); }
  return res;
}

// ---------------------------------------------------------------- stream

// The stream comes over one WebSocket. A browser that will not open it while the box
// answers its requests (iOS Safari and other WebKit browsers refuse wss:// to a
// self-signed certificate the midwife accepted for the page itself) gets the same frames
// by long polls instead (GET /api/frame: each answer is exactly a WebSocket frame
// message) and the state from GET /api/state every second; it tries the WebSocket again
// every stats.wsRetryMs and goes back to it as soon as one opens.
const STATE_POLL_MS = 1000;
stats.wsRetryMs = 60000;
stats.transport = null; // how the frames come: "websocket" or "https" (the fallback)
let wsOpened = false; // a WebSocket has opened on this page: this browser can
let wsRefused = 0; // WebSockets in a row that closed unopened while the box answered
let fallback = null; // the HTTPS fallback while it runs: {id, after, retry}

function connect() {
  clearTimeout(reconnectTimer);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let sock = null;
  let opened = false;
  try {
    sock = new WebSocket(`${proto}//${location.host}/api/ws`);
  } catch (e) { // a browser that will not even try
    wsClosedUnopened();
    return;
  }
  ws = sock;
  sock.binaryType = "arraybuffer";
  sock.onopen = () => {
    opened = true; wsOpened = true; wsRefused = 0;
    stopFallback();
    stats.transport = "websocket";
    sock.send(JSON.stringify({ heatmap: heatmapOn, video: true }));
  };
  sock.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "state") { stats.states += 1; renderState(msg); }
      return;
    }
    onFrame(ev.data);
  };
  sock.onclose = (ev) => {
    if (ws === sock) ws = null;
    if (ev.code === 4401 || ev.code === 1008) { showLogin(t("login.expired")); return; }
    if ($("#app").hidden) return;
    if (!opened) { wsClosedUnopened(); return; }
    boxAway();
    reconnectTimer = setTimeout(checkSessionThenConnect, 1500);
  };
}

// true: the box answered with the state (rendered); false: it did not answer; null: the
// session is over (the login is shown)
async function checkSession() {
  try {
    const res = await fetch("/api/state", { credentials: "same-origin" });
    if (res.status === 401) { showLogin(t("login.expired")); return null; }
    if (res.ok) { renderState(await res.json()); return true; }
  } catch (e) { /* the box is restarting: try again */ }
  return false;
}

// The box out of reach (restarting, the Wi-Fi gone): nothing on the screen may go on
// reading as live. Its last state kept "Live 15.1 fps" and a green "Good image: hold
// still" under "Reconnecting to the box…" (a midwife's walk). The next state puts all back.
function boxAway() {
  setBanner(t("status.reconnecting"), true);
  chip("#signal", t("status.away"), "bad");
  chip("#fps", "");
  $("#stage").classList.add("stale");
  const el = $("#instruction");
  el.className = "instruction idle";
  el.textContent = "";
  $("#quality").hidden = true;
}

async function checkSessionThenConnect() {
  if (await checkSession() !== null) connect();
}

// A WebSocket closed before it opened: the box is away (restarting, out of reach), or this
// browser refuses the socket while its requests get through. /api/state tells which.
async function wsClosedUnopened() {
  if (fallback) { retryLater(fallback); return; } // the fallback's retry: not yet
  const reachable = await checkSession();
  if (reachable === null || $("#app").hidden || fallback) return;
  wsRefused = reachable ? wsRefused + 1 : 0;
  // at once where no WebSocket has opened; twice in a row where one did (a restart)
  if (wsRefused >= (wsOpened ? 2 : 1)) { startFallback(); return; }
  boxAway();
  reconnectTimer = setTimeout(connect, 1500);
}

function startFallback() {
  if (fallback) return;
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // this tab's stream, for the caps
  const run = { id: Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""),
    after: 0, retry: null };
  fallback = run;
  stats.transport = "https";
  retryLater(run);
  pollFrames(run);
  pollState(run);
}

function stopFallback() {
  if (fallback) clearTimeout(fallback.retry);
  fallback = null;
}

function retryLater(run) {
  clearTimeout(run.retry);
  run.retry = setTimeout(() => { if (fallback === run && !ws) connect(); }, stats.wsRetryMs);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function pollFrames(run) { // the next frame after the last one drawn, and again
  while (fallback === run) {
    let ok = false;
    try {
      const res = await fetch(`/api/frame?stream=${run.id}&after=${run.after}` +
        `&heatmap=${heatmapOn ? 1 : 0}`, { credentials: "same-origin", cache: "no-store" });
      if (fallback !== run) return;
      if (res.status === 401) { showLogin(t("login.expired")); return; }
      ok = res.status === 204; // none within the poll's wait: ask again
      if (res.status === 200) {
        const buffer = await res.arrayBuffer();
        if (fallback !== run) return;
        const header = await onFrame(buffer);
        if (Number.isSafeInteger(header.seq)) run.after = header.seq;
        ok = true;
      }
    } catch (e) { ok = false; }
    if (!ok && fallback === run) { // the box away, or its viewers' cap: a moment
      boxAway();
      await sleep(1500);
    }
  }
}

async function pollState(run) { // what the WebSocket's state message carries, every second
  while (fallback === run) {
    const answered = await checkSession();
    if (answered === null) return;
    if (answered) stats.states += 1;
    else if (fallback === run) boxAway();
    await sleep(STATE_POLL_MS);
  }
}

async function onFrame(buffer) {
  const view = new DataView(buffer);
  const n = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  stats.bytes += buffer.byteLength;
  let bitmap = null;
  if (buffer.byteLength > 4 + n) {
    const blob = new Blob([new Uint8Array(buffer, 4 + n)], { type: "image/jpeg" });
    try { bitmap = await createImageBitmap(blob); } catch (e) { bitmap = null; }
  }
  if (pending && pending.bitmap) pending.bitmap.close();
  pending = { header, bitmap };
  requestAnimationFrame(draw);
  return header;
}

function draw() {
  if (!pending) return;
  const { header, bitmap } = pending;
  pending = null;
  const video = $("#video");
  if (bitmap) {
    if (video.width !== bitmap.width || video.height !== bitmap.height) {
      video.width = bitmap.width; video.height = bitmap.height;
      $("#stage").style.setProperty("--ar", (bitmap.width / bitmap.height).toFixed(4));
    }
    video.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
  }
  shownHeader = header;
  drawOverlay(header);
  renderInstruction(header);
  stats.frames += 1;
  stats.lastHeader = header;
  if (typeof header.ts === "number") {
    // The frame was captured at header.ts (the device's clock); this is the moment its
    // overlay is drawn, just before the browser paints it.
    const lat = performance.timeOrigin + performance.now() - header.ts * 1000;
    stats.latencies.push(lat);
    // where it went: capture -> handed to the web view (the loop's scoring), -> sent
    // (rate cap and JPEG), -> drawn (network, decode, the next animation frame)
    stats.parts.push([(header.published - header.ts) * 1000, (header.sent - header.published) * 1000,
      performance.timeOrigin + performance.now() - header.sent * 1000]);
    if (stats.latencies.length > 600) { stats.latencies.shift(); stats.parts.shift(); }
  }
}

// ---------------------------------------------------------------- overlay

const HEAT = (() => { // a 256-entry blue-cyan-yellow-red ramp, alpha rising with the value
  const lut = new Uint8ClampedArray(256 * 4);
  const stops = [[0, 0, 0, 255], [90, 0, 200, 255], [160, 255, 230, 0], [255, 255, 40, 0]];
  for (let i = 0; i < 256; i++) {
    let a = stops[0], b = stops[stops.length - 1];
    for (let s = 0; s < stops.length - 1; s++) {
      if (i >= stops[s][0] && i <= stops[s + 1][0]) { a = stops[s]; b = stops[s + 1]; break; }
    }
    const f = b[0] === a[0] ? 0 : (i - a[0]) / (b[0] - a[0]);
    lut[i * 4] = a[1] + f * (b[1] - a[1]);
    lut[i * 4 + 1] = a[2] + f * (b[2] - a[2]);
    lut[i * 4 + 2] = a[3] + f * (b[3] - a[3]);
    lut[i * 4 + 3] = i < 40 ? 0 : Math.min(170, (i - 40) * 0.9);
  }
  return lut;
})();
const heatCanvas = document.createElement("canvas");

function drawOverlay(h) {
  const overlay = $("#overlay");
  const dpr = window.devicePixelRatio || 1;
  const cw = Math.round(overlay.clientWidth * dpr), ch = Math.round(overlay.clientHeight * dpr);
  if (overlay.width !== cw || overlay.height !== ch) { overlay.width = cw; overlay.height = ch; }
  const ctx = overlay.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, cw, ch);
  if (!h.view || !cw) return;
  const [vx, vy, vw, vh] = h.view;
  const sx = cw / vw, sy = ch / vh;
  const px = (x) => (x - vx) * sx, py = (y) => (y - vy) * sy;
  const unit = Math.max(12, Math.min(cw, ch) / 22); // text size that scales with the image

  if (heatmapOn && h.heatmap && h.roi) {
    const { w, h: hh, data } = h.heatmap;
    const raw = atob(data);
    heatCanvas.width = w; heatCanvas.height = hh;
    const hctx = heatCanvas.getContext("2d");
    const img = hctx.createImageData(w, hh);
    for (let i = 0; i < w * hh; i++) {
      const v = raw.charCodeAt(i);
      img.data.set(HEAT.subarray(v * 4, v * 4 + 4), i * 4);
    }
    hctx.putImageData(img, 0, 0);
    const [rx, ry, rw, rh] = h.roi;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(heatCanvas, px(rx), py(ry), rw * sx, rh * sy);
    stats.heatmapDrawn = (stats.heatmapDrawn || 0) + 1;
  }

  if (h.ellipse) {
    const [cx, cy, a, b, ang] = h.ellipse;
    const ok = h.biometry && h.biometry.hc_mm != null;
    ctx.lineWidth = Math.max(2, unit / 6);
    ctx.strokeStyle = ok ? "#39ff6a" : "#ffd43b";
    ctx.beginPath();
    ctx.ellipse(px(cx), py(cy), a * sx, b * sy, (ang * Math.PI) / 180, 0, 2 * Math.PI);
    ctx.stroke();
    if (ok) {
      const r = (ang * Math.PI) / 180;
      ctx.setLineDash([unit / 2, unit / 3]);
      ctx.lineWidth = Math.max(1.5, unit / 9);
      ctx.beginPath(); // BPD: the minor axis; OFD: the major axis
      ctx.moveTo(px(cx - b * -Math.sin(r)), py(cy - b * Math.cos(r)));
      ctx.lineTo(px(cx + b * -Math.sin(r)), py(cy + b * Math.cos(r)));
      ctx.moveTo(px(cx - a * Math.cos(r)), py(cy - a * Math.sin(r)));
      ctx.lineTo(px(cx + a * Math.cos(r)), py(cy + a * Math.sin(r)));
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  renderTags(h);
}

function renderTags(h) {
  const plane = h.shown && h.shown.plane ? h.shown.plane : null;
  // The percentage beside the name is the shown plane's steady confidence, worked out on
  // the box over every frame (edge/web/live.py, SteadyConfidence): an average of the frames
  // that name that plane, in steps of 5 that move only once the average is clearly past
  // them. This frame's own confidence (h.confidence) is not shown: it is the confidence of
  // whatever plane this frame names, so beside the steadied name it came and went from
  // frame to frame and jumped by many points, and nobody can read a number that flickers.
  // A name held against the frames (the box's SteadyConfidence: the probe has left that
  // view, the hold keeps its name a few frames) comes without its number, and dimmed: its
  // percentage, of the view left, read "Femur 95%" over a skull (a midwife's walk).
  const held = !!(h.shown && h.shown.held);
  const pct = h.shown && h.shown.confidence != null && !held ? h.shown.confidence : null;
  const conf = plane && plane !== "uncertain" && pct != null ? ` ${pct}%` : "";
  const label = $("#plane");
  label.textContent = !plane ? "" : plane === "uncertain" ? t("plane.uncertain") : planeName(plane) + conf;
  label.classList.toggle("held", held && !!plane);
  const right = $("#ga");
  right.textContent = "";
  const addLine = (text, cls) => {
    if (!text) return;
    const span = document.createElement("span");
    span.className = "line " + (cls || "");
    span.textContent = text;
    right.appendChild(span);
  };
  const bio = h.biometry;
  const measured = bio && bio.hc_mm != null;
  if (!measured && bio && bio.status && h.ellipse) {
    addLine(t("bio." + bio.status, { _fallback: "" }), "small note"); // why no HC
  }
  // HC, BPD and GA always come from one source, so they agree: the running exam's (the
  // medians of its best head frames, the figures it records) once it has them, else this
  // frame's. An exam that has ended (Stop's hold, the gap before the next one) measured
  // the woman before: over the head now on the image its figures would read as hers, so
  // the image then shows the frame's own. They sit on the image only over a head: beside
  // a heart or a kidney the exam's HC read as if measured on that image. The exam card
  // keeps them whatever the plane, and after the exam.
  // while the name is held, the figures follow what this frame shows, not the name
  const running = !!(state && state.exam && state.exam.running);
  const head = overAHead(held ? h.plane : plane, h);
  const exams = head && running ? examBiometry() : null;
  const src = head ? exams || (measured ? bio : null) : null;
  if (src) {
    // whose figures: the exam's medians stand still while the probe moves, and read as
    // this frame's measurement unless they say so (a midwife's walk)
    addLine(t(exams ? "overlay.of_exam" : "overlay.of_frame"), "small");
    addLine(t("overlay.hc", { mm: src.hc_mm.toFixed(0) }), "bio");
    addLine(t("overlay.bpd", { mm: src.bpd_mm.toFixed(0) }), "bio");
  }
  const [ga, range] = gaLine(src);
  addLine(ga, src && src.ga_weeks == null ? "small note" : ""); // an HC with no age: why
  // the exam's age give or take what a scan at that age can tell, as the card says it, on
  // the small line that wraps ("AG 24 SA 3 j ± 14 j" was cut over the image on a phone); a
  // frame's own age has no exam screening to give it one
  const days = exams && src === exams && state && state.screening
    && state.screening.ga_tolerance_days;
  const plusMinus = ga && days ? t("overlay.ga_tolerance", { days }) : "";
  addLine([plusMinus, rangeOf(range)].filter(Boolean).join(" · "), "small");
  right.classList.toggle("room", figuresRoom(right.childElementCount > 0 || headShown(plane)));
  const bar = qualityBar(h);
  const line = $("#quality");
  line.hidden = bar == null;
  if (bar) {
    const q = Math.max(0, Math.min(1, bar.q));
    line.className = "qline " + bar.cls;
    line.querySelector("i").style.width = `${Math.round(q * 100)}%`;
    line.querySelector("b").textContent = `${t("overlay.quality")} ${Math.round(q * 100)}%`;
  }
}

// The quality bar and the instruction under the image tell one story. The instruction is
// the steady verdict (edge/exam/feedback.py): "Good image" holds over worse frames until a
// fault has led for message_change_frames (about a second), and an instruction holds
// likewise, while the score is an average that falls and climbs at its own pace. Coloured
// by its own thresholds, the bar sat low and yellow or red beside the green "Good image"
// for a second or two. So the bar's colour follows the verdict: green only beside "Good
// image"; beside an instruction (a plane off the exam's list too) yellow, or red under
// QUALITY_POOR. Its length and its figure stay the measured score, whatever the colour: a
// number on the screen is never made up to match the words.
const QUALITY_GOOD = 0.5, QUALITY_POOR = 0.25;

function qualityBar(h) { // {q, cls} of the bar under the image, or null for none
  const shown = h && h.shown;
  const q = shown && shown.score != null ? shown.score : h ? h.quality : null;
  if (q == null) return null;
  if (!shown) return { q, cls: q >= QUALITY_GOOD ? "good" : q >= QUALITY_POOR ? "fair" : "poor" };
  if (shown.instruction && shown.instruction.class === "good") return { q, cls: "good" };
  return { q, cls: q >= QUALITY_POOR ? "fair" : "poor" };
}

// On a phone the head's figures sit under the image (app.css), in a room of their own that
// is kept while a head is shown: the steadied plane's name (held a few frames after the
// probe has left it), not each frame's, so the segmenter missing a skull on one frame does
// not move the instruction under them. With no head and no figures the room goes (it was
// an empty band under every other plane); a figure on one odd frame opens it, and it stays
// FIGURES_ROOM_HOLD_MS after the last figure or head, so odd frames do not make it blink.
const FIGURES_ROOM_HOLD_MS = 2000;
let figuresRoomUntil = 0;

function figuresRoom(wanted) { // whether the figures' room is kept now
  const now = performance.now();
  if (wanted) figuresRoomUntil = now + FIGURES_ROOM_HOLD_MS;
  return now < figuresRoomUntil;
}

function headShown(plane) { // the steadied plane shown is one the exam measures the head on
  const heads = state && state.protocol && state.protocol.head_planes;
  return !!plane && Array.isArray(heads) && heads.includes(plane);
}

function weeksDays(w) {
  const days = Math.round(w * 7);
  return t("overlay.wd", { w: Math.floor(days / 7), d: days % 7 });
}

// The image shows a head: one measured on this frame, or a plane the exam measures. An
// outline alone is not one: on a face (Lips) the segmenter's yellow outline had the exam's
// HC, BPD and age beside it, as if measured there.
function overAHead(plane, h) {
  if (h.biometry && h.biometry.hc_mm != null) return true;
  const heads = state && state.protocol && state.protocol.head_planes;
  return Array.isArray(heads) ? plane != null && heads.includes(plane) : !!h.ellipse;
}

// Why the exam's heads have no figures, where that is the box's calibration: a fresh box
// ticked the head slot and showed no HC without a word, and she took the exam as measured.
const SCALE_PROBLEMS = ["pixel_size_missing", "pixel_size_absurd", "ruler_unread",
  "screen_stretched"];

// The set-up status that refused every head of an exam, or undefined: the card's why, the
// slot's "not measured" and the badge all go by it.
function setUpRefusal(bio) {
  if (!bio || bio.measured || !bio.declined || typeof bio.declined !== "object") return undefined;
  return SCALE_PROBLEMS.find((s) => bio.declined[s]);
}

// Every head of the exam refused for the box's set-up: its slots all captured is no exam
// done, and a green "1 of 1" beside "no HC" read as measured (a walk): its badge is yellow.
function progressBadge(exam) {
  if (setUpRefusal(exam.biometry)) return "badge refused";
  return "badge" + (exam.captured === exam.required ? " done" : "");
}

function unmeasuredWhy() {
  const bio = state && state.exam && state.exam.biometry;
  const status = setUpRefusal(bio);
  const setting = status === "screen_stretched" ? stretchSetting(bio) : "";
  const frame = setting ? stretchFrame(bio) : "";
  if (frame) return t("exam.not_measured_screen_stretched_setting_frame", { setting, frame });
  if (setting) return t("exam.not_measured_screen_stretched_setting", { setting });
  return status ? t("exam.not_measured_" + status) : "";
}

// The `[source] stretch` that undoes a stretched picture, as the box's verdict named it
// (edge/models/fan.py StretchWatch.setting, bounded there: `setting_read_back`), to four
// decimals as the report writes it; a config's line, so with a dot in every language. ""
// where the box named none: the card then says the general fix.
function stretchSetting(bio) {
  const value = bio.stretch_setting;
  return typeof value === "number" && Number.isFinite(value) && value > 0
    ? String(Math.round(value * 1e4) / 1e4) : "";
}

// The grabber's frame size that setting is for ("720x576", edge/models/fan.py
// StretchWatch.frame, bounded there: `frame_read_back`): one setting is for one size. ""
// where the box named none: the card then names the setting alone.
function stretchFrame(bio) {
  const sized = typeof bio.stretch_frame === "string"
    ? /^([0-9]{1,5})x([0-9]{1,5})$/.exec(bio.stretch_frame) : null;
  return sized && +sized[1] > 0 && +sized[2] > 0 ? `${+sized[1]}x${+sized[2]}` : "";
}

// A slot the exam measures the head on: its plane, or one it accepts, is a head plane.
function headSlot(row) {
  const heads = state && state.protocol && state.protocol.head_planes;
  const planes = Array.isArray(row.accepts) ? row.accepts : [row.plane];
  return Array.isArray(heads) && planes.some((p) => heads.includes(p));
}

function examBiometry() { // the exam's head figures, or null before a head is measured
  const bio = state && state.exam && state.exam.biometry;
  return bio && bio.hc_mm != null && bio.bpd_mm != null ? bio : null;
}

// Hadlock's span (edge/models/biometry.py HADLOCK_1984_WEEKS): the device sends a range's
// bound outside it as null, and the range then says "< 14w 0d" or "> 42w 0d"
const HADLOCK_WEEKS = [14, 42];

function gaLine(bio) { // [age, its range] of one set of figures (the exam's or a frame's)
  if (!bio) return ["", ""];
  // an HC the formula does not cover (outside 14-42 weeks) has no age: said, as the report
  // says it, rather than an HC with nothing beside it
  if (bio.ga_weeks == null) return bio.hc_mm == null ? ["", ""] : [t("report.ga_outside"), ""];
  const lo = bio.ga_low_weeks, hi = bio.ga_high_weeks;
  let range = "";
  if (lo != null && hi != null) {
    // bounds within a day of each other read "19w 1d – 19w 1d": no range worth saying
    const low = weeksDays(lo), high = weeksDays(hi);
    if (hi > lo && low !== high) range = `${low} – ${high}`;
  } else if (lo != null || hi != null) { // one best head outside the span: say so
    const low = lo != null ? weeksDays(lo) : `< ${weeksDays(HADLOCK_WEEKS[0])}`;
    const high = hi != null ? weeksDays(hi) : `> ${weeksDays(HADLOCK_WEEKS[1])}`;
    range = `${low} – ${high}`;
  }
  return [`${t("overlay.ga")} ${weeksDays(bio.ga_weeks)}`, range];
}

// " ± 10 days" after an age, from its exam's screening (edge/exam/screening.py), or "".
function withTolerance(ga, screening) {
  const days = screening && screening.ga_tolerance_days;
  return ga && days ? ` ${t("exam.ga_tolerance", { days })}` : "";
}

// The range says what it is: the ages of the smallest and the largest of the best head
// frames, their spread. Unlabelled, "19w 1d – 19w 2d" read as the dating's precision.
function rangeOf(range) {
  return range ? t("overlay.ga_range", { range }) : "";
}

function renderInstruction(h) {
  const el = $("#instruction");
  const st = state && state.status;
  if (st && st.signal !== "ok") {
    el.className = "instruction idle";
    el.textContent = t("status.instruction_" + st.signal, { _fallback: "" });
    return;
  }
  // After Stop the next exam waits for Start: nothing scanned now is kept. A green "Good
  // image: hold still" under a live image read as recording (a midwife's walk).
  if (st && st.holding && !(state.exam && state.exam.running)) {
    el.className = "instruction idle";
    el.textContent = t("instruction.held");
    return;
  }
  // What it says is the box's (edge/web/live.py instruction): the quality audit's, no
  // verdict beside a name held against the frames, the slots still to find beside a plane
  // off the exam's list, else "Good image". The page only puts it in its language.
  const said = h && h.shown && h.shown.instruction;
  if (!said) { el.className = "instruction idle"; el.textContent = ""; return; }
  el.className = "instruction " + (["fix", "good", "idle"].includes(said.class) ? said.class : "fix");
  const vars = { _fallback: said.text || "" };
  if (said.plane) vars.plane = planeName(said.plane);
  if (said.slots) vars.slots = said.slots.map(p => t("slot." + p, { _fallback: planeName(p) }))
    .join(", ");
  const text = said.key ? t(said.key, vars) : said.text || "";
  // a head refused for the box's set-up: "Head not measured" large, and under it, smaller,
  // why and what to ask for (app.css .detail). In one sentence at the headline's size it
  // took six lines of a 360x640 phone and pushed the exam's card below the fold (a walk).
  const detail = typeof said.detail === "string" ? t(said.detail, { _fallback: "" }) : "";
  if (!detail) { el.textContent = text; return; }
  if (el.querySelector(".detail") && el.textContent === `${text} ${detail}`) return; // as drawn
  const part = (cls, words) => {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = words;
    return span;
  };
  el.textContent = "";
  el.append(part("head", text), " ", part("detail", detail));
}

// ---------------------------------------------------------------- state

function setBanner(text, bad, extra) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = (bad ? "bad" : "") + (extra ? " " + extra : "");
}

function chip(id, text, cls, title) {
  const el = $(id);
  el.textContent = text || "";
  el.className = "chip" + (cls ? " " + cls : "");
  el.title = title || "";
}

// The uplink chip: [text, class, title]. Connected is not delivered: an exam the broker
// took may still be lost before the district stores it, so once the district has sent a
// receipt (wire/receipt.py) the chip says whether every exam is confirmed there. A
// district on an older collector sends none: then "connected" is all the box knows.
// Its counts are her exams and their corrections, never the box's health messages; one
// gone from the box without its receipt (sent before the district's receipts began) stays
// not confirmed until its receipt comes. The title gives a supervisor the exact counts.
// Exams the broker refused (the box not authorised for its topic: its credentials or the
// ACL set up wrong) are never sent again by themselves: whatever else is true, the chip
// says so in red, for her to call the installer, and its title names his fix.
function uplinkChip(up) {
  if (!up) return [""];
  const queued = up.pending ?? 0, sent = up.awaiting_receipt ?? 0,
    gone = up.unconfirmed ?? 0, old = up.unconfirmed_old ?? 0, waiting = sent + gone,
    refused = up.rejected ?? 0;
  const title = (up.receipts_seen
    ? t("status.uplink_counts", { q: queued, w: sent, u: gone }) +
      (old ? ` · ${t("status.uplink_counts_old", { o: old })}` : "")
    : t("status.uplink_counts_no_receipts", { q: queued })) +
    (refused ? ` · ${t("status.uplink_counts_refused", { r: refused })}` : "");
  if (refused > 0) return [t("status.uplink_refused", { n: refused }), "bad", title];
  if (!up.enabled) return [t("status.uplink_off", { n: queued }), "", title];
  if (!up.connected) return [t("status.offline", { n: queued }), "warn", title];
  if (queued > 0) return [t("status.uplink_sending", { n: queued }), "", title];
  if (!up.receipts_seen) return [t("status.uplink_ok"), "ok", title];
  if (waiting > 0) return [t("status.uplink_awaiting", { n: waiting }), "", title];
  // exams sent over a week ago with no receipt (most likely to a collector from before
  // receipts): no longer waited for, and not claimed as at the district either
  if (old > 0) return [t("status.uplink_confirmed_recent"), "ok", title];
  return [t("status.uplink_confirmed"), "ok", title];
}
stats.uplinkChip = uplinkChip; // the tests fit its longest words on a phone's strip

function renderState(s) {
  state = s;
  stats.lastState = s;
  const st = s.status || {};
  const signalText = {
    ok: t("status.live"), no_signal: t("status.no_signal"), loading: t("status.loading"),
    ended: t("status.ended"),
  }[st.signal] || "";
  chip("#signal", signalText, st.signal === "ok" ? "ok" : st.signal === "no_signal" ? "bad" : "warn");
  chip("#fps", st.fps != null && st.signal === "ok" ? t("status.fps", { fps: st.fps.toFixed(1) }) : "");
  chip("#uplink", ...uplinkChip(st.uplink));
  if (st.disk_free_mb != null) {
    const gb = st.disk_free_mb / 1000;
    chip("#disk", t("status.disk", { gb: gb >= 10 ? gb.toFixed(0) : gb.toFixed(1) }), gb < 1 ? "bad" : "");
  } else chip("#disk", "");
  chip("#temp", st.temperature_c != null ? t("status.temp", { c: st.temperature_c.toFixed(0) }) : "",
    st.temperature_c >= 80 ? "bad" : "");
  const models = Object.entries(st.models || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  chip("#models", models, "quiet");
  $("#models-foot").textContent = models; // a phone's: not in its sticky strip (app.css)
  // an exam held through a lost signal says so, and for how long (edge/exam/session.py
  // ExamSettings.signal_hold_s): the cable plugged back in, her exam goes on
  if (st.signal === "no_signal" && st.exam_kept_s != null) {
    setBanner(t("status.no_signal_kept", { s: st.exam_kept_s }), true);
  } else if (st.signal === "no_signal") setBanner(t("status.no_signal_banner"), true);
  else if (st.signal === "loading") setBanner(t("status.loading_banner"), false);
  else if (st.signal === "ended") setBanner(t("status.ended_banner"), false, "quiet");
  else setBanner("", false);
  // an image that is not live any more is greyed, so nobody reads it as the scan now
  $("#stage").classList.toggle("stale", st.signal !== "ok");
  renderHeatmapControl(st);
  renderClock(st.clock);
  renderExam(s);
  renderScreening(s.screening);
  renderEarlier(s);
  if (shownHeader) renderTags(shownHeader); // the exam's figures may have changed
  if (shownHeader || st.signal !== "ok") renderInstruction(shownHeader);
}

// The box's clock against this phone's (network time): a box offline for weeks without its
// RTC battery dates every exam weeks early. Said at once, and set from here where it may.
let clockNote = null; // {text, until}: the answer to the last tap on Set, for a while

function clockSpan(ms) {
  const hours = Math.abs(ms) / 3600e3;
  return hours >= 48 ? t("clock.days", { n: Math.round(hours / 24) })
    : t("clock.hours", { n: Math.max(1, Math.round(hours)) });
}

function renderClock(c) {
  const card = $("#clock");
  const now = Date.now();
  const off = c && typeof c.box_ms === "number" ? now - c.box_ms : 0;
  // a box kept by network time is right; a phone out of the years a clock can be
  // (edge/web/clock.py) is the one that is wrong: neither is said
  const wrong = Boolean(c) && !c.synced && now >= c.phone_ms[0] && now < c.phone_ms[1]
    && Math.abs(off) >= c.off_s * 1000;
  if (clockNote && performance.now() > clockNote.until) clockNote = null;
  card.hidden = !wrong && !clockNote;
  if (card.hidden) return;
  $("#clock-text").textContent = wrong
    ? t(off > 0 ? "clock.behind" : "clock.ahead", { span: clockSpan(off) }) : "";
  $("#clock-text").hidden = !wrong;
  // forward only, and no further than a tap may move it: the move the box would make
  const far = Boolean(c) && (off > c.max_move_s * 1000
    || (c.not_after_ms != null && now >= c.not_after_ms));
  const settable = wrong && c.settable && off > 0 && !far;
  $("#clock-set").hidden = !settable;
  if (settable) {
    $("#clock-set").textContent = t("clock.set", {
      when: new Date(now).toLocaleString(catalog._lang || undefined,
        { dateStyle: "medium", timeStyle: "short" }),
    });
  }
  $("#clock-note").textContent = clockNote ? clockNote.text
    : settable ? "" : t(far ? "clock.too_far" : "clock.ask_district");
}

const CLOCK_REFUSALS = {
  "clock-near": "clock.already_right", "clock-ahead": "clock.not_back",
  "clock-far": "clock.too_far", "clock-synced": "clock.synced", "clock-denied": "clock.not_allowed",
  "clock-starting": "clock.starting",
};

async function setClock() {
  $("#clock-set").disabled = true;
  let key = "clock.failed";
  let text = null;
  try {
    const res = await api("/api/clock", { phone_ms: Date.now() });
    key = res.ok ? "clock.set_done" : CLOCK_REFUSALS[res.headers.get("X-Sonoedge-Refused")];
    if (!key) {
      const said = unnamedRefusal(res, "clock.refused_origin", "clock.failed_status");
      text = t(said.key, said.vars);
    }
  } catch (e) {
    if (e.message === "401") return; // the login screen says it
  } finally {
    $("#clock-set").disabled = false;
  }
  clockNote = { text: text || t(key), until: performance.now() + 10000 };
  try {
    const st = await fetch("/api/state", { credentials: "same-origin" });
    if (st.ok) renderState(await st.json());
  } catch (e) { /* the next state over the socket redraws the card */ }
}

function renderHeatmapControl(st) {
  const toggle = $("#heatmap-toggle");
  const available = !!st.heatmap_available;
  toggle.disabled = !available;
  if (!available && toggle.checked) { toggle.checked = false; setHeatmap(false); }
  const plane = st.models && Object.entries(st.models).find(([k]) => k.startsWith("plane"));
  $("#heatmap-note").textContent = available ? "" :
    t("controls.heatmap_unavailable", { model: plane ? `${plane[0]} ${plane[1]}` : "" });
}

function renderExam(s) {
  const exam = s.exam;
  const protocol = s.protocol || {};
  const pname = exam ? exam.protocol : protocol.name;
  const ptitle = exam ? exam.title : (protocol.title || t("exam.title"));
  $("#exam-title").textContent = pname ? t("protocol." + pname, { _fallback: ptitle }) : ptitle;
  const progress = $("#progress");
  if (exam) {
    progress.textContent = t("exam.progress", { n: exam.captured, m: exam.required });
    progress.className = progressBadge(exam);
  } else { progress.textContent = ""; progress.className = "badge"; }
  const st = s.status || {};
  const live = st.phase === "running";
  const running = !!(exam && exam.running);
  const held = !!st.holding; // Stop has held the next exam back until Start
  let text, hint = "";
  if (!exam) text = t("exam.waiting");
  else if (running) {
    text = t("exam.running", { n: exam.frames });
    // every slot captured: say the next step, or she scans on not knowing she may stop
    hint = exam.required > 0 && exam.captured >= exam.required ? t("exam.hint_complete")
      : t("exam.hint_running");
  } else if ((exam.ended_by || "command") === "command" && !held) {
    text = t("exam.ended_released"); // stopped, and Start pressed (or the probe lifted)
    if (live) hint = t("exam.hint_next");
  } else {
    text = t("exam.ended_" + (exam.ended_by || "command"), { _fallback: t("exam.ended_command") });
    if (live && !held) hint = t("exam.hint_next");
  }
  if (Date.now() < examFailedUntil) hint = t("exam.command_failed");
  $("#exam-state").textContent = text;
  const hintEl = $("#exam-hint"); // polite live region: said again only when it changes
  if (hintEl.textContent !== hint) hintEl.textContent = hint;
  // the exam's result stays readable in the card after the exam (the overlay is greyed)
  const bio = examBiometry();
  const [ga, range] = gaLine(bio);
  const why = bio ? "" : unmeasuredWhy();
  const fig = $("#exam-bio");
  // the BPD she copies says how it was measured: outer to outer, not the outer-to-inner of
  // Hadlock's BPD charts, on which it reads a few days old (a midwife's walk)
  // the age give or take what a scan at that age can tell (ACOG's redating threshold,
  // edge/exam/screening.py): "GA 19w 4d" alone read as exact to the day
  const plusMinus = withTolerance(ga, state && state.screening);
  fig.textContent = !bio ? why : [t("overlay.hc", { mm: bio.hc_mm.toFixed(0) }),
    t("exam.bpd", { mm: bio.bpd_mm.toFixed(0) }),
    ga + plusMinus + (range ? ` (${rangeOf(range)})` : "")]
    .filter(Boolean).join(" · ");
  fig.classList.toggle("flag", !!why);
  // heads measured before any frame showed the whole fan: a stretched picture would not
  // have been seen (edge/models/fan.py), and the exam says so rather than pass as checked
  const shape = $("#exam-shape");
  const unchecked = !!bio && bio.shape === "unchecked";
  shape.hidden = !unchecked;
  shape.textContent = unchecked ? t("exam.shape_unchecked") : "";
  // Start has one job: letting the next exam begin once Stop has held it back (exams start
  // by themselves on the probe's image). During an exam it is off, and says why beneath:
  // a second tap there (the first seemed not to take) used to end the exam and begin
  // another. Stop ends an exam. A tap turns both off until the state shows it taken.
  const sent = examCommand;
  if (sent && (Date.now() > sent.until || (sent.action === "stop" && !running) ||
      (sent.action === "start" && !held))) examCommand = null;
  $("#start").disabled = !live || running || !held || !!examCommand;
  $("#stop").disabled = !live || !running || !!examCommand;
  // one strong button, the next step; Start drawn as one only when it can be tapped: after
  // a recording ended (or between exams that start by themselves) a filled Start that did
  // nothing looked like the next step
  $("#start").classList.toggle("later", $("#start").disabled);
  $("#stop").classList.toggle("now", running);

  const list = $("#checklist");
  const rows = exam ? exam.checklist : [];
  list.textContent = "";
  for (const row of rows) {
    const li = document.createElement("li");
    li.className = row.captured ? "captured" : "";
    li.dataset.plane = row.plane;
    const best = row.best;
    if (best && best.thumbnail) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = planeName(row.plane);
      const parts = best.thumbnail.split("/");
      img.src = `/api/thumb/${encodeURIComponent(parts[1])}/${encodeURIComponent(parts[2])}?v=${best.frame}`;
      li.appendChild(img);
    } else {
      const empty = document.createElement("div");
      empty.className = "thumb empty";
      empty.textContent = t("exam.not_found");
      li.appendChild(empty);
    }
    const name = document.createElement("div");
    name.className = "name";
    const slot = t("slot." + row.plane, { _fallback: planeName(row.plane) });
    // a head slot captured while the box refuses every head for its set-up (the card says
    // why): a plain tick had her take the exam as measured
    name.textContent = !row.captured ? slot : "✓ " + (why && headSlot(row)
      ? t("exam.slot_not_measured", { slot }) : slot);
    li.appendChild(name);
    const q = document.createElement("div");
    q.className = "q";
    if (best && best.quality != null) {
      const bar = document.createElement("span");
      bar.className = "qbar";
      const fill = document.createElement("i");
      fill.style.width = `${Math.round(best.quality * 100)}%`;
      bar.appendChild(fill);
      q.appendChild(bar);
      const pct = document.createElement("span");
      pct.textContent = `${Math.round(best.quality * 100)}%`;
      q.appendChild(pct);
    } else {
      q.textContent = best ? "" : "—";
    }
    li.appendChild(q);
    if (!row.captured && !running && typeof row.seen === "boolean") {
      // the exam has ended: never found (where to look) or found, never clear enough
      // (the image: the advice beneath says what to change)
      const miss = document.createElement("div");
      miss.className = "miss";
      miss.textContent = t(row.seen ? "exam.missed_seen" : "exam.missed_not_found",
        { slot: t("slot." + row.plane, { _fallback: planeName(row.plane) }) });
      li.appendChild(miss);
    }
    if (!row.captured && best && best.advice) {
      // what would make this slot's best frame good enough, in the page's language
      const advice = document.createElement("div");
      advice.className = "advice";
      advice.textContent = best.advice.key
        ? t(best.advice.key, { _fallback: best.advice.message }) : best.advice.message;
      li.appendChild(advice);
    }
    list.appendChild(li);
  }
  // the tone: a plane newly captured within the same exam
  if (exam) {
    const prev = lastCaptured;
    if (prev && prev.exam_id === exam.exam_id && exam.captured > prev.n) beep();
    lastCaptured = { exam_id: exam.exam_id, n: exam.captured };
  }
  drawCardWithdrawal(); // none once the next exam runs on the card
}

// The cephalic index to one decimal, on the side of its bound the flag says: the device
// decides the flag on the unrounded index, so 69.96 is "low" and must not read "70.0,
// below the usual 70-87" (to the nearest whole it read "70, below 70").
function ciShown(ci) {
  let v = Math.round(ci.ci * 10) / 10;
  if (ci.flag === "low" && v >= ci.low) v = ci.low - 0.1;
  if (ci.flag === "high" && v <= ci.high) v = ci.high + 0.1;
  return v.toFixed(1).replace(".", t("_decimal_mark", { _fallback: "." })); // 67,8 in French
}

// Which woman's exam the dates go to, in words: the dates are kept with that exam only
// (POST /api/lmp names it, and the device refuses them if it is no longer the one shown).
function lmpTarget() {
  const exam = state && state.exam;
  if (!exam) return { examId: null, text: t("screen.lmp_for_next") };
  const when = examWhen(exam.started_ts);
  return { examId: exam.exam_id,
    text: exam.running ? t("screen.lmp_for_running", { when }) : t("screen.lmp_for_ended", { when }) };
}

let lmpFieldFor; // the exam id the date field's value belongs to (null: the next exam)
let lmpEdited = false; // she has changed the field since it last showed the device's dates
let lmpDroppedAt = -1e9; // when dates she had typed were dropped: their exam left the card

function dateInWords(iso) { // "2026-07-05" -> "5 July 2026" in the page's language
  try {
    return new Intl.DateTimeFormat(catalog._lang === "fr" ? "fr-FR" : "en-GB",
      { day: "numeric", month: "long", year: "numeric", timeZone: "UTC" })
      .format(new Date(iso + "T00:00:00Z"));
  } catch (e) { return iso; }
}

function renderScreening(sc) {
  const target = lmpTarget();
  if ($("#lmp-for").textContent !== target.text) $("#lmp-for").textContent = target.text;
  const field = $("#lmp");
  if (document.activeElement !== field && (!lmpEdited || lmpFieldFor !== target.examId)) {
    // the dates the device keeps for the exam on the card, an empty field for none (dates
    // cleared here or on another tablet): never the last woman's, never ones since
    // cleared. A field she is typing in stays hers, with the exam she began typing for
    // (Set sends that exam: the device refuses the dates if it has another now); so do
    // dates she typed and has not sent, or the device refused (to put right), while their
    // exam is on the card. Once another exam is, they are dropped: not the next woman's.
    if (lmpEdited) lmpDroppedAt = performance.now();
    const value = (sc && sc.lmp) || "";
    if (field.value !== value) field.value = value;
    lmpFieldFor = target.examId;
    lmpEdited = false;
  }
  // the date picker offers only the days the device accepts: today and the weeks before
  const weeks = sc && sc.lmp_max_weeks;
  const earliest = weeks ? today(-7 * weeks) : null;
  if (earliest && field.min !== earliest) { field.max = today(); field.min = earliest; }
  // a refusal speaks of the exam shown beside it: another exam's card does not carry it
  if (flagsError && target.examId !== flagsErrorFor) flagsError = null;
  const list = $("#flags");
  list.textContent = "";
  const add = (text, flagged) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (flagged) li.className = "flag";
    list.appendChild(li);
  };
  // why the last dates were not kept, until she sends them again (the state comes every
  // second: an error shown once would be gone before she read it)
  if (flagsError) add(flagsError.key ? t(flagsError.key, flagsError.vars) : flagsError.text, true);
  // the last period kept, in words: the date field shows the phone's order (07/05/2026 is
  // 5 July on one tablet and 7 May read the other way), and nothing repeated it
  const words = $("#lmp-words");
  const said = sc && sc.lmp ? t("screen.lmp_words", { date: dateInWords(sc.lmp) }) : "";
  if (words.textContent !== said) words.textContent = said;
  words.hidden = !said;
  if (!sc) return;
  const ci = sc.cephalic_index;
  if (ci) {
    const key = ci.flag ? `screen.ci_${ci.flag}` : "screen.ci_ok";
    add(t(key, { ci: ciShown(ci), low: ci.low, high: ci.high }), !!ci.flag);
  } else add(t("screen.no_head"), false);
  // the head frames disagree: a depth changed (a box whose calibration holds for one
  // depth; one that reads the depth on every frame is never told to set it back), or
  // another head
  const hf = sc.hc_frames;
  const hfKey = hf && hf.depth_read ? "screen.hc_frames_disagree_ruler" : "screen.hc_frames_disagree";
  if (hf && hf.flag) add(t(hfKey, { low: hf.p10_mm.toFixed(0), high: hf.p90_mm.toFixed(0) }), true);
  const hd = sc.hc_dates;
  if (!hd) add(t("screen.enter_lmp"), false);
  else if (hd.status === "dates_out_of_range") {
    // no expected HC at such dates, but a head far older (or younger) than them says the
    // dates are wrong: a 10-week period and a 19-week head read "no reference" and no more
    const vars = { ga: weeksDays(hd.ga_dates_weeks), hc: hd.hc_mm != null ? hd.hc_mm.toFixed(0) : "",
      ga_hc: hd.ga_hc_weeks != null ? weeksDays(hd.ga_hc_weeks) : "" };
    const key = !hd.flag ? "screen.dates_out_of_range"
      : `screen.dates_out_of_range_${hd.flag}${hd.ga_hc_weeks == null ? "_beyond" : ""}`;
    add(t(key, vars), !!hd.flag);
  }
  else if (hd.status === "no_hc") add(t("screen.expected_hc", { ga: weeksDays(hd.ga_dates_weeks), mm: hd.hc_expected_mm.toFixed(0) }), false);
  else {
    const vars = { ga: weeksDays(hd.ga_dates_weeks), mm: hd.hc_expected_mm.toFixed(0), hc: hd.hc_mm.toFixed(0),
      days: Math.abs(hd.difference_days ?? 0), tol: hd.tolerance_days };
    // an HC outside Hadlock's 14-42 weeks has no age, so no difference in days to give:
    // it is smaller (or larger) than the formula covers at any age
    const beyond = hd.difference_days == null;
    const key = hd.flag === "small" ? (beyond ? "screen.hc_small_beyond" : "screen.hc_small")
      : hd.flag === "large" ? (beyond ? "screen.hc_large_beyond" : "screen.hc_large") : "screen.hc_ok";
    add(t(key, vars), !!hd.flag);
  }
}

// The device's answer to dates it did not keep, shown in the card: a catalog key where the
// page knows the refusal, so it is said in the midwife's language, else the device's words.
let flagsError = null;
let flagsErrorFor; // the exam id shown beside that answer (null: none yet)

async function lmpRefusal(res, sent) {
  const text = await res.text();
  if (res.status === 409) return { key: "screen.lmp_refused_changed" };
  if (res.status === 503) return { key: "screen.lmp_busy" };  // kept none: nothing pushed out
  // the tablet's own date out of the years a phone's can be (edge/exam/screening.py
  // PhoneDateError): a clock never set (1970), not the period she typed
  if (res.status === 400 && res.headers.get("X-Sonoedge-Refused") === "phone-date") {
    return { key: "screen.lmp_refused_phone_date", vars: { today: dateInWords(sent.today) } };
  }
  const weeks = state && state.screening && state.screening.lmp_max_weeks;
  // the page sends only its date field's YYYY-MM-DD: the device refuses it for its range
  if (res.status === 400 && weeks) return { key: "screen.lmp_refused_range", vars: { weeks } };
  if (res.status === 400 && isDevicesLine(res, text)) return { text };
  return unnamedRefusal(res, "screen.lmp_refused_origin", "screen.lmp_failed_status");
}

// The device's own line (plain text, short), never a proxy's error page.
function isDevicesLine(res, text) {
  return (res.headers.get("Content-Type") || "").startsWith("text/plain") && text.length <= 300;
}

// A refusal the page has no words of its own for, in the page's language: a page opened at
// another address than the box's own (a proxy, a rewritten name), whose changes the device
// refuses (403), or any other error, by its status.
function unnamedRefusal(res, originKey, statusKey) {
  if (res.status === 403) return { key: originKey };
  return { key: statusKey, vars: { status: res.status } };
}

// A refusal often means the page was behind the device (another exam began as she typed):
// the page looks again first, so the answer stands beside the exam the device has now,
// and goes once that exam gives way to another.
async function setFlagsError(error) {
  // the card is drawn again from what the device keeps now (dates kept, cleared or
  // refused), never from the state before she tapped Set
  try {
    const res = await fetch("/api/state", { credentials: "same-origin" });
    if (res.ok) renderState(await res.json());
  } catch (e) { /* the next state over the socket redraws the card */ }
  flagsError = error;
  flagsErrorFor = lmpTarget().examId;
  if (state) renderScreening(state.screening);
}

function beep() {
  if (!$("#sound-toggle").checked) return;
  try {
    audio = audio || new AudioContext();
    const now = audio.currentTime;
    for (const [f, start] of [[880, 0], [1320, 0.14]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, now + start);
      gain.gain.exponentialRampToValueAtTime(0.4, now + start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + start + 0.12);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + start); osc.stop(now + start + 0.13);
    }
    stats.beeps = (stats.beeps || 0) + 1;
  } catch (e) { /* no audio device: the checklist still shows it */ }
}

function setHeatmap(on) {
  heatmapOn = on;
  localStorage.setItem("sonoedge.heatmap", on ? "1" : "0");
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ heatmap: on }));
  if (shownHeader) drawOverlay(shownHeader);
}

function examAction(action) {
  examCommand = { action, until: Date.now() + 3000 };
  $("#start").disabled = true; // taken: no second tap while the box applies it
  $("#stop").disabled = true;
  // a tap the box did not take is said, not dropped: a Stop lost on the way left her
  // scanning with the exam still running (a midwife's walk)
  const failed = () => {
    examCommand = null;
    examFailedUntil = Date.now() + 10000;
    if (state) renderExam(state);
  };
  api("/api/exam", { action })
    .then((res) => { if (!res.ok) failed(); })
    .catch((e) => { if (e.message !== "401") failed(); });
}

// ---------------------------------------------------------------- earlier exams

// The finished exams the box keeps (GET /api/exams, from its journal), so the figures and
// images of the woman before stay at hand once the next exam has begun. Loaded with the
// first state, and again whenever an exam starts or ends; a row opens the exam's printable
// report (GET /report/<id>) in a new tab, so the live page stays as it is.
const earlier = { exams: null, readable: true, key: undefined, lang: null, busy: false, again: false, loads: 0 };
stats.earlier = earlier; // the tests see when the list was loaded

function renderEarlier(s) {
  const exam = s.exam;
  const key = exam ? `${exam.exam_id}:${exam.running ? "running" : exam.ended_by || "ended"}` : "";
  if (key !== earlier.key) { earlier.key = key; loadEarlier(); }
  else if (earlier.exams && earlier.lang !== (catalog._lang || "en")) drawEarlier();
}

async function loadEarlier() {
  if (earlier.busy) { earlier.again = true; return; }
  earlier.busy = true;
  try {
    const res = await fetch("/api/exams?limit=20", { credentials: "same-origin" });
    if (res.status === 401) { earlier.key = undefined; showLogin(t("login.expired")); return; }
    if (res.ok) {
      const body = await res.json();
      earlier.exams = body.exams || [];
      earlier.readable = body.readable !== false;
      earlier.loads += 1;
      drawEarlier();
    }
  } catch (e) {
    earlier.key = undefined; // the box is restarting: the next state asks again
  } finally {
    earlier.busy = false;
    if (earlier.again) { earlier.again = false; loadEarlier(); }
  }
}

function examWhen(ts) { // "Today 14:05", or the day and the time
  if (ts == null) return "";
  const lang = catalog._lang || "en";
  const when = new Date(ts * 1000);
  const time = when.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === new Date().toDateString()) return t("history.today", { time });
  return `${when.toLocaleDateString(lang, { day: "numeric", month: "short" })} ${time}`;
}

function drawEarlier() {
  earlier.lang = catalog._lang || "en";
  const exams = earlier.exams || [];
  $("#earlier-note").textContent = !earlier.readable ? t("history.unreadable")
    : exams.length ? "" : t("history.empty");
  const list = $("#earlier-list");
  list.textContent = "";
  const part = (cls, text) => {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  };
  for (const exam of exams) {
    const a = document.createElement("a");
    a.className = "earlier-row";
    a.href = `/report/${encodeURIComponent(exam.exam_id)}?lang=${encodeURIComponent(earlier.lang)}`;
    a.target = "_blank";
    a.rel = "noopener";
    a.dataset.exam = exam.exam_id;
    const title = exam.protocol ? t("protocol." + exam.protocol, { _fallback: exam.title || exam.protocol })
      : exam.title || "";
    const bio = exam.biometry;
    let figures = t("history.no_hc");
    if (bio && bio.hc_mm != null) { // as the exam card gives them
      const [ga, range] = gaLine(bio);
      // give or take what a scan at that age can tell, as the card and the report say it
      const plusMinus = withTolerance(bio.ga_weeks != null && ga, exam.screening);
      figures = [t("overlay.hc", { mm: bio.hc_mm.toFixed(0) }),
        ga + plusMinus + (range ? ` (${rangeOf(range)})` : "")]
        .filter(Boolean).join(" · ");
    }
    a.append(part("when", examWhen(exam.started_ts)), part("what", title),
      part(progressBadge(exam), t("exam.progress", { n: exam.captured, m: exam.required })),
      part("fig", figures));
    const li = document.createElement("li");
    const withdrawn = exam.withdrawal && exam.withdrawal.withdrawn;
    if (withdrawn) { // still listed, plainly marked: the district counts it in no figure
      li.className = "withdrawn";
      a.append(part("withdrawn-mark", t("withdraw.marked",
        { reason: t("withdraw.reason_" + exam.withdrawal.reason) })));
    }
    li.append(a, withdrawControls(exam, (key) => t(key), loadEarlier));
    list.appendChild(li);
  }
  drawCardWithdrawal();
}

// The just-ended exam's card offers the withdrawal its row below offers (withdraw.js): a
// midwife who sees at the end that it was a test scan, or the wrong woman, looks at that
// card first. What the card says is the list's (the journal's, GET /api/exams), so the
// card, the list and the report say one thing, and a change on either is drawn on both
// (done: the list is loaded again). Nothing before the list has the exam (the loop
// journals it before the state says it ended), nor while it runs (the box refuses).
// Drawn again only when what it shows changes: the state comes every second, and a
// redraw would close the reasons she has open.
let cardWithdrawal = null; // what the card's controls show: "exam:withdrawn:reason:lang"

function drawCardWithdrawal() {
  const exam = state && state.exam;
  const kept = exam && !exam.running && earlier.exams
    ? earlier.exams.find((e) => e.exam_id === exam.exam_id) || null : null;
  const w = (kept && kept.withdrawal) || {};
  const withdrawn = w.withdrawn === true;
  const key = kept ? [kept.exam_id, withdrawn, w.reason, catalog._lang].join(":") : "";
  if (key === cardWithdrawal) return;
  cardWithdrawal = key;
  const mark = $("#exam-withdrawn");
  mark.textContent = withdrawn ? t("withdraw.marked", { reason: t("withdraw.reason_" + w.reason) }) : "";
  mark.hidden = !withdrawn;
  const place = $("#exam-withdraw");
  place.textContent = "";
  if (kept) place.append(withdrawControls(kept, (k) => t(k), loadEarlier));
}

// ---------------------------------------------------------------- wiring

function today(plusDays = 0) { // the phone's date, as YYYY-MM-DD
  const d = new Date();
  d.setDate(d.getDate() + plusDays);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

async function boot() {
  await loadCatalog(pickLanguage());
  $("#login-form").addEventListener("submit", login);
  for (const sel of document.querySelectorAll("select.lang")) {
    sel.addEventListener("change", (ev) => {
      localStorage.setItem("sonoedge.lang", ev.target.value);
      loadCatalog(ev.target.value);
    });
  }
  $("#start").addEventListener("click", () => examAction("start"));
  $("#stop").addEventListener("click", () => examAction("stop"));
  $("#logout").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
    showLogin("");
  });
  $("#heatmap-toggle").addEventListener("change", (ev) => setHeatmap(ev.target.checked));
  $("#clock-set").addEventListener("click", setClock);
  $("#sound-toggle").checked = localStorage.getItem("sonoedge.sound") !== "0";
  $("#sound-toggle").addEventListener("change", (ev) => {
    localStorage.setItem("sonoedge.sound", ev.target.checked ? "1" : "0");
  });
  // she starts typing for the exam on the card then: that exam is the one her dates go to
  const typed = () => { if (!lmpEdited) { lmpEdited = true; lmpFieldFor = lmpTarget().examId; } };
  $("#lmp").addEventListener("input", typed);
  $("#lmp").addEventListener("change", typed);
  $("#lmp-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!lmpEdited && performance.now() - lmpDroppedAt < 2000) {
      // what she typed was dropped as she tapped Set (another exam came on the card):
      // the field now holds that exam's dates, which she did not mean to send
      setFlagsError({ key: "screen.lmp_refused_changed" });
      return;
    }
    const lmp = $("#lmp").value || null;
    // the exam she typed them for, not the one on the card now: where another exam began
    // as she typed, the device answers 409 and keeps nothing (never the last woman's
    // dates on the next woman's exam)
    const examId = lmpFieldFor !== undefined ? lmpFieldFor : lmpTarget().examId;
    const body = { lmp, today: today(), exam_id: examId };
    try {
      const res = await api("/api/lmp", body);
      // kept: the field shows the device's dates again; refused: hers stay to put right,
      // while their exam is on the card
      if (res.ok) lmpEdited = false;
      setFlagsError(res.ok ? null : await lmpRefusal(res, body));
    } catch (e) {
      // 401: the login screen says it; else the box did not answer (out of reach, or
      // restarting): said, never a silent tap
      if (e.message !== "401") setFlagsError({ key: "report.lmp_failed" });
    }
  });
  window.addEventListener("resize", () => { if (shownHeader) drawOverlay(shownHeader); });
  keepFieldsInSight($("#status"), "#app input:not([type=checkbox]):not([type=radio])"); // in_sight.js: fields a keyboard opens for
  const res = await fetch("/api/state", { credentials: "same-origin" });
  if (res.ok) { renderState(await res.json()); showApp(); } else showLogin("");
}

boot();
