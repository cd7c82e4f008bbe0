"""A loopback file server that answers every request late, as a distant server over a real network.

Serves the files of a folder over HTTP/1.1 with keep-alive; each answer is held back by
``--delay`` seconds (without holding a thread: asyncio), so thousands of requests can wait at once
and the delay, not the server, bounds a client that sends too few at a time.

    python bench/slow_server.py FOLDER --port 8080 --delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, root: Path,
                 delay: float, cache: dict[str, bytes]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            name = target.split("?", 1)[0].lstrip("/")
            await asyncio.sleep(delay)
            body = cache.get(name)
            if body is None and "/" not in name and (root / name).is_file():
                body = cache[name] = (root / name).read_bytes()
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def serve(root: Path, port: int, delay: float) -> None:
    cache: dict[str, bytes] = {}
    server = await asyncio.start_server(
        lambda r, w: answer(r, w, root, delay, cache), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(serve(args.folder.resolve(), args.port, args.delay))


if __name__ == "__main__":
    main()
