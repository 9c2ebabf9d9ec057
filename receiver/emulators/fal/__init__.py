"""The fal emulator: queue API, fal.run, CDN, JWKS and Ed25519-signed webhooks (docs/providers.md#fal-queue-api)."""

from receiver.emulators.fal.config import FalEmulatorConfig
from receiver.emulators.fal.emulator import FalEmulator
from receiver.emulators.fal.requests import FalRequest, RequestStatus

__all__ = ["FalEmulator", "FalEmulatorConfig", "FalRequest", "RequestStatus"]
