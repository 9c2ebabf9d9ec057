"""Input checks of the WaveSpeed emulator's edit models (the step1x-edit schema, applied to every model id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_SEED = -1
# The v2 page documents seeds up to 9 999 999 999; the v3 page narrows them to a 32-bit int.
MAX_SEED = {"v2": 9_999_999_999, "v3": 2_147_483_647}
MIN_GUIDANCE, MAX_GUIDANCE, DEFAULT_GUIDANCE = 0, 20, 4
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 50, 30
IMAGE_SCHEMES = ("http://", "https://", "data:")


class InputRejected(ValueError):
    """The submitted input fails the schema; the message names every offending field."""


@dataclass(frozen=True, slots=True)
class EditInput:
    """A validated step1x-edit input, defaults filled in."""

    prompt: str
    image: str
    negative_prompt: str = ""
    seed: int = -1
    guidance_scale: float = DEFAULT_GUIDANCE
    num_inference_steps: int = DEFAULT_STEPS
    enable_safety_checker: bool = True
    enable_sync_mode: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The input as the webhook's `input` echoes it."""
        return {
            "prompt": self.prompt,
            "image": self.image,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "guidance_scale": self.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
            "enable_safety_checker": self.enable_safety_checker,
            "enable_sync_mode": self.enable_sync_mode,
        }


def parse_input(body: object, *, version: str = "v3") -> EditInput:
    """Check a submit body for API `version`; raises `InputRejected` naming every field that is missing or invalid."""
    if not isinstance(body, dict):
        raise InputRejected("the request body must be a JSON object")
    problems: list[str] = []
    for name in ("prompt", "image"):
        value = body.get(name)
        if value is None or value == "":
            problems.append(f"{name} is required")
        elif not isinstance(value, str):
            problems.append(f"{name} must be a string")
    image = body.get("image")
    if isinstance(image, str) and image and not image.startswith(IMAGE_SCHEMES):
        problems.append("image must be an http(s) URL or a data URI")
    if not isinstance(body.get("negative_prompt", ""), str):
        problems.append("negative_prompt must be a string")
    _check_int(body, "seed", MIN_SEED, MAX_SEED[version], problems)
    _check_int(body, "num_inference_steps", MIN_STEPS, MAX_STEPS, problems)
    guidance = body.get("guidance_scale", DEFAULT_GUIDANCE)
    if not _is_number(guidance) or not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE:
        problems.append(f"guidance_scale must be a number from {MIN_GUIDANCE} to {MAX_GUIDANCE}")
    for name in ("enable_safety_checker", "enable_sync_mode"):
        if not isinstance(body.get(name, False), bool):
            problems.append(f"{name} must be a boolean")
    if problems:
        raise InputRejected("; ".join(problems))
    return EditInput(
        prompt=body["prompt"],
        image=body["image"],
        negative_prompt=body.get("negative_prompt", ""),
        seed=body.get("seed", -1),
        guidance_scale=guidance,
        num_inference_steps=body.get("num_inference_steps", DEFAULT_STEPS),
        enable_safety_checker=body.get("enable_safety_checker", True),
        enable_sync_mode=body.get("enable_sync_mode", False),
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(body: dict[str, Any], name: str, low: int, high: int, problems: list[str]) -> None:
    if name not in body:
        return
    value = body[name]
    if not _is_int(value) or not low <= value <= high:
        problems.append(f"{name} must be an integer from {low} to {high}")
