// lab console: live progress of a job (server-sent events). Lines are
// added as text, never as HTML.
(function () {
  var log = document.getElementById("log");
  var status = document.getElementById("status");
  if (!log || !log.dataset.events || log.dataset.done) return;
  var shown = parseInt(log.dataset.shown || "0", 10);
  var seen = 0;
  var es = new EventSource(log.dataset.events);
  es.onmessage = function (e) {
    seen += 1;
    if (seen <= shown) return;
    log.appendChild(document.createTextNode(e.data + "\n"));
  };
  es.addEventListener("done", function (e) {
    status.textContent = e.data === "ok" ? "finished: ok" : "finished: failed";
    status.className = e.data === "ok" ? "ok" : "bad";
    es.close();
  });
})();
