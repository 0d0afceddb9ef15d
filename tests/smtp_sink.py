"""A real SMTP server on loopback for the tests (aiosmtpd), that can also misbehave on demand."""

import asyncio
import email
import email.policy
import socket
import threading
from collections import deque
from dataclasses import dataclass

from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpSink:
    """Keeps what it receives. Tests can make it refuse recipients, answer DATA with an error,
    or stall, to show what the outbox does then."""

    def __init__(self):
        self.port = free_port()
        self.messages: list[Received] = []
        self.recipient_replies: dict[str, str] = {}
        self.data_replies: deque[str] = deque()
        self.delay = 0.0
        self.connections = 0
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def start(self) -> "SmtpSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.recipient_replies.clear()
            self.data_replies.clear()
            self.delay = 0.0
            self.connections = 0

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        with self._lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        reply = self.recipient_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            if self.data_replies:
                return self.data_replies.popleft()
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            )
        return "250 Message accepted"
