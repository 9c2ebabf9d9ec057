// The receiver dashboard's bit of JavaScript. Every page works without it; with it, the jobs list follows
// the live feed (/ui/stream) and the job page gets a compare slider. Data from the server is only ever put
// into the page as text (textContent) or as attributes (setAttribute), never parsed as HTML.
"use strict";
(function () {
  var STATUS = /^[a-z_]+$/;
  var MAX_ROWS = 200;

  function localPath(url) {
    // Only our own paths (/v1/images/..., /jobs/...) become links or image sources.
    return typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/" && url.indexOf("\\") < 0;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    seconds = Math.max(0, seconds);
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    var minutes = Math.floor(seconds / 60), secs = Math.floor(seconds % 60);
    if (minutes < 60) return minutes + " min " + secs + " s";
    var hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h " + (minutes % 60) + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function age(seconds) {
    if (!isFinite(seconds)) return "";
    return seconds < 1 ? "just now" : duration(Math.floor(seconds));
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function statusBadge(status) {
    var badge = el("span", "status", status);
    if (STATUS.test(status)) badge.classList.add("status-" + status);
    return badge;
  }

  function thumb(href, src, alt) {
    if (!localPath(href) || !localPath(src)) return null;
    var link = el("a");
    link.setAttribute("href", href);
    var img = el("img", "thumb");
    img.setAttribute("src", src);
    img.setAttribute("alt", alt);
    img.setAttribute("width", "56");
    img.setAttribute("height", "56");
    link.appendChild(img);
    return link;
  }

  function fillStatus(cell, job) {
    cell.textContent = "";
    cell.appendChild(statusBadge(job.status));
    if (job.error) cell.appendChild(el("div", "muted small error-text", job.error));
  }

  function fillThumbs(cell, job) {
    cell.textContent = "";
    var input = thumb(job.input_url, job.input_thumbnail, "input of " + job.id);
    var output = thumb(job.output_url, job.output_thumbnail, "output of " + job.id);
    if (input) cell.appendChild(input);
    if (input && output) cell.appendChild(document.createTextNode(" "));
    if (output) cell.appendChild(output);
  }

  function buildRow(job, offset) {
    var row = el("tr", "new");
    row.setAttribute("data-job-id", job.id);
    var idCell = el("td", "id");
    var link = el("a", "mono", job.id);
    if (localPath(job.href)) link.setAttribute("href", job.href);
    idCell.appendChild(link);
    var statusCell = el("td", "status-cell");
    var providerCell = el("td", "provider", job.provider);
    providerCell.appendChild(el("div", "muted mono small", job.model));
    var promptCell = el("td", "prompt", job.prompt || "");
    if (job.metadata) promptCell.appendChild(el("div", "muted small meta", job.metadata));
    var ageCell = el("td", "age");
    ageCell.setAttribute("data-label", "Age");
    ageCell.setAttribute("data-created", String(job.created_at));
    ageCell.appendChild(el("time", null, age(Date.now() / 1000 + offset - job.created_at)));
    var durationCell = el("td", "duration optional");
    durationCell.setAttribute("data-label", "Took");
    var thumbsCell = el("td", "thumbs");
    [idCell, statusCell, providerCell, promptCell, ageCell, durationCell, thumbsCell].forEach(function (cell) {
      row.appendChild(cell);
    });
    updateRow(row, job);
    return row;
  }

  function updateRow(row, job) {
    var known = parseFloat(row.getAttribute("data-updated") || "0");
    if (known > job.updated_at) return; // an older change than the one shown
    row.setAttribute("data-status", job.status);
    row.setAttribute("data-updated", String(job.updated_at));
    fillStatus(row.querySelector(".status-cell"), job);
    row.querySelector(".duration").textContent = duration(job.duration_s);
    fillThumbs(row.querySelector(".thumbs"), job);
  }

  function findRow(table, id) {
    var rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-job-id") === id) return rows[i];
    }
    return null;
  }

  function matchesFilters(table, job) {
    var status = table.getAttribute("data-filter-status");
    var provider = table.getAttribute("data-filter-provider");
    var model = table.getAttribute("data-filter-model");
    var since = parseFloat(table.getAttribute("data-filter-since") || "");
    if (status && job.status !== status) return false;
    if (provider && job.provider !== provider) return false;
    if (model && job.model !== model) return false;
    if (isFinite(since) && job.created_at < since) return false;
    return true;
  }

  function followJobs() {
    var table = document.getElementById("jobs");
    if (!table || !window.EventSource) return;
    var state = document.getElementById("live-state");
    var since = table.getAttribute("data-since") || "";
    var offset = parseFloat(since) - Date.now() / 1000; // server clock minus this one
    if (!isFinite(offset)) offset = 0;
    var inserts = table.getAttribute("data-live-inserts") === "true";
    var source = new EventSource("/ui/stream?since=" + encodeURIComponent(since));
    source.addEventListener("open", function () {
      if (state) state.textContent = "Live: new jobs and changes appear without a reload.";
    });
    source.addEventListener("error", function () {
      if (state) state.textContent = "Live updates paused; reconnecting…";
    });
    source.addEventListener("job", function (message) {
      var job;
      try {
        job = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (!job || typeof job.id !== "string") return;
      var row = findRow(table, job.id);
      if (row) {
        // A row whose status no longer matches a status filter stays (with its new status) until a reload.
        updateRow(row, job);
        return;
      }
      if (!inserts || !matchesFilters(table, job)) return;
      var body = table.tBodies[0];
      body.insertBefore(buildRow(job, offset), body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
      var caption = table.caption;
      if (caption && body.rows.length === 1) caption.textContent = "Newest first.";
    });
    window.setInterval(function () {
      var cells = table.querySelectorAll("td.age[data-created]");
      for (var i = 0; i < cells.length; i++) {
        var created = parseFloat(cells[i].getAttribute("data-created"));
        var time = cells[i].querySelector("time") || cells[i];
        if (isFinite(created)) time.textContent = age(Date.now() / 1000 + offset - created);
      }
    }, 5000);
  }

  function followJob() {
    // The job page of a job still on its way reloads once the job changes state or its images are stored.
    var heading = document.getElementById("job");
    if (!heading || !window.EventSource) return;
    var id = heading.getAttribute("data-job-id");
    var status = heading.getAttribute("data-status");
    if (heading.getAttribute("data-images") === "stored") return;
    if (status === "failed" || status === "cancelled") return; // nothing more will change

    var since = heading.getAttribute("data-since") || "";
    var source = new EventSource("/ui/stream?since=" + encodeURIComponent(since));
    source.addEventListener("job", function (message) {
      var job;
      try {
        job = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (!job || job.id !== id) return;
      if (job.status !== status || job.output_url) {
        source.close();
        window.location.reload();
      }
    });
  }

  function compareImages() {
    var box = document.getElementById("compare");
    var input = document.getElementById("input-image");
    var output = document.getElementById("output-image");
    if (!box || !input || !output) return;
    var frame = el("div", "frame");
    var base = el("img");
    base.setAttribute("src", output.getAttribute("src"));
    base.setAttribute("alt", "Output image");
    var top = el("img", "top-layer");
    top.setAttribute("src", input.getAttribute("src"));
    top.setAttribute("alt", "Input image");
    frame.appendChild(base);
    frame.appendChild(top);
    var label = el("label", null, "Input ⟷ output");
    label.setAttribute("for", "compare-range");
    var range = el("input");
    range.id = "compare-range";
    range.type = "range";
    range.min = "0";
    range.max = "100";
    range.value = "50";
    function show() {
      top.style.clipPath = "inset(0 " + (100 - Number(range.value)) + "% 0 0)";
      range.setAttribute("aria-valuetext", range.value + "% input");
    }
    range.addEventListener("input", show);
    show();
    box.appendChild(frame);
    box.appendChild(label);
    box.appendChild(range);
    box.hidden = false;
  }

  document.addEventListener("DOMContentLoaded", function () {
    followJobs();
    followJob();
    compareImages();
  });
})();
