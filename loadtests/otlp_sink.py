"""A stand-in OpenTelemetry collector for measuring what tracing costs the service:
it accepts OTLP/HTTP trace exports (`POST /v1/traces`) and counts them, nothing more,
so the service pays for making and exporting spans and the sink costs next to nothing.

    python3 dev.py python -m loadtests.otlp_sink --port 4318     # then start the service with
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_TRACES_SAMPLER=parentbased_traceidratio \\
        OTEL_TRACES_SAMPLER_ARG=0.1 python3 dev.py serve

On SIGINT or SIGTERM it prints how many exports and bytes it received.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


class Sink:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.exports += 1
        self.bytes += len(body)
        # An empty ExportTraceServiceResponse: everything accepted.
        return web.Response(body=b"", content_type="application/x-protobuf")


async def serve(port: int) -> None:
    sink = Sink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    print(f"otlp sink: {sink.exports} exports, {sink.bytes} bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
