// lab console: live progress of a job (server-sent events). Lines are
// added as text, never as HTML.
// The running `lab watch`'s cycles (a namespace's page): a session's
// lines replace the last one's; with none running the browser asks again.
(function () {
  var log = document.getElementById("watch");
  var status = document.getElementById("watch-status");
  if (!log || !log.dataset.watch) return;
  var es = new EventSource(log.dataset.watch);
  es.addEventListener("session", function (e) {
    log.textContent = "";
    status.textContent = "lab watch is running (pid " + e.data + ")";
    status.className = "ok";
  });
  es.onmessage = function (e) {
    log.appendChild(document.createTextNode(e.data + "\n"));
  };
  es.addEventListener("idle", function (e) {
    status.textContent = e.data;
    status.className = "old";
  });
  es.addEventListener("done", function () {
    status.textContent = "lab watch stopped";
    status.className = "old";
  });
})();
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
