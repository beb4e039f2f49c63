"""Upload and download of one local file through the Python SDK, for
BenchmarkDataFilesSDKs. Env: ORKESTR_BASE_URL, ORKESTR_API_KEY, SANDBOX_ID,
LOCAL. Prints one JSON line: the seconds of each direction and the bytes
that came back."""
import json
import os
import time

from orkestr import Sandbox


class Counter:
    n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


sbx = Sandbox.get(os.environ["SANDBOX_ID"])
size = os.path.getsize(os.environ["LOCAL"])
t0 = time.perf_counter()
with open(os.environ["LOCAL"], "rb") as f:
    sbx.files.write_stream("/workspace/py.bin", f)
up = time.perf_counter() - t0
t0 = time.perf_counter()
c = Counter()
n = sbx.files.read_to("/workspace/py.bin", c)  # type: ignore[arg-type]
down = time.perf_counter() - t0
if n != size or c.n != size:
    raise SystemExit(f"downloaded {n} bytes of {size}")
print(json.dumps({"up_s": up, "down_s": down, "bytes": n}))
