/* leukodx pages: uploads with progress, image view toggles, print, confirmations. No libraries, no build step. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // Image view toggle: outlines / heat map / original
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button.view");
    if (!btn) return;
    var img = document.getElementById(btn.dataset.target);
    if (!img) return;
    var url = img.dataset[btn.dataset.view];
    var status = document.getElementById(img.id + "-status");
    if (url && img.getAttribute("src") !== url) {
      if (status) status.textContent = btn.dataset.view === "heatmap" ? "Computing the heat map…" : "Loading…";
      img.onload = function () { if (status) status.textContent = ""; };
      img.onerror = function () { if (status) status.textContent = "The image could not be loaded. Try again."; };
      img.src = url;
    }
    img.alt = img.alt.replace(/^(Heat map of |Original of )?/, btn.dataset.view === "heatmap" ? "Heat map of " : btn.dataset.view === "original" ? "Original of " : "");
    btn.parentElement.querySelectorAll("button.view").forEach(function (b) { b.setAttribute("aria-pressed", b === btn ? "true" : "false"); });
  });

  // Confirmation before destructive forms
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
  });

  // Review buttons say what they will do: confirm the AI's call, or override it
  document.querySelectorAll("button.decide").forEach(function (btn) {
    var select = document.getElementById(btn.dataset.select);
    if (!select) return;
    select.addEventListener("change", function () {
      btn.textContent = select.value === btn.dataset.ai ? btn.dataset.confirmText : btn.dataset.overrideText + " " + select.value;
    });
  });

  var printButton = document.getElementById("print-button");
  if (printButton) printButton.addEventListener("click", function () { window.print(); });

  // Uploads
  var zone = document.getElementById("dropzone");
  if (!zone) return;
  var input = document.getElementById("file-input");
  var list = document.getElementById("uploads");
  var caseId = zone.dataset.case;
  var maxBytes = parseInt(zone.dataset.maxBytes, 10);
  var maxFiles = parseInt(zone.dataset.maxFiles, 10);
  var okTypes = /^(image\/(jpeg|png|tiff|bmp|x-ms-bmp)|)$/;
  var queue = [], running = 0, succeeded = 0, PARALLEL = 2;

  function pct(x) { return Math.round(x * 100) + " %"; }

  function item(file) {
    var li = document.createElement("li");
    var name = document.createElement("span"); name.className = "uname"; name.textContent = file.name;
    var bar = document.createElement("progress"); bar.max = 100; bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var state = document.createElement("span"); state.className = "ustate"; state.textContent = "Waiting…";
    li.append(name, bar, state); list.append(li);
    return { li: li, bar: bar, state: state };
  }

  function fail(ui, message) {
    ui.li.className = "failed"; ui.bar.remove();
    ui.state.textContent = "Not added: " + message;
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
      setTimeout(function () { window.location.assign("/cases/" + caseId + "?done=uploaded&n=" + Date.now() + "#fields-h"); }, 400);
    }
  }

  function send(job) {
    running++;
    var xhr = new XMLHttpRequest();
    var form = new FormData(); form.append("files", job.file, job.file.name);
    xhr.open("POST", "/api/v1/cases/" + caseId + "/images");
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    job.ui.state.textContent = "Uploading…";
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) job.ui.bar.value = Math.round(100 * e.loaded / e.total); };
    xhr.upload.onload = function () { job.ui.bar.value = 100; job.ui.state.textContent = "Analysing…"; };
    xhr.onload = function () {
      if (xhr.status === 201) {
        var body = JSON.parse(xhr.responseText), f = body.added[0];
        job.ui.li.className = "done";
        job.ui.state.textContent = "Done — AI suggests " + (f.label || "nothing (unreadable)") +
          (f.label ? " (" + pct(f.confidence) + ")" : "") + ", " + f.cell_count + " cell(s)" + (f.flag !== "ok" ? ", flagged: " + f.flag : "");
        succeeded++;
      } else { fail(job.ui, message(xhr)); }
      running--; next();
    };
    xhr.onerror = function () { fail(job.ui, "the connection failed. Check that leukodx is still running, then try again."); running--; next(); };
    xhr.send(form);
  }

  function add(files) {
    files = Array.prototype.slice.call(files);
    if (files.length > maxFiles) {
      var li = document.createElement("li"); li.className = "failed";
      li.textContent = files.length + " files chosen; only " + maxFiles + " are taken at once. The first " + maxFiles + " are being added; add the rest afterwards.";
      list.append(li); files = files.slice(0, maxFiles);
    }
    files.forEach(function (file) {
      var ui = item(file);
      if (!okTypes.test(file.type)) { fail(ui, "this is not a JPEG, PNG, TIFF or BMP image."); return; }
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
