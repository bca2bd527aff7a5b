// sonoedge: the exam report's own script (the page's Content-Security-Policy allows no
// inline script). Print; times in the viewer's time zone; a thumbnail removed since the
// report was made says so; and, without a session, the PIN, then the report.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const lang = document.documentElement.lang || "en";

  const print = $("#print");
  if (print) print.addEventListener("click", () => window.print());

  // The box writes UTC; the midwife reads her own clock's time (the tablet's zone).
  for (const el of document.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(when.getTime())) continue;
    try {
      el.textContent = el.dataset.part === "date"
        ? when.toLocaleDateString(lang, { weekday: "long", year: "numeric", month: "long", day: "numeric" })
        : when.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
    } catch (e) { /* an old browser: the UTC text stays */ }
  }

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
