// orkestr console: the sandbox page's terminal, xterm.js (vendor/xterm,
// loaded before this file) over the API's terminal WebSocket, reached
// through the console's session at /console/api/sandboxes/{id}/pty. The
// protocol: binary messages are terminal bytes both ways, text messages
// JSON control messages (docs/api.md, Terminals).
"use strict";

// xterm.js writes the rules its renderer computes (sizes, theme colours)
// into <style> elements, which the console's Content-Security-Policy
// (style-src 'self', no inline styles) refuses to apply, and even an
// empty one is reported. The CSSOM is not subject to that policy, so when
// xterm.js asks for a <style> element it gets an inert <template> whose
// text and sheet are a constructed stylesheet adopted by the document.
(function routeXtermStyles() {
  if (typeof CSSStyleSheet === "undefined" || !("adoptedStyleSheets" in document)) return;
  var create = document.createElement;
  document.createElement = function (tag, opts) {
    if (String(tag).toLowerCase() !== "style") return create.call(document, tag, opts);
    var el = create.call(document, "template");
    var sheet = new CSSStyleSheet();
    var text = "";
    document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
    Object.defineProperty(el, "textContent", {
      get: function () { return text; },
      set: function (v) { text = String(v); sheet.replaceSync(text); },
    });
    Object.defineProperty(el, "sheet", { get: function () { return sheet; } });
    var remove = el.remove;
    el.remove = function () {
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter(function (s) { return s !== sheet; });
      return remove.call(el);
    };
    return el;
  };
})();

function startTerminal(section) {
  var id = section.getAttribute("data-id");
  var button = document.getElementById("term-open");
  var state = document.getElementById("term-state");
  var box = document.getElementById("term");
  var term = null, ws = null;
  var enc = new TextEncoder();

  function say(s) { state.textContent = s; }

  function open() {
    button.disabled = true;
    box.hidden = false;
    if (term) term.dispose();
    term = new Terminal({ rows: 24, cols: 100, convertEol: false, cursorBlink: true, fontFamily: "ui-monospace, monospace", fontSize: 14 });
    term.open(box);
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/console/api/sandboxes/" + encodeURIComponent(id) + "/pty");
    ws.binaryType = "arraybuffer";
    say("Connecting…");
    ws.onopen = function () {
      ws.send(JSON.stringify({ type: "start", rows: term.rows, cols: term.cols }));
    };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") {
        term.write(new Uint8Array(ev.data));
        return;
      }
      var m;
      try { m = JSON.parse(ev.data); } catch (err) { return; }
      if (m.type === "started") {
        say("Connected: a login shell, pid " + m.pid + " in the sandbox.");
        term.focus();
      } else if (m.type === "exit") {
        say("The shell exited with status " + m.exit_code + ".");
      } else if (m.type === "error" && m.error) {
        say("The terminal failed: " + m.error.message);
      }
    };
    ws.onclose = function () {
      button.disabled = false;
      button.textContent = "Open a new terminal";
      if (state.textContent.indexOf("Connected") === 0 || state.textContent === "Connecting…") say("Disconnected.");
    };
    term.onData(function (d) { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
    term.onBinary(function (d) {
      if (ws.readyState !== WebSocket.OPEN) return;
      var b = new Uint8Array(d.length);
      for (var i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
      ws.send(b);
    });
    term.onResize(function (s) {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", rows: s.rows, cols: s.cols }));
    });
  }
  button.addEventListener("click", open);
}

document.addEventListener("DOMContentLoaded", function () {
  var section = document.getElementById("terminal");
  if (section && typeof Terminal === "function") startTerminal(section);
});
