"""Webhooks: POST the task as JSON to its ``webhook_url`` when it completes, fails or is cancelled.

- Signed: ``X-Media-Cleaner-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<body>"`` with the
  configured secret, and ``X-Media-Cleaner-Timestamp`` (Unix seconds) so a receiver can refuse replays.
- Retried with exponential backoff (1, 2, 4, … s) on network errors and 5xx/429 answers, from one
  background thread: a worker never waits on a webhook.
- Safe: targets that resolve to loopback, private, link-local (cloud metadata), multicast or reserved
  addresses are refused unless ``webhook_allow_private`` is set; checked when the task is created and again
  right before each delivery (the name could resolve elsewhere by then).
- Durable: a delivery's outcome is stored on the task (``webhook_status``); deliveries still pending when
  the server stopped are sent after the next start.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import queue
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from media_cleaner.service.tasks import Task

log = logging.getLogger("media_cleaner.service.webhooks")

SIGNATURE_HEADER = "X-Media-Cleaner-Signature"
TIMESTAMP_HEADER = "X-Media-Cleaner-Timestamp"


class WebhookRefused(ValueError):
    """The URL may not be called; the message says why."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64: RFC 6052 and RFC 8215): a gateway
# turns them into that IPv4 address, so they are judged by it.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped or ip.sixtofour or (ip.teredo and ip.teredo[1]):
        return ip.ipv4_mapped or ip.sixtofour or ip.teredo[1]
    if any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return _is_public(embedded)
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Raise :class:`WebhookRefused` unless ``url`` is a well-formed http(s) URL of a public host.

    Well-formed means what the HTTP client will accept too, with no spaces or control characters (a CR/LF
    would otherwise reach the request line): every URL stored with a task can be delivered."""
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise WebhookRefused("webhook_url must not contain spaces, line breaks or other control characters")
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise WebhookRefused(f"webhook_url is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise WebhookRefused("webhook_url must be an http:// or https:// URL with a host name")
    if allow_private:
        return
    try:
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError, ValueError):
        raise WebhookRefused(f"webhook_url host {hostname!r} cannot be resolved") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not _is_public(ip):
            raise WebhookRefused(f"webhook_url points at a loopback, private or link-local address "
                                 f"({ip}); this server only calls public hosts")


class WebhookSender:
    """One background thread that delivers webhooks, retrying with backoff."""

    def __init__(self, *, secret: str | None, allow_private: bool, max_attempts: int, timeout_s: float,
                 record=None, transport: httpx.BaseTransport | None = None):
        """``record(task_id, status, attempts)`` stores a delivery's outcome (the task store's update)."""
        self.secret, self.allow_private = secret, allow_private
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self._record = record or (lambda *args: None)
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s + 1)
        self._client.close()

    def notify(self, task: Task) -> None:
        """Queue a delivery of ``task`` (a finished task with a webhook_url). Never blocks."""
        if task.webhook_url:
            self._queue.put((task.model_copy(deep=True), 1, 0.0))

    def _run(self) -> None:
        waiting: list[tuple[float, Task, int]] = []   # (due time, task, attempt) for retries
        while not self._stop.is_set():
            timeout = max(0.0, min((due for due, _, _ in waiting), default=time.monotonic() + 1.0)
                          - time.monotonic())
            try:
                item = self._queue.get(timeout=min(timeout, 1.0))
                if item is not None:
                    waiting.append((time.monotonic() + item[2], item[0], item[1]))
            except queue.Empty:
                pass
            now = time.monotonic()
            due = [entry for entry in waiting if entry[0] <= now]
            waiting = [entry for entry in waiting if entry[0] > now]
            for _, task, attempt in due:
                if self._stop.is_set():
                    return
                try:
                    retry = self._deliver(task, attempt)
                except Exception:   # no single delivery may stop the sender for everyone
                    log.exception("webhook for task %s: delivery failed unexpectedly", task.task_id)
                    self._record_safely(task.task_id, "failed", attempt)
                    retry = False
                if retry:
                    waiting.append((time.monotonic() + 2.0 ** (attempt - 1), task, attempt + 1))

    def _deliver(self, task: Task, attempt: int) -> bool:
        """One attempt; True when it should be retried."""
        body = json.dumps(task.public(), ensure_ascii=False).encode("utf-8")
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                   "User-Agent": "media-cleaner-webhook/1"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        try:
            check_webhook_url(task.webhook_url, self.allow_private)
            response = self._client.post(task.webhook_url, content=body, headers=headers)
            retry = response.status_code >= 500 or response.status_code == 429
            outcome = f"HTTP {response.status_code}"
            ok = 200 <= response.status_code < 300
        except WebhookRefused as exc:
            retry, ok, outcome = False, False, str(exc)
        except httpx.HTTPError as exc:
            retry, ok, outcome = True, False, type(exc).__name__
        except httpx.InvalidURL as exc:   # stored by an older version that did not check as much
            retry, ok, outcome = False, False, f"invalid URL ({exc})"
        if ok:
            status = "delivered"
        elif retry and attempt < self.max_attempts:
            status = "pending"
        else:
            status, retry = "failed", False
        log.info("webhook for task %s attempt %d: %s (%s)", task.task_id, attempt, outcome, status)
        self._record_safely(task.task_id, status, attempt)
        return retry

    def _record_safely(self, task_id: str, status: str, attempt: int) -> None:
        try:
            self._record(task_id, status, attempt)
        except Exception:   # the task may have been deleted meanwhile
            log.debug("could not record webhook outcome for %s", task_id, exc_info=True)
