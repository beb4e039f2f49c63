"""A server whose certificate a private CA issued: refused by default,
reached with ``ca_bundle=`` or ``ORKESTR_CA_BUNDLE``. The CA and the
certificate are made here with the openssl command; the server is the
standard library's, answering one JSON document over TLS."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from orkestr import APIConnectionError, AsyncClient, Client, OrkestrError

KEY = "ork_" + "K" * 43


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (Debian package openssl)")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=orkestr test CA", cwd=tmp_path)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf", cwd=tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}", tmp_path / "ca.pem"
    finally:
        srv.shutdown()
        srv.server_close()


def test_ca_bundle(tls_server: Tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = tls_server
    monkeypatch.delenv("ORKESTR_CA_BUNDLE", raising=False)
    with Client(KEY, url, max_retries=0) as c:
        with pytest.raises(APIConnectionError):
            c.request("GET", "/limits")
    with Client(KEY, url, ca_bundle=str(ca)) as c:
        assert c.request("GET", "/limits").json() == {"ok": True}
    monkeypatch.setenv("ORKESTR_CA_BUNDLE", str(ca))
    with Client(KEY, url) as c:
        assert c.request("GET", "/limits").json() == {"ok": True}


async def _async_get(url: str, ca: str) -> object:
    async with AsyncClient(KEY, url, ca_bundle=ca) as c:
        return (await c.request("GET", "/limits")).json()


@pytest.mark.asyncio
async def test_ca_bundle_async(tls_server: Tuple[str, Path]) -> None:
    url, ca = tls_server
    assert await _async_get(url, str(ca)) == {"ok": True}


def test_bad_ca_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for path in (str(junk), str(tmp_path / "missing.pem")):
        with pytest.raises(OrkestrError) as ei:
            Client(KEY, "https://127.0.0.1:1", ca_bundle=path)
        assert ei.value.code == "invalid_ca_bundle"
