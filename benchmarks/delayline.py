"""A TCP relay that adds a fixed delay to everything one side sends: `tc netem` in user space.

The bed's kernel has no `sch_netem` (`tc qdisc add ... netem` answers "Specified qdisc
kind is unknown"), so `benchmarks/mirror.py` runs this inside the upstream registry's
network namespace, in front of the registry: bytes from the registry reach the caller
`--delay` seconds after the registry sent them, as netem on the registry's egress would
do, and a new connection waits the same delay first (the handshake's answer crossing the
slow link). Bandwidth is not limited. Standard library only.

    python3 delayline.py --listen 10.0.0.5:5001 --target 127.0.0.1:5002 --delay 0.2
"""

from __future__ import annotations

import argparse
import asyncio


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer; each chunk leaves `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def take() -> None:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))

    async def give() -> None:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(take(), give())


async def main(listen: str, target: str, delay: float) -> None:
    target_host, target_port = target.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            await asyncio.sleep(delay)
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, int(target_port))
            await asyncio.gather(
                relay(client_reader, upstream_writer, 0.0), relay(upstream_reader, client_writer, delay)
            )
        except (ConnectionError, OSError):
            pass
        finally:
            client_writer.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(main(args.listen, args.target, args.delay))
