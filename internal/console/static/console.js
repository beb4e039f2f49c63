// orkestr console: progressive enhancement only; every page works as
// plain HTML. Nothing from the server is ever inserted as markup: all
// text goes in through textContent.
"use strict";

document.addEventListener("submit", function (e) {
  var f = e.target;
  if (f.classList && f.classList.contains("confirm") && !window.confirm(f.getAttribute("data-confirm"))) {
    e.preventDefault();
  }
});

document.addEventListener("click", function (e) {
  var b = e.target.closest ? e.target.closest("button[data-copy]") : null;
  if (!b) return;
  var input = document.getElementById(b.getAttribute("data-copy"));
  var status = b.parentNode.querySelector("[role=status]");
  function done(ok) { if (status) status.textContent = ok ? "Copied." : "Select the text and copy it."; }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () { input.select(); done(false); });
  } else {
    input.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
    done(ok);
  }
});

var SVGNS = "http://www.w3.org/2000/svg";

// points maps values to the 120x40 viewBox of a sparkline.
function points(values, max) {
  if (values.length === 0) return "";
  var n = Math.max(values.length - 1, 1);
  return values.map(function (v, i) {
    var y = 39 - Math.min(v / (max || 1), 1) * 38;
    return (i * 120 / n).toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
}

function fmtBytes(b) {
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(2) + " GiB";
  return (b / (1 << 20)).toFixed(1) + " MiB";
}

function startLive(sec) {
  var id = sec.getAttribute("data-id");
  // Never faster than the server samples.
  var every = Math.max(parseInt(sec.getAttribute("data-interval"), 10) || 1, 1) * 1000;
  var cpu = [], mem = [], since = "", limit = 0, stopped = false;
  var cpuLine = document.querySelector("#cpu-spark polyline");
  var memLine = document.querySelector("#mem-spark polyline");
  function tick() {
    var url = "/console/api/sandboxes/" + encodeURIComponent(id) + "/metrics" + (since ? "?since=" + encodeURIComponent(since) : "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (r.status === 401) { stopped = true; window.location.href = "/console/login"; return null; }
      return r.ok ? r.json() : null;
    }).then(function (m) {
      if (!m) return;
      (m.samples || []).forEach(function (s) { cpu.push(s.cpu_percent); mem.push(s.mem_bytes); since = s.t; });
      cpu = cpu.slice(-60); mem = mem.slice(-60);
      if (m.memory) limit = m.memory.limit_bytes;
      cpuLine.setAttribute("points", points(cpu, 100));
      memLine.setAttribute("points", points(mem, limit || Math.max.apply(null, mem.concat([1]))));
      document.getElementById("cpu-now").textContent = m.cpu ? m.cpu.usage_percent.toFixed(1) + " %" : "—";
      document.getElementById("mem-now").textContent = m.memory ? fmtBytes(m.memory.usage_bytes) + " of " + fmtBytes(m.memory.limit_bytes) : "—";
      var disk = document.getElementById("disk-now");
      if (disk) disk.textContent = m.disk ? fmtBytes(m.disk.usage_bytes) + " of " + fmtBytes(m.disk.limit_bytes) : "—";
      if (m.lifetime) {
        var l = m.lifetime;
        document.getElementById("life-cpu").textContent = l.cpu_seconds + " CPU-seconds (" + (l.cpu_seconds / 3600).toFixed(4) + " CPU-hours)";
        document.getElementById("life-mem").textContent = l.mem_mb_seconds + " MB·s (" + (l.mem_mb_seconds / (1024 * 3600)).toFixed(4) + " GB-hours)";
        document.getElementById("life-running").textContent = l.running_seconds + "s";
      }
      var st = document.getElementById("status");
      if (st && m.sandbox_status && st.textContent !== m.sandbox_status) {
        st.textContent = m.sandbox_status;
        st.className = "status s-" + m.sandbox_status;
      }
      if (m.sandbox_status !== "running" && m.sandbox_status !== "starting") {
        document.getElementById("live-note").textContent = "The sandbox is " + m.sandbox_status + "; nothing to sample.";
        stopped = true;
      }
    }).catch(function () {}).then(function () {
      if (!stopped) setTimeout(tick, every);
    });
  }
  tick();
}

function cell(text, label) {
  var td = document.createElement("td");
  td.textContent = text;
  td.setAttribute("data-label", label);
  return td;
}

function startListRefresh(table) {
  var status = table.getAttribute("data-status") || "";
  function render(rows) {
    var tbody = document.createElement("tbody");
    rows.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-id", s.id);
      var td = document.createElement("td"), a = document.createElement("a");
      a.href = "/console/sandboxes/" + encodeURIComponent(s.id);
      a.textContent = s.id;
      td.setAttribute("data-label", "Sandbox");
      td.appendChild(a); tr.appendChild(td);
      var st = document.createElement("span");
      st.className = "status s-" + s.status.replace(/[^a-z]/g, "");
      st.textContent = s.status;
      td = document.createElement("td"); td.setAttribute("data-label", "Status"); td.appendChild(st); tr.appendChild(td);
      [[s.template, "Template"], [s.size, "Size"], [s.region, "Region"], [s.age, "Age"]].forEach(function (c) { tr.appendChild(cell(c[0], c[1])); });
      td = document.createElement("td"); td.className = "meta"; td.setAttribute("data-label", "Metadata");
      (s.meta || []).forEach(function (kv) {
        var span = document.createElement("span"); span.className = "kv";
        var k = document.createElement("span"); k.className = "k"; k.textContent = kv.Key;
        var v = document.createElement("span"); v.className = "v"; v.textContent = kv.Value;
        span.appendChild(k); span.appendChild(document.createTextNode("=")); span.appendChild(v);
        td.appendChild(span); td.appendChild(document.createTextNode(" "));
      });
      tr.appendChild(td);
      tbody.appendChild(tr);
    });
    table.replaceChild(tbody, table.tBodies[0]);
    document.getElementById("empty").hidden = rows.length > 0;
  }
  function tick() {
    fetch("/console/api/sandboxes" + (status ? "?status=" + encodeURIComponent(status) : ""), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d) render(d.data || []); })
      .catch(function () {})
      .then(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 5000);
}

document.addEventListener("DOMContentLoaded", function () {
  var live = document.getElementById("live");
  if (live) startLive(live);
  var list = document.getElementById("sandboxes");
  if (list) startListRefresh(list);
});
