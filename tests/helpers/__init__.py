"""What several test modules share, in one place: no test module imports another (fixtures live in conftest.py).

clock (a hand-moved Clock), files (mode_of), http (the error shape, raw connections), images (PNGs, data URIs),
probes (/healthz probe and peak RSS beside a hostile load), processes (`receiver` subprocesses), provider_webhooks
(tokened paths, signed fal bodies), receivers (a recording webhook endpoint), servers (black holes, refusing
ports, mounts), stack (the receiver wired to the emulators), waiting (until).
"""
