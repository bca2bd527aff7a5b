// sonoedge: withdrawing an ended exam, or undoing that, shared by the just-ended exam's card
// and the earlier exams' list (app.js) and the exam's report (report.js). An exam started
// by mistake (a test scan, the wrong woman, two women in one exam) is no exam done, and the
// district must not count it. A reason from the fixed list is required, and a second tap
// confirms it: a slip of the finger must not withdraw a woman's exam. Undo is one tap: it
// only restores.
"use strict";

const WITHDRAW_REASONS = ["mistake", "test_scan", "wrong_woman", "two_women"];
let withdrawForms = 0; // each form's own radio group: the card's and the list's of one exam

// The controls of one exam ({exam_id, withdrawal}), in the words say(key) gives; done()
// once the box has kept the change (the caller draws the exam again).
function withdrawControls(exam, say, done) {
  const box = document.createElement("div");
  box.className = "withdraw";
  box.dataset.exam = exam.exam_id;
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("aria-live", "polite");
  const button = (cls, key) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = say(key);
    return b;
  };
  const send = async (body, buttons) => {
    for (const b of buttons) b.disabled = true;
    error.textContent = "";
    try {
      const res = await fetch(`/api/exams/${encodeURIComponent(exam.exam_id)}/withdrawal`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), credentials: "same-origin",
      });
      if (res.ok) {
        let answer = {};
        try { answer = await res.json(); } catch (e) { answer = {}; }
        // the box had not journaled it in time (busy, or stopping): said, not assumed
        if (answer.kept === false) { error.textContent = say("withdraw.pending"); return; }
        done();
        return;
      }
      const key = { 401: "withdraw.session", 404: "withdraw.gone", 409: "withdraw.conflict",
                    503: "withdraw.busy" }[res.status] || "withdraw.failed_status";
      error.textContent = say(key).replace("{status}", res.status);
    } catch (e) {
      error.textContent = say("withdraw.failed");
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  };
  const w = exam.withdrawal;
  if (w && w.withdrawn) {
    const undo = button("undo", "withdraw.undo");
    undo.addEventListener("click", () => send({ withdrawn: false }, [undo]));
    box.append(undo, error);
    return box;
  }
  const open = button("open", "withdraw.action");
  const form = document.createElement("fieldset");
  withdrawForms += 1;
  form.className = "confirm";
  form.hidden = true;
  const legend = document.createElement("legend");
  legend.textContent = say("withdraw.why");
  form.append(legend);
  for (const reason of WITHDRAW_REASONS) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = `withdraw-${withdrawForms}`; // never another form's: a choice is its own
    input.value = reason;
    label.append(input, ` ${say("withdraw.reason_" + reason)}`);
    form.append(label);
  }
  const note = document.createElement("p");
  note.className = "fine";
  note.textContent = say("withdraw.note");
  const confirm = button("confirm danger", "withdraw.confirm");
  confirm.disabled = true; // a reason first
  const cancel = button("cancel", "withdraw.cancel");
  form.addEventListener("change", () => { confirm.disabled = !form.querySelector("input:checked"); });
  open.addEventListener("click", () => { form.hidden = false; open.hidden = true; });
  cancel.addEventListener("click", () => {
    form.hidden = true;
    open.hidden = false;
    error.textContent = "";
    for (const input of form.querySelectorAll("input")) input.checked = false;
    confirm.disabled = true;
  });
  confirm.addEventListener("click", () => {
    const chosen = form.querySelector("input:checked");
    if (chosen) send({ withdrawn: true, reason: chosen.value }, [confirm, cancel]);
  });
  form.append(note, confirm, cancel);
  box.append(open, form, error);
  return box;
}
