"""`ember bench`: startup and load benchmarks against ember or any peer server, and their plots.

- `client`: a minimal asyncio HTTP/1.1 keep-alive client and the request bodies of both APIs.
- `workloads`: what the load sends and how its answers are checked (embed, rerank, classify,
  mixed, custom).
- `load`: the one closed loop, at several concurrencies; throughput, latency, server and client
  CPU; back-off on 429.
- `startup`: spawn → port → /health → first /ready 503 → /ready 200, RSS at ready, first request
  of each shape vs steady; cold-page-cache runs.
- `process`: spawn, wait for probes, stop, process-tree RSS, page-cache eviction (one copy).
- `plot`: PNGs from the JSON results, one file or several side by side.

Nothing here is imported by `ember serve`; matplotlib, psutil and rich (the `bench` extra) are
imported inside the functions that need them.
"""
