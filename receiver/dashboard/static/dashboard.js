// The receiver dashboard's bit of JavaScript. Every page works without it; with it, the jobs list follows
// the live feed (/ui/stream) and the job page gets a compare slider. Data from the server is only ever
// inserted as text (textContent, setAttribute), never as HTML.
"use strict";
(function () {
  document.addEventListener("DOMContentLoaded", function () {
    if (window.receiverJobs) window.receiverJobs();
    if (window.receiverCompare) window.receiverCompare();
  });
})();
