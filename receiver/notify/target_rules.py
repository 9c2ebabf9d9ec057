"""What a notification target must look like to ever be delivered to: one set of rules, run when a
subscription or a `callback_url` is stored and again before every send.

URLs pass `netguard.check_url` (the SSRF guard's checks that need no DNS). Slack and Discord URLs must
also be the services' own webhook URLs (host and path), unless `allow_private` is on: that is the
development mode where local stand-ins play the chat services. A Telegram bot token must have the shape
BotFather gives (`<bot id>:<35 characters>`) and a chat id must be a number or an `@channelusername`.
"""

from __future__ import annotations

import re

from receiver.support.netguard import BlockedTarget, CheckedUrl, check_url

TELEGRAM_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{30,100}")
TELEGRAM_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}")
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
SLACK_PATH = re.compile(r"/services/[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+")
DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
DISCORD_PATH = re.compile(r"/api(?:/v[0-9]{1,2})?/webhooks/[0-9]{1,20}/[A-Za-z0-9_-]{1,200}")
SHAPES = {
    "slack": (SLACK_HOSTS, SLACK_PATH, "a Slack incoming-webhook URL (https://hooks.slack.com/services/T.../B.../...)"),
    "discord": (DISCORD_HOSTS, DISCORD_PATH, "a Discord webhook URL (https://discord.com/api/webhooks/{id}/{token})"),
}


class TargetProblem(ValueError):
    """Why a target can never be delivered to; `field` names the request field at fault. The message
    never holds a secret (token, URL path) or an address a name resolved to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_target_url(kind: str, url: str, *, allow_private: bool, field: str = "url") -> CheckedUrl:
    """The URL of a `webhook`, `callback`, `slack` or `discord` target; raises TargetProblem."""
    try:
        checked = check_url(url, allow_private=allow_private)
    except BlockedTarget as exc:
        raise TargetProblem(field, exc.message) from None
    shape = SHAPES.get(kind)
    if shape is not None and not allow_private:
        hosts, path, description = shape
        if checked.hostname not in hosts or not path.fullmatch(checked.path):
            raise TargetProblem(field, f"must be {description}")
    return checked


def check_bot_token(bot_token: str) -> None:
    if not TELEGRAM_TOKEN.fullmatch(bot_token):
        # The token itself is never repeated: it is a credential, even when mistyped.
        raise TargetProblem("bot_token", "must be a Telegram bot token as BotFather gives it, <bot id>:<secret>")


def check_chat_id(chat_id: str) -> None:
    if not TELEGRAM_CHAT.fullmatch(chat_id):
        raise TargetProblem("chat_id", "must be a Telegram chat id (an integer) or @channelusername")


def check_target(
    kind: str, *, url: str | None, bot_token: str | None, chat_id: str | None, allow_private: bool
) -> None:
    """Everything about a target that can be told before sending to it; raises TargetProblem."""
    if kind == "telegram":
        check_bot_token(bot_token or "")
        check_chat_id(chat_id or "")
    else:
        check_target_url(kind, url or "", allow_private=allow_private)
