"""A TCP forwarder that delays one direction by a fixed time: a slow link where tc netem is missing.

    python _delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS reply|request

``reply``: what the target sends back is delayed (a worker's answers, behind its contact address);
``request``: what the connecting side sends is delayed (a worker's messages to its scheduler). Bytes
keep their order; each chunk leaves DELAY_MS after it arrived, as netem's egress delay does. Runs
until killed (tests/hosts.py kills it with its host).
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        while chunk := await reader.read(1 << 16):
            await queue.put((time.monotonic() + delay, chunk))
        await queue.put((time.monotonic() + delay, b""))

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        writer.close()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        writer.close()


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int, delay: float, which: str) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        up = delay if which == "request" else 0.0
        down = delay if which == "reply" else 0.0
        await asyncio.gather(_pump(client_reader, target_writer, up), _pump(target_reader, client_writer, down))

    server = await asyncio.start_server(handle, listen_host, listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port, milliseconds, which = sys.argv[1:7]
    asyncio.run(main(host, int(port), target, int(target_port), float(milliseconds) / 1000, which))
