"""What several test modules share, defined once; no test module imports another, fixtures live in conftest.py.
The hostile-body tests take their bodies from bench/big_bodies.py, the ones the benchmark sends.

- browser: the dashboard in Debian's Chromium through Playwright (Tab: log in, focus by Tab, overflow probes)
- clock: a Clock the test moves by hand
- database: rows read from the database file by the test's own read-only connection, the queries writes run
- files: mode_of
- http: the API's one error shape, checked over httpx or a raw TCP connection
- images: PNG bytes, data URIs, the sample image, an image host route, image sizes
- jobs: a pending Job as the store hands it to a provider
- probes: a /healthz probe beside a hostile load, big-input calls seen on the event loop's thread
- processes: `receiver` in subprocesses (environment, ServerProcess, waits)
- provider_webhooks: a job's tokened webhook path, a fal body signed as fal signs it
- queue_emulators: the fal and WaveSpeed emulators behind a Switch, with a harness for each (FalHarness,
  WaveSpeedHarness)
- receivers: HookReceiver, a webhook endpoint on loopback that records every request
- servers: black holes, refusing ports, emulators mounted with their lifespan, a Switch
- storage_rows: jobs and subscriptions seeded through the stores for the storage contract tests (T0, AddJob)
- stack: the receiver wired to every emulator on loopback (Stack, ClockedStack, open_stack)
- sync_apis: StepFun and Modelverse (SyncApi), their emulators served, a provider or a client aimed at them
- waiting: until
"""
