// OmniQ dashboard: confirmations and live refresh. Plain JavaScript, no dependencies.
"use strict";

// A form with data-confirm asks before it is sent.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// An element with data-live="<url>" is replaced by that URL's HTML every
// data-every seconds, while the tab is visible (and at once when it shows again).
function startLive(element) {
  var url = element.getAttribute("data-live");
  var every = Math.max(1, Number(element.getAttribute("data-every")) || 5) * 1000;
  var busy = false;
  function refresh() {
    if (document.hidden || busy) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        element.innerHTML = html;
        element.removeAttribute("data-stale");
      })
      .catch(function () {
        element.setAttribute("data-stale", "true");
      })
      .finally(function () {
        busy = false;
      });
  }
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(startLive);
});
