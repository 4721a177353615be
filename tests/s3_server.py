"""A real S3-compatible object store for the tests: moto's standalone server on a free loopback port.

The claim-check tests put payloads in it through pyarrow's S3 client exactly as a plant would (signed
requests, multipart uploads, a bucket with a prefix), and kill it for real (SIGKILL) to see a store go
away mid-run. moto keeps objects in memory, so a store that "comes back" after its SIGKILL is a new server, filled
with the same objects first and then put at the dead one's address (:class:`SlowProxy` with no delay).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs

from ear_stream.stream.redis_server import free_port

ACCESS_KEY, SECRET_KEY, BUCKET = "ear-test-key", "ear-test-secret", "ear-payloads"
#: the moto of this interpreter's environment (the pinned one), not another one on PATH
MOTO = str(Path(sys.executable).parent / "moto_server")
HAS_MOTO = Path(MOTO).is_file()


class S3Server:
    """Start, kill and restart one moto server; :meth:`store_uri` is what ``--store`` takes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def store_uri(self, prefix: str, port: int | None = None) -> str:
        """An ``s3://`` URI with credentials and endpoint (``port``: another endpoint, e.g. a proxy in front)."""
        return (
            f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/{prefix}?endpoint_override=127.0.0.1:{port or self.port}"
            "&scheme=http&region=us-east-1"
        )

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            endpoint_override=self.endpoint,
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def start(self, timeout: float = 20.0) -> S3Server:
        self.proc = subprocess.Popen(
            [MOTO, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}") from None
                time.sleep(0.1)
        else:
            self.kill()
            raise RuntimeError(f"moto_server did not listen on {self.endpoint} within {timeout}s")
        self.filesystem().create_dir(BUCKET)
        return self

    def kill(self) -> None:
        """SIGKILL: the store is gone, mid-request if need be."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SlowProxy:
    """A loopback TCP proxy that holds every chunk from the client ``delay_s`` before passing it on: a slow
    store (each request then costs at least ``delay_s``), for the fetches that must overlap; with no delay,
    on a given ``port``, a store that came back at the address of one that died."""

    def __init__(self, target_port: int, delay_s: float = 0.0, port: int = 0) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay_s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while chunk := src.recv(65536):
                if delay_s:
                    time.sleep(delay_s)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
