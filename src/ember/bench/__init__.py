"""`ember bench`: startup and load benchmarks against ember or any peer server, and their plots.

- `client`: a minimal asyncio HTTP/1.1 keep-alive client and the request bodies of both APIs.
- `startup`: spawn → port → /health → /ready, RSS at ready, first request of each shape vs steady.
- `load`: closed-loop load at several concurrencies; throughput, latency, server and client CPU.
- `plot`: PNGs from the JSON results, one file or several side by side.

Nothing here is imported by `ember serve`; matplotlib, psutil and rich (the `bench` extra) are
imported inside the functions that need them.
"""
