// sonoedge: a field with focus kept, with its label, between a sticky bar and a phone's
// keyboard. Shared by the midwife's page (its status strip) and the exam report (its
// Back/Print bar). On a phone the keyboard shrinks the screen under the field she taps,
// and the browser brought the field into view under the bar, its label hidden (a midwife's
// walk). The bar's height is the page's scroll padding (what the browser brings into view
// lands below it), and the field with focus is moved into the part the keyboard leaves.
"use strict";

function keepFieldsInSight(bar, fields) {
  if (!bar) return;
  const root = document.documentElement;
  const pad = () => root.style.setProperty("--bar-h",
    `${Math.ceil(bar.getBoundingClientRect().height)}px`);
  pad();
  if (window.ResizeObserver) new ResizeObserver(pad).observe(bar);
  const inSight = () => {
    const field = document.activeElement;
    if (!field || !field.matches || !field.matches(fields)) return;
    const label = (field.labels && field.labels[0]) || field;
    const rects = [label.getBoundingClientRect(), field.getBoundingClientRect()];
    const vv = window.visualViewport; // the part of the page the keyboard leaves
    const top = Math.max(bar.getBoundingClientRect().bottom, vv ? vv.offsetTop : 0) + 8;
    const bottom = (vv ? vv.offsetTop + vv.height : window.innerHeight) - 8;
    const first = Math.min(rects[0].top, rects[1].top);
    const last = Math.max(rects[0].bottom, rects[1].bottom);
    // the label first: where both do not fit, the label stays under the bar's edge
    if (first < top) window.scrollBy(0, first - top);
    else if (last > bottom) window.scrollBy(0, Math.min(last - bottom, first - top));
  };
  // after the browser's own scroll, and each time the keyboard opens or closes
  const soon = () => requestAnimationFrame(inSight);
  document.addEventListener("focusin", soon);
  window.addEventListener("resize", soon);
  if (window.visualViewport) window.visualViewport.addEventListener("resize", soon);
}
