/* leukodx pages: uploads with progress, the field viewer (layers, zoom, keyboard), the cell gallery, print,
   confirmations. No libraries, no build step, no inline script (the Content-Security-Policy allows none). */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }

  // A form's failure answer (the page at the form's POST URL, with what was typed and the error): the address
  // bar gets the page's own URL, so a reload shows the page again and does not send the form a second time
  var replaceUrl = document.querySelector("[data-replace-url]");
  if (replaceUrl && window.history && window.history.replaceState) window.history.replaceState(null, "", replaceUrl.dataset.replaceUrl);

  // A page that follows a job (data-reload: seconds) reloads itself, but never while a text box has focus or text:
  // what is being typed is not lost
  var reload = document.querySelector("[data-reload]");
  if (reload) setInterval(function () {
    var busy = typing(document.activeElement) || Array.prototype.some.call(
      document.querySelectorAll("input:not([type=hidden]), textarea"), function (el) { return el.value.trim() !== ""; });
    if (!busy) window.location.reload();
  }, 1000 * Number(reload.dataset.reload));

  // Confirmation before destructive forms
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
  });

  // Review buttons say what they will do: confirm the AI's call, or override it
  document.querySelectorAll("button.decide").forEach(function (btn) {
    var select = document.getElementById(btn.dataset.select);
    if (!select) return;
    select.addEventListener("change", function () {
      if (!select.value && btn.dataset.emptyText) btn.textContent = btn.dataset.emptyText;
      else if (select.value === "unassessable" && btn.dataset.unassessableText) btn.textContent = btn.dataset.unassessableText;
      else btn.textContent = select.value === btn.dataset.ai ? btn.dataset.confirmText : btn.dataset.overrideText + " " + select.value;
      btn.classList.add("primary");
    });
  });

  // A form is sent once: a double click does not send it twice
  document.querySelectorAll("form[method=post]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (ev.defaultPrevented) return;
      if (form.dataset.sent) { ev.preventDefault(); return; }
      form.dataset.sent = "1";
      setTimeout(function () { delete form.dataset.sent; }, 8000);
    });
  });

  var printButton = document.getElementById("print-button");
  if (printButton) printButton.addEventListener("click", function () { window.print(); });

  // ---------------------------------------------------------------------------------------- the field viewer
  var viewer = document.getElementById("viewer");
  var view = null;
  if (viewer) view = setupViewer(viewer);

  function setupViewer(root) {
    var stage = document.getElementById("stage");
    var mainImg = document.getElementById("view-img");
    var sidePane = document.getElementById("pane-side");
    var sideImg = document.getElementById("side-img");
    var numbers = document.getElementById("numbers");
    var status = document.getElementById("view-status");
    var legend = document.getElementById("heat-legend");
    var zoomLabel = document.getElementById("zoom-level");
    var W = parseInt(root.dataset.width, 10) || mainImg.naturalWidth, H = parseInt(root.dataset.height, 10) || mainImg.naturalHeight;
    var st = { s: 1, x: 0, y: 0 };
    var panes = stage.querySelectorAll(".pane");

    function paneSize() { var p = document.getElementById("pane-main"); return { w: p.clientWidth, h: p.clientHeight }; }
    function apply() {
      stage.querySelectorAll(".zoomable").forEach(function (z) {
        z.style.transform = "translate(" + st.x + "px," + st.y + "px) scale(" + st.s + ")";
      });
      zoomLabel.textContent = Math.round(st.s * 100) + " %";
    }
    function fit() {
      var p = paneSize();
      st.s = Math.min(p.w / W, p.h / H);
      st.x = (p.w - W * st.s) / 2; st.y = (p.h - H * st.s) / 2;
      apply();
    }
    function zoomAt(factor, cx, cy) {
      var p = paneSize();
      if (cx === undefined) { cx = p.w / 2; cy = p.h / 2; }
      var s = Math.max(0.05, Math.min(40, st.s * factor));
      st.x = cx - (cx - st.x) * (s / st.s); st.y = cy - (cy - st.y) * (s / st.s); st.s = s;
      apply();
    }
    function focusBox(rect) {
      var x = +rect.getAttribute("x"), y = +rect.getAttribute("y"), w = +rect.getAttribute("width"), h = +rect.getAttribute("height");
      var p = paneSize();
      st.s = Math.min(p.w / (w * 4), p.h / (h * 4), 12);
      st.x = p.w / 2 - (x + w / 2) * st.s; st.y = p.h / 2 - (y + h / 2) * st.s;
      apply();
    }
    function setLayer(layer) {
      root.querySelectorAll("button.layer").forEach(function (b) { b.setAttribute("aria-pressed", b.dataset.layer === layer ? "true" : "false"); });
      var side = layer === "side";
      stage.classList.toggle("side", side);
      sidePane.hidden = !side;
      var url = mainImg.dataset[side ? "outlines" : layer];
      if (side) sideImg.src = mainImg.dataset.original;
      legend.hidden = layer !== "heatmap";
      numbers.classList.toggle("hidden", layer === "original" || layer === "heatmap" || !document.getElementById("show-numbers").checked);
      if (url && mainImg.getAttribute("src") !== url) {
        status.textContent = layer === "heatmap" ? "Computing the heat map…" : "Loading…";
        mainImg.onload = function () { status.textContent = ""; };
        mainImg.onerror = function () { status.textContent = "The image could not be loaded. Try again."; };
        mainImg.src = url;
      }
      mainImg.alt = mainImg.alt.replace(/^(Heat map of |Original of )?/, layer === "heatmap" ? "Heat map of " : layer === "original" ? "Original of " : "");
      setTimeout(fit, 0);
    }
    root.querySelectorAll("button.layer").forEach(function (b) { b.addEventListener("click", function () { setLayer(b.dataset.layer); }); });
    root.querySelectorAll("button.zoom").forEach(function (b) {
      b.addEventListener("click", function () { if (b.dataset.zoom === "reset") fit(); else zoomAt(b.dataset.zoom === "in" ? 1.5 : 1 / 1.5); });
    });
    document.getElementById("show-numbers").addEventListener("change", function (e) {
      numbers.classList.toggle("hidden", !e.target.checked);
    });
    panes.forEach(function (pane) {
      pane.addEventListener("wheel", function (e) {
        e.preventDefault();
        var r = pane.getBoundingClientRect();
        zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
      }, { passive: false });
      var drag = null;
      pane.addEventListener("pointerdown", function (e) { drag = { x: e.clientX, y: e.clientY, sx: st.x, sy: st.y }; pane.setPointerCapture(e.pointerId); pane.classList.add("dragging"); });
      pane.addEventListener("pointermove", function (e) { if (!drag) return; st.x = drag.sx + e.clientX - drag.x; st.y = drag.sy + e.clientY - drag.y; apply(); });
      pane.addEventListener("pointerup", function () { drag = null; pane.classList.remove("dragging"); });
    });
    window.addEventListener("resize", fit);
    fit();
    var picked = root.dataset.cell ? document.getElementById("box-" + root.dataset.cell) : null;
    if (picked) focusBox(picked);
    return { fit: fit, zoom: zoomAt, layer: setLayer };
  }

  // An error inside the viewer or the sign-off box (e.g. the case is locked): show it there, with the reason box
  ["field-error", "case-error"].forEach(function (id) {
    var err = document.getElementById(id);
    if (!err) return;
    err.scrollIntoView({ block: "center" });
    var box = document.getElementById(id === "field-error" ? "field-amendment" : "case-amendment");
    if (box) box.focus();
  });

  // -------------------------------------------------------------------------------------------- keyboard
  var classKeys = {};
  var gallery = document.getElementById("gallery");
  if (gallery && gallery.dataset.keys) {
    gallery.dataset.keys.split(",").forEach(function (kv) { var p = kv.split(":"); classKeys[p[0]] = p[1]; });
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    var cell = e.target.closest && e.target.closest("figure.cell");
    if (cell) { galleryKey(e, cell); return; }
    if (!viewer) return;
    var select = document.getElementById("field-label");
    // 1-9 pick the n-th call (the "choose your call" placeholder of a flagged field is not one)
    var calls = select ? Array.prototype.filter.call(select.options, function (o) { return o.value; }) : [];
    if (/^[1-9]$/.test(e.key) && +e.key <= calls.length) {
      e.preventDefault(); select.value = calls[+e.key - 1].value; select.dispatchEvent(new Event("change")); select.focus(); return;
    }
    if (e.key === "Enter" || e.key === "c") {
      var form = document.getElementById("field-review-form");
      if (form) { e.preventDefault(); form.requestSubmit(document.getElementById("field-save")); }
      return;
    }
    var go = { j: viewer.dataset.next, ArrowRight: viewer.dataset.next, k: viewer.dataset.prev, ArrowLeft: viewer.dataset.prev }[e.key];
    if (go) { e.preventDefault(); window.location.assign(go); return; }
    var layer = { o: "original", u: "outlines", h: "heatmap", v: "side" }[e.key];
    if (layer && view && viewer.querySelector('button.layer[data-layer="' + layer + '"]')) { e.preventDefault(); view.layer(layer); return; }
    if (view && (e.key === "+" || e.key === "=")) { e.preventDefault(); view.zoom(1.5); }
    else if (view && (e.key === "-" || e.key === "_")) { e.preventDefault(); view.zoom(1 / 1.5); }
    else if (view && e.key === "0") { e.preventDefault(); view.fit(); }
  });

  // Pressing Enter in the field call's select saves it too
  var fieldSelect = document.getElementById("field-label");
  if (fieldSelect) fieldSelect.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { e.preventDefault(); document.getElementById("field-review-form").requestSubmit(document.getElementById("field-save")); }
  });

  // -------------------------------------------------------------------------------------- the cell gallery
  // Select cells (click, Shift-click a range, Ctrl-click one more; arrows and Space), press a class key: they
  // move to that class and are saved at once through PATCH /api/v1/cases/{id}/cells. z undoes the last move.
  function say(text, bad, warn) {  // warn: the line says that a verification was taken back
    var s = document.getElementById("gallery-status");
    if (s) { s.textContent = text; s.className = "img-status small" + (bad ? " error" : warn ? " warn-text" : ""); }
  }

  var allCells = gallery ? Array.prototype.slice.call(gallery.querySelectorAll("figure.cell")) : [];
  var selected = [], anchor = null, undoStack = [], busy = false;
  var LOCKED_TEXT = "This case is signed off, so it is locked: type the reason for the amendment in the box above the cells, then press the key again.";

  function words(label) {
    if (!label) return "the AI's class";
    var opt = gallery.querySelector('#move-to option[value="' + label + '"]');
    return opt ? opt.textContent.replace(/ \(.\)$/, "") : label;
  }

  // Each card sits under the group of the class it counts as now (data-group: the server's cells.final_class,
  // from the page and, after a move, from the case the server answers). A move puts the cards
  // under their new group at once (made where the page's order puts it when it is not there yet; a group left
  // empty goes), with the counts in the headings, as a reload would show them.
  var cellsBox = document.getElementById("gallery-cells"), groupOrder = [], groupWords = {};
  if (cellsBox && cellsBox.dataset.groups) {
    try {
      JSON.parse(cellsBox.dataset.groups).forEach(function (g) { groupOrder.push(g[0]); groupWords[g[0]] = g[1]; });
    } catch (err) { groupOrder = []; }
  }

  function groupList(cls, make) {
    var h = document.getElementById("group-" + cls);
    if (h) return h.nextElementSibling;
    if (!make) return null;
    h = document.createElement("h3");
    h.className = "gallery-group"; h.id = "group-" + cls;
    var list = document.createElement("div");
    list.className = "cells"; list.setAttribute("role", "group"); list.setAttribute("aria-labelledby", h.id);
    // before the first group that comes later in the page's order (a class the order does not know goes last)
    var at = groupOrder.indexOf(cls), before = null;
    if (at >= 0) {
      Array.prototype.some.call(cellsBox.querySelectorAll("h3.gallery-group"), function (g) {
        var k = groupOrder.indexOf(g.id.replace(/^group-/, ""));
        if (k < 0 || k > at) { before = g; return true; }
        return false;
      });
    }
    cellsBox.insertBefore(h, before); cellsBox.insertBefore(list, before);
    return list;
  }

  function countGroups() {
    cellsBox.querySelectorAll("h3.gallery-group").forEach(function (h) {
      var list = h.nextElementSibling, n = list ? list.querySelectorAll("figure.cell").length : 0, cls = h.id.replace(/^group-/, "");
      if (!n) { if (list) list.remove(); h.remove(); return; }
      var span = h.querySelector("span") || document.createElement("span");
      span.className = "muted small"; span.textContent = "(" + n + ")";
      h.textContent = (groupWords[cls] || (h.firstChild && h.firstChild.nodeType === 3 ? h.firstChild.nodeValue.trim() : cls)) + " ";
      h.appendChild(span);
    });
  }

  function regroup(cards) {
    if (!cellsBox) return;
    var had = document.activeElement;  // moving a card takes the focus from it: give it back
    cards.forEach(function (c) {
      var list = groupList(c.dataset.group, true);
      if (c.parentNode === list) return;
      var seq = +c.dataset.seq, next = null;
      Array.prototype.some.call(list.querySelectorAll("figure.cell"), function (x) {
        if (+x.dataset.seq > seq) { next = x; return true; }
        return false;
      });
      list.insertBefore(c, next);
    });
    countGroups();
    allCells = Array.prototype.slice.call(gallery.querySelectorAll("figure.cell"));  // the arrow keys' order
    if (had && had !== document.activeElement && cards.indexOf(had) >= 0) focusCell(had);
  }

  function paintSelection() {
    allCells.forEach(function (c) { c.setAttribute("aria-selected", selected.indexOf(c) >= 0 ? "true" : "false"); });
    var n = selected.length, out = document.getElementById("selection-count");
    if (out) out.textContent = n ? n + " cell" + (n === 1 ? "" : "s") + " selected" : "No cell selected";
  }

  function focusCell(c) {
    if (!c) return;
    allCells.forEach(function (x) { x.tabIndex = x === c ? 0 : -1; });
    c.focus();
  }

  function toggle(c) {
    var i = selected.indexOf(c);
    if (i >= 0) selected.splice(i, 1); else selected.push(c);
  }

  function selectRange(a, b) {
    var i = allCells.indexOf(a), j = allCells.indexOf(b);
    if (i < 0) i = j;
    var lo = Math.min(i, j), hi = Math.max(i, j);
    allCells.slice(lo, hi + 1).forEach(function (c) { if (selected.indexOf(c) < 0) selected.push(c); });
  }

  function below(c, dir) {
    // the cell straight below (dir 1) or above (dir -1) in the grid, across groups
    var r = c.getBoundingClientRect(), best = null, bestRow = null, bestDx = Infinity;
    allCells.forEach(function (x) {
      var q = x.getBoundingClientRect();
      if (dir > 0 ? q.top <= r.top + 4 : q.top >= r.top - 4) return;
      var row = q.top;
      if (bestRow === null || (dir > 0 ? row < bestRow - 4 : row > bestRow + 4)) { bestRow = row; best = null; bestDx = Infinity; }
      if (Math.abs(row - bestRow) <= 4) {
        var dx = Math.abs(q.left - r.left);
        if (dx < bestDx) { bestDx = dx; best = x; }
      }
    });
    return best;
  }

  function galleryKey(e, cell) {
    var i = allCells.indexOf(cell), next = null;
    if (e.key === "ArrowRight") next = allCells[i + 1];
    else if (e.key === "ArrowLeft") next = allCells[i - 1];
    else if (e.key === "ArrowDown") next = below(cell, 1);
    else if (e.key === "ArrowUp") next = below(cell, -1);
    if (/^Arrow/.test(e.key)) {
      e.preventDefault();
      if (!next) return;
      if (e.shiftKey) { if (selected.indexOf(cell) < 0) selected.push(cell); if (selected.indexOf(next) < 0) selected.push(next); paintSelection(); }
      focusCell(next);
      return;
    }
    if (e.key === " ") { e.preventDefault(); toggle(cell); anchor = cell; paintSelection(); return; }
    if (e.key === "Escape") { selected = []; paintSelection(); return; }
    if (e.key === "Enter") { e.preventDefault(); var a = cell.querySelector("a.in-field"); if (a) window.location.assign(a.href); return; }
    if (e.key === "z") { e.preventDefault(); undo(); return; }
    var targets = selected.length ? selected.slice() : [cell];
    if (e.key === "Backspace" || e.key === "Delete") { e.preventDefault(); move(targets, null); return; }
    if (classKeys[e.key]) { e.preventDefault(); move(targets, classKeys[e.key]); }
  }

  function patchCells(caseId, items, reason) {
    // one batch request for the cells of any fields; answers the case as the server now has it
    var body = { cells: items };
    if (reason) body.amendment_reason = reason;
    return fetch("/api/v1/cases/" + caseId + "/cells", {
      method: "PATCH", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j }; },
                           function () { return { ok: false, status: r.status, body: {} }; });
    });
  }

  function showCase(c) {
    // the differential and its status as the server now has them
    Object.keys(c.differential || {}).forEach(function (k) {
      var td = document.getElementById("diff-" + k);
      if (!td) return;
      td.textContent = c.differential[k];
      if (c.differential[k]) td.parentNode.hidden = false;  // a class that had no cell gets its row
    });
    var bp = document.getElementById("blast-percent");
    if (bp && c.blast_percent_words) bp.textContent = c.blast_percent_words;
    var nr = document.getElementById("cells-reviewed"); if (nr && "n_cells_reviewed" in c) nr.textContent = c.n_cells_reviewed;
    if ("n_cells_counted" in c) {  // "19 of 100 leukocytes counted": the differential's line and the gallery's
      document.querySelectorAll(".n-counted").forEach(function (el) { el.textContent = c.n_cells_counted; });
      document.querySelectorAll(".n-short").forEach(function (el) { el.hidden = !!c.n_cells_target_reached; });
    }
    if ("n_cells_counted" in c) {  // "35 cell(s) outlined: 17 counted, 17 listed but not counted …" (the outlined macro)
      document.querySelectorAll(".outlined-counted").forEach(function (el) { el.textContent = c.n_cells_counted; });
      document.querySelectorAll(".outlined-rest").forEach(function (el) {
        var rest = Math.max(0, +el.dataset.inDifferential - c.n_cells_counted), n = el.querySelector(".outlined-listed");
        if (n) n.textContent = rest;
        el.hidden = rest <= 0;
      });
    }
    if (c.differential_verified === false) {
      document.querySelectorAll("#diff-source .ok-text, #gallery-diff .ok-text, #sign-off-differential .ok-text").forEach(function (el) {
        el.className = "warn-text"; el.textContent = el.dataset.unverified;
      });
    }
  }

  // a change that took the differential's verification back says so, and the Verify button offers it again
  function withdrawn() {
    var v = document.getElementById("verify-differential");
    if (v) v.textContent = v.dataset.againText;
    return document.getElementById("gallery-status").dataset.withdrawn;
  }

  function move(targets, label) { save(targets, targets.map(function () { return label; }), false); }

  function save(targets, labels, isUndo) {
    var label = labels[0];
    if (busy) { say("Still saving the last change…"); return; }
    var reasonBox = document.getElementById("cells-amendment"), reason = "";
    if (gallery.dataset.locked) {
      reason = reasonBox ? reasonBox.value.trim() : "";
      if (!reason) { say(LOCKED_TEXT, true); if (reasonBox) reasonBox.focus(); return; }
    }
    var items = targets.map(function (c, i) { return { field_id: +c.dataset.field, id: +c.dataset.cell, label: labels[i] }; });
    var before = targets.map(function (c) { return { cell: c, label: c.dataset.label || null }; });
    busy = true;
    say("Saving " + targets.length + " cell" + (targets.length === 1 ? "" : "s") + "…");
    patchCells(gallery.dataset.case, items, reason).then(function (res) {
      busy = false;
      if (!res.ok) {
        var d = res.body && res.body.detail;
        if (res.status === 409) { say(LOCKED_TEXT, true); if (reasonBox) reasonBox.focus(); return; }
        say("Not saved: " + (typeof d === "string" ? d : "the server answered " + res.status + ". Reload the page and try again."), true);
        return;
      }
      var group = {};  // each cell's class as the server now counts it (its final_label)
      ((res.body && res.body.fields) || []).forEach(function (f) {
        (f.cells || []).forEach(function (x) { group[f.id + ":" + x.id] = x.final_label; });
      });
      targets.forEach(function (c, i) {
        var l = labels[i];
        c.dataset.label = l || "";
        c.dataset.group = group[c.dataset.field + ":" + c.dataset.cell] || c.dataset.group;
        c.classList.toggle("reviewed", !!l); c.classList.add("saved");
        var lab = c.querySelector(".cell-label");
        if (lab) lab.textContent = l ? "Moved to " + words(l) : "";
        c.setAttribute("aria-label", c.getAttribute("aria-label").replace(/: .*$/, ": " + (l ? words(l) : "as the AI pre-classified")));
      });
      if (!isUndo) {
        undoStack.push(before);
        var ub = document.getElementById("undo-move"); if (ub) ub.disabled = false;
      }
      if (res.body) showCase(res.body);
      var n = targets.length, first = "Cell " + targets[0].dataset.cell + " of field " + targets[0].getAttribute("aria-label").replace(/^Cell \d+ of field (\d+).*$/, "$1");
      say((isUndo ? "Undone: " : "") + (n === 1 ? first : n + " cells") + (isUndo ? " back as before" : label ? " saved as " + words(label) : " back to the AI's class") +
          ". Blast percentage now " + ((res.body && res.body.blast_percent_words) || "–") +
          "." + (isUndo ? "" : " Press z to undo.") + (res.body && res.body.verification_withdrawn ? " " + withdrawn().replace(/^Your change/, "This") : ""),
          false, !!(res.body && res.body.verification_withdrawn));
      // the cards go under their new group at once. After a move the selection is cleared and the focus goes on
      // to the card that followed the moved ones, so that a technologist works down a group key after key;
      // after an undo the cards put back stay selected, the focused one keeps the focus
      var order = allCells.slice(), last = targets[targets.length - 1], after = null;
      for (var k = order.indexOf(last) + 1; k < order.length && !after; k++) {
        if (targets.indexOf(order[k]) < 0) after = order[k];
      }
      var working = gallery.contains(document.activeElement);
      regroup(targets);
      if (isUndo) { selected = targets.slice(); paintSelection(); }
      else { selected = []; paintSelection(); if (after && working) focusCell(after); }
    }).catch(function () { busy = false; say("Not saved: the connection failed. Check that leukodx is still running, then try again.", true); });
  }

  function undo() {
    if (busy) { say("Still saving the last change…"); return; }
    var last = undoStack.pop();
    var ub = document.getElementById("undo-move"); if (ub) ub.disabled = !undoStack.length;
    if (!last) { say("Nothing to undo."); return; }
    save(last.map(function (b) { return b.cell; }), last.map(function (b) { return b.label; }), true);
  }

  if (gallery) {
    allCells.forEach(function (c) {
      c.addEventListener("click", function (e) {
        if (e.target.closest("a")) return;  // "in field" opens the viewer there
        if (e.shiftKey && anchor) { if (!(e.ctrlKey || e.metaKey)) selected = []; selectRange(anchor, c); }
        else if (e.ctrlKey || e.metaKey) { toggle(c); anchor = c; }
        else { selected = selected.length === 1 && selected[0] === c ? [] : [c]; anchor = c; }
        paintSelection(); focusCell(c);
      });
    });
    var go = document.getElementById("move-go");
    if (go) go.addEventListener("click", function () {
      var focused = gallery.querySelector('figure.cell[tabindex="0"]');
      var targets = selected.length ? selected.slice() : [];
      if (!targets.length) { say("Select cells first: click them, or use the arrow keys and Space.", true); if (focused) focusCell(focused); return; }
      move(targets, document.getElementById("move-to").value || null);
    });
    var ub = document.getElementById("undo-move");
    if (ub) ub.addEventListener("click", undo);
    var verify = document.getElementById("verify-differential");
    if (verify) verify.addEventListener("click", function () {
      var n = +verify.dataset.n, target = +verify.dataset.target;
      var nc = document.getElementById("n-counted"); if (nc) n = +nc.textContent;
      var body = {}, reasonBox = document.getElementById("cells-amendment");
      if (gallery.dataset.locked) {
        body.amendment_reason = reasonBox ? reasonBox.value.trim() : "";
        if (!body.amendment_reason) { say(LOCKED_TEXT.replace("press the key again", "verify again"), true); if (reasonBox) reasonBox.focus(); return; }
      }
      var text = "Verify the differential in your name: you have checked that each of the " + n + " counted cells is in its right class" +
        (n < target ? " (fewer than the target of " + target + " cells)" : "") + "?";
      if (!window.confirm(text)) return;
      say("Verifying…");
      fetch("/api/v1/cases/" + gallery.dataset.case + "/differential/verify", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body)
      }).then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j }; }, function () { return { ok: false, status: r.status, body: {} }; });
      }).then(function (res) {
        if (res.ok) { window.location.assign("/cases/" + gallery.dataset.case + "?done=differential-verified#review"); return; }
        if (res.status === 409) { say(LOCKED_TEXT.replace("press the key again", "verify again"), true); if (reasonBox) reasonBox.focus(); return; }
        var d = res.body && res.body.detail;
        say("Not verified: " + (typeof d === "string" ? d : "the server answered " + res.status + ". Reload the page and try again."), true);
      }).catch(function () { say("Not verified: the connection failed. Check that leukodx is still running, then try again.", true); });
    });
  }

  // ------------------------------------------------------------------------------------------------ uploads
  var zone = document.getElementById("dropzone");
  if (!zone) return;
  var input = document.getElementById("file-input");
  var list = document.getElementById("uploads");
  var caseId = zone.dataset.case;
  var maxBytes = parseInt(zone.dataset.maxBytes, 10);
  var maxFiles = parseInt(zone.dataset.maxFiles, 10);
  var okTypes = JSON.parse(zone.dataset.acceptedTypes || "[]");  // uploads.ACCEPTED_TYPES, from the page
  // one upload at a time: each file is a field once its upload ends, so fields are numbered in the order chosen
  var queue = [], running = 0, succeeded = 0, PARALLEL = 1, withdrew = false;
  var KEEP = "leukodx-upload-problems-" + caseId;

  // files that were not added stay listed, with their reasons, after the page reloads (until dismissed)
  function kept() { try { return JSON.parse(sessionStorage.getItem(KEEP) || "[]"); } catch (e) { return []; } }
  function keep(name, text) { var k = kept(); k.push({ name: name, text: text }); sessionStorage.setItem(KEEP, JSON.stringify(k)); }
  function showKept() {
    var k = kept();
    if (!k.length) return;
    k.forEach(function (p) {
      var li = document.createElement("li"); li.className = "failed";
      var n = document.createElement("span"); n.className = "uname"; n.textContent = p.name;
      var s = document.createElement("span"); s.className = "ustate"; s.textContent = p.text;
      li.append(n, s); list.append(li);
    });
    var li = document.createElement("li"); li.className = "kept-note";
    var b = document.createElement("button"); b.type = "button"; b.className = "small-button"; b.textContent = "Clear this list";
    b.addEventListener("click", function () { sessionStorage.removeItem(KEEP); list.querySelectorAll("li.failed, li.kept-note").forEach(function (x) { x.remove(); }); });
    var t = document.createElement("span"); t.textContent = k.length + " file(s) above were not added (from your last upload). ";
    li.append(t, b); list.append(li);
  }
  showKept();

  function item(file) {
    var li = document.createElement("li");
    var name = document.createElement("span"); name.className = "uname"; name.textContent = file.name;
    var bar = document.createElement("progress"); bar.max = 100; bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var state = document.createElement("span"); state.className = "ustate"; state.textContent = "Waiting…";
    li.append(name, bar, state); list.append(li);
    return { li: li, bar: bar, state: state, name: file.name };
  }

  function fail(ui, message) {
    ui.li.className = "failed"; if (ui.bar.parentNode) ui.bar.remove();
    ui.state.textContent = "Not added: " + message;
    keep(ui.name, ui.state.textContent);
  }

  function message(xhr) {
    if (xhr.status === 401) return "Your login has expired. Reload the page, log in again, then add the file again.";
    try {
      var body = JSON.parse(xhr.responseText);
      if (Array.isArray(body.detail) && body.detail.length && body.detail[0].problem) {
        return body.detail.map(function (r) { return r.problem + " " + (r.hint || ""); }).join(" ");
      }
      if (typeof body.detail === "string") return body.detail;
      if (body.message) return body.message;
    } catch (e) { /* not JSON */ }
    if (xhr.status === 413) return "Too large. Use smaller files or fewer at once.";
    return "The server answered " + xhr.status + ". Try again.";
  }

  function next() {
    while (running < PARALLEL && queue.length) { send(queue.shift()); }
    if (!running && !queue.length && succeeded) {
      var note = document.createElement("li"); note.className = "done";
      note.textContent = "All uploads finished. Showing the results…"; list.append(note);
      succeeded = 0;
      setTimeout(function () { window.location.assign("/cases/" + caseId + "?done=uploaded" + (withdrew ? "&withdrawn=1" : "") + "&n=" + Date.now() + "#review"); }, 400);
    }
  }

  function send(job) {
    running++;
    var xhr = new XMLHttpRequest();
    var form = new FormData(); form.append("files", job.file, job.file.name);
    var amend = document.getElementById("upload-amendment");
    if (amend && amend.value.trim()) form.append("amendment_reason", amend.value.trim());
    var um = document.getElementById("upload-um-per-px");
    if (um && um.value.trim()) form.append("um_per_px", um.value.trim());
    xhr.open("POST", "/api/v1/cases/" + caseId + "/images");
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    job.ui.state.textContent = "Uploading…";
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) job.ui.bar.value = Math.round(100 * e.loaded / e.total); };
    xhr.upload.onload = function () { job.ui.bar.value = 100; job.ui.state.textContent = "Analysing…"; };
    xhr.onload = function () {
      if (xhr.status === 201 || xhr.status === 200) {
        var body = JSON.parse(xhr.responseText), f = body.added[0];
        if (f) {
          job.ui.li.className = "done";
          job.ui.state.textContent = (f.label ? "Done — AI suggests " + f.label + " (" + f.confidence_words + ")" : "Done — no class call (review it as unassessable)") + ", " + f.cell_count + " cell(s)" + (f.flag !== "ok" ? ", flagged: " + f.flag_words.title : "") +
            (body.case.verification_withdrawn ? ". " + zone.dataset.withdrawn : "");
          withdrew = withdrew || body.case.verification_withdrawn;
          succeeded++;
        } else {
          fail(job.ui, (body.skipped[0] || {}).reason || "the image is already in this case.");
        }
      } else { fail(job.ui, message(xhr)); }
      running--; next();
    };
    xhr.onerror = function () { fail(job.ui, "the connection failed. Check that leukodx is still running, then try again."); running--; next(); };
    xhr.send(form);
  }

  function add(files) {
    files = Array.prototype.slice.call(files);
    var amend = document.getElementById("upload-amendment");
    if (amend && !amend.value.trim()) {
      files.forEach(function (file) { fail(item(file), "this case is signed off. Type the reason for the amendment above, then add the file again."); });
      amend.focus();
      return;
    }
    if (files.length > maxFiles) {
      var li = document.createElement("li"); li.className = "failed";
      li.textContent = files.length + " files chosen; only " + maxFiles + " are taken at once. The first " + maxFiles + " are being added; add the rest afterwards.";
      list.append(li); files = files.slice(0, maxFiles);
    }
    files.forEach(function (file) {
      var ui = item(file);
      if (okTypes.indexOf(file.type) < 0) { fail(ui, "this is not a JPEG, PNG, TIFF or BMP image."); return; }
      if (file.size > maxBytes) { fail(ui, "the file is over " + Math.round(maxBytes / 1048576) + " MB. Export it smaller."); return; }
      queue.push({ file: file, ui: ui });
    });
    next();
  }

  input.addEventListener("change", function () { add(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) { if (e.dataTransfer && e.dataTransfer.files.length) add(e.dataTransfer.files); });
})();
