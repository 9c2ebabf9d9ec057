"""The WaveSpeed emulator: v3 (and v2) predictions, media uploads, CDN and HMAC-signed webhooks
(docs/providers.md#wavespeed)."""

from receiver.emulators.wavespeed.config import WaveSpeedEmulatorConfig
from receiver.emulators.wavespeed.emulator import WaveSpeedEmulator
from receiver.emulators.wavespeed.predictions import Prediction, PredictionStatus

__all__ = ["Prediction", "PredictionStatus", "WaveSpeedEmulator", "WaveSpeedEmulatorConfig"]
