// slipway dashboard: live sections by server-sent events, confirmed commands with the CSRF token, log tail.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]')?.content || "";
  const live = document.querySelector('meta[name="live"]')?.content;
  const conn = document.getElementById("conn");
  const flash = (text, bad) => {
    const f = document.getElementById("flash");
    f.textContent = text;
    f.className = bad ? "fail show" : "show";
    clearTimeout(flash.t);
    flash.t = setTimeout(() => { f.className = ""; }, 6000);
  };
  let pending = null;
  const confirmBox = () => document.getElementById("confirm");
  const ask = (btn) => {
    const box = confirmBox();
    if (!box) return;
    pending = btn.dataset.action;
    document.getElementById("confirm-text").textContent = btn.dataset.confirm;
    box.hidden = false;
    document.getElementById("confirm-yes").focus();
  };
  const send = async (action) => {
    const body = action === "abort" ? JSON.stringify({ reason: "aborted from the dashboard" }) : "";
    try {
      const r = await fetch("/api/deploy/" + action, {
        method: "POST",
        headers: { "x-csrf-token": csrf, "content-type": "application/json" },
        body,
        credentials: "same-origin",
      });
      const j = await r.json();
      flash(r.ok ? action + ": done" : action + ": " + (j.message || r.status), !r.ok);
    } catch (e) {
      flash(action + ": " + e, true);
    }
  };
  document.addEventListener("click", (ev) => {
    const t = ev.target.closest("button");
    if (!t) return;
    if (t.dataset.action) { ask(t); return; }
    if (t.id === "confirm-yes" && pending) {
      const a = pending;
      pending = null;
      confirmBox().hidden = true;
      send(a);
    } else if (t.id === "confirm-no") {
      pending = null;
      confirmBox().hidden = true;
    }
  });
  if (!live) return;
  const src = new EventSource(live);
  src.onopen = () => { conn.className = "conn on"; };
  src.onerror = () => { conn.className = "conn off"; };
  src.addEventListener("sections", (ev) => {
    const parts = JSON.parse(ev.data);
    for (const id of Object.keys(parts)) {
      const el = document.getElementById(id);
      if (!el) continue;
      el.innerHTML = parts[id];
    }
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  src.addEventListener("log", (ev) => {
    const pre = document.getElementById("log");
    if (!pre) return;
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (ev.data) pre.append(document.createTextNode(ev.data + "\n"));
    const max = 200000;
    if (pre.textContent.length > max) pre.textContent = pre.textContent.slice(-max);
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
})();
