// sonoedge: the exam report's own script (the page's Content-Security-Policy allows no
// inline script). Print; the exam's date (in words) and times in the viewer's time zone;
// the date field and its label clear of the bar on a phone; a thumbnail removed since the
// report was made says so; the last period entered or changed for this exam; withdrawing
// the exam, or undoing that (withdraw.js); and, without a session, the PIN, then the report.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const lang = document.documentElement.lang || "en";

  const print = $("#print");
  if (print) print.addEventListener("click", () => window.print());

  // A date in words, as the midwife's page says the last period kept (app.js dateInWords)
  // and the box writes every other date here: "5 July 2026", "5 juillet 2026". Never the
  // tablet's own order: 07/05/2026 is 5 July to one midwife and 7 May to another.
  const inWords = (when, timeZone) => new Intl.DateTimeFormat(lang === "fr" ? "fr-FR" : "en-GB",
    { day: "numeric", month: "long", year: "numeric", timeZone }).format(when);

  // The box writes UTC; the midwife reads her own clock's time (the tablet's zone).
  for (const el of document.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(when.getTime())) continue;
    try {
      el.textContent = el.dataset.part === "date"
        ? inWords(when, undefined)
        : when.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
    } catch (e) { /* an old browser: the UTC text stays */ }
  }

  // The bar (Back, Print) stays at the top: a field with focus is kept clear of it and of
  // a phone's keyboard, as on the midwife's page (in_sight.js).
  keepFieldsInSight($("nav.bar"), "main input");

  // A thumbnail the quota removed after the report was made: a 404, said in words.
  for (const img of document.querySelectorAll("img.thumb")) {
    const gone = () => {
      const div = document.createElement("div");
      div.className = "thumb empty";
      div.textContent = img.dataset.gone || "";
      img.replaceWith(div);
    };
    img.addEventListener("error", gone);
    if (img.complete && img.naturalWidth === 0) gone();
  }

  // The last period for this exam, from its report: sent with the tablet's own date (the
  // box may have no clock); the report is drawn again once the box has kept them.
  const dates = $("#report-lmp");
  if (dates) {
    const error = $("#report-lmp-error");
    const today = () => {
      const now = new Date();
      return new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 10);
    };
    const dayInWords = (iso) => { // "2026-07-05", a day without a time zone
      try { return inWords(new Date(`${iso}T00:00:00Z`), "UTC"); } catch (e) { return iso; }
    };
    const field = $("#report-lmp-date");
    field.max = today();
    const send = async (lmp) => {
      for (const b of dates.querySelectorAll("button")) b.disabled = true;
      error.textContent = "";
      try {
        const res = await fetch(`/api/exams/${encodeURIComponent(dates.dataset.exam)}/lmp`, {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ lmp, today: today() }), credentials: "same-origin",
        });
        if (res.ok) {
          let body = {};
          try { body = await res.json(); } catch (e) { body = {}; }
          // the box had not journaled them in time (busy, or stopping): said, not assumed
          if (body.kept === false) { error.textContent = dates.dataset.pending; return; }
          location.reload();
          return;
        }
        // each refusal the device names, in the report's language; the status otherwise
        // (never a proxy's error page, nor the device's English line)
        const byStatus = { 400: dates.dataset.refused, 401: dates.dataset.session,
                           403: dates.dataset.origin, 404: dates.dataset.gone,
                           409: dates.dataset.running, 503: dates.dataset.busy };
        // a 400 for the tablet's own date (a clock never set: 1970) is not the period's range
        error.textContent = res.status === 400
            && res.headers.get("X-Sonoedge-Refused") === "phone-date"
          ? (dates.dataset.phoneDate || "").replace("{today}", dayInWords(today()))
          : byStatus[res.status]
            || (dates.dataset.failedStatus || "").replace("{status}", res.status);
      } catch (e) {
        error.textContent = dates.dataset.failed;
      } finally {
        for (const b of dates.querySelectorAll("button")) b.disabled = false;
      }
    };
    dates.addEventListener("submit", (ev) => { ev.preventDefault(); if (field.value) send(field.value); });
    const clear = $("#lmp-clear");
    if (clear) clear.addEventListener("click", () => send(null));
  }

  // Withdraw this exam (a test scan, the wrong woman ...), or undo that: withdraw.js, as
  // on the earlier exams' list; the report is drawn again once the box has kept it.
  const place = $("#report-withdraw");
  if (place && typeof withdrawControls === "function") {
    let words = {};
    let withdrawal = null;
    try { words = JSON.parse(place.dataset.words || "{}"); } catch (e) { words = {}; }
    try { withdrawal = JSON.parse(place.dataset.withdrawal || "null"); } catch (e) { withdrawal = null; }
    place.append(withdrawControls({ exam_id: place.dataset.exam, withdrawal },
      (key) => words[key] || key, () => location.reload()));
  }

  const form = $("#report-login");
  if (!form) return;
  const error = $("#login-error");
  const say = (key, wait) => { error.textContent = (error.dataset[key] || "").replace("{s}", wait); };
  $("#pin").focus();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#unlock").disabled = true;
    try {
      const res = await fetch("/api/login", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ pin: $("#pin").value }), credentials: "same-origin",
      });
      if (res.ok) { location.reload(); return; }
      let body = {};
      try { body = await res.json(); } catch (e) { body = {}; }
      const wait = body.retry_after_s || 0;
      if (res.status === 429) say(body.error === "busy" ? "busy" : "braked", wait);
      else say(wait > 0 ? "wrong_wait" : "wrong", wait);
    } catch (e) {
      say("unreachable", 0);
    } finally {
      $("#unlock").disabled = false;
      $("#pin").value = "";
    }
  });
})();
