"""One MQTT 5 connection driven by the asyncio loop.

paho-mqtt 2.x does the protocol; its socket callbacks hand the socket to `loop.add_reader` and
`add_writer` (the Home Assistant pattern), so every callback runs on the event loop and no second
thread touches agent state. Only the blocking TCP connect and TLS handshake run in a worker
thread. The controller uses the same link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tiepdan.errors import Unavailable
from tiepdan.firmware.core.backoff import Backoff

log = logging.getLogger(__name__)


class LinkError(Unavailable, RuntimeError):
    """Publishing or subscribing failed before the broker could take the request."""


class LinkStopped(LinkError):
    """The link was stopped with the request still unacknowledged."""


@dataclass(frozen=True)
class TlsSettings:
    """Mutual TLS: the broker's CA, and this client's certificate and key."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    keepalive: int = 10
    session_expiry: int = 4 * 3600
    reconnect_min: float = 0.5
    reconnect_max: float = 4.0
    connect_timeout: float = 10.0
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Inbound:
    """A received message, with the MQTT 5 properties request/response needs."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    response_topic: str | None
    correlation_data: bytes | None
    expiry: int | None


OnConnect = Callable[[bool], Awaitable[None] | None]
OnMessage = Callable[[Inbound], None]


class MqttLink:
    """Keeps one persistent MQTT 5 session up until `stop()`.

    `before_connect` runs before every attempt (the agent bumps its session counter and sets the
    Last Will there); `on_connect(session_present)` runs after each CONNACK, which is where
    subscriptions and births belong; `on_message` gets every inbound message.
    """

    def __init__(
        self,
        settings: LinkSettings,
        *,
        on_message: OnMessage,
        on_connect: OnConnect | None = None,
        on_disconnect: Callable[[], None] | None = None,
        before_connect: Callable[[], Will | None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._before_connect = before_connect
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        self._client.manual_ack_set(manual_ack)
        self._client.connect_timeout = settings.connect_timeout  # paho: only before connecting
        self._client.max_inflight_messages_set(100)
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        self._tls: ssl.SSLContext | None = None
        if settings.tls:
            self._tls = client_context(settings.tls)
            self._client.tls_set_context(self._tls)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_socket_open = self._socket_open
        self._client.on_socket_close = self._socket_close
        self._client.on_socket_register_write = self._socket_register_write
        self._client.on_socket_unregister_write = self._socket_unregister_write
        self._client.on_log = self._handle_log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: socket.socket | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subscribing: dict[int, asyncio.Future[list[int]]] = {}
        self._connected = asyncio.Event()
        self._session_over = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._connecting = False
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def run(self) -> None:
        """Connect, stay connected, reconnect with jittered backoff; returns after `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        misc = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{self.settings.client_id}")
        try:
            while not self._stop_event.is_set():
                self._session_over.clear()
                up_before = self.connects
                if await self._attempt():
                    await self._session_over.wait()
                if self._stop_event.is_set():
                    break
                if self.connects > up_before:
                    backoff.reset()
                pause = backoff.next()
                log.info("mqtt_reconnect_wait client=%s seconds=%.2f",
                         self.settings.client_id, pause)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stop_event.wait()
        finally:
            misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await misc
            self._drop_socket()
            self._fail_pending()

    async def stop(self) -> None:
        """Disconnect cleanly (MQTT DISCONNECT, so the broker does not publish the Will)."""
        self._stop_event.set()
        if self.connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._session_over.wait()
        self._session_over.set()

    async def _attempt(self) -> bool:
        assert self._loop is not None
        will = self._before_connect() if self._before_connect else None
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry
        s = self.settings
        self._connecting = True
        try:
            # The TCP connect and TLS handshake block; keep them off the loop.
            rc = await self._loop.run_in_executor(
                None,
                lambda: self._client.connect(
                    s.host, s.port, s.keepalive, clean_start=False, properties=props
                ),
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "mqtt_connect_failed client=%s host=%s port=%d error=%s",
                s.client_id, s.host, s.port, _describe(exc),
            )
            self._drop_socket()
            return False
        except Exception:
            # Whatever paho raises, the link must outlive it: log it whole and back off.
            log.exception("mqtt_connect_crashed client=%s", s.client_id)
            self._drop_socket()
            return False
        finally:
            self._connecting = False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("mqtt_connect_failed client=%s rc=%s", s.client_id, rc)
            self._drop_socket()
            return False
        try:
            async with asyncio.timeout(s.connect_timeout):
                await self._wait_connack()
        except TimeoutError:
            log.warning("mqtt_connack_timeout client=%s", s.client_id)
            self._drop_socket()
            return False
        return True

    async def _wait_connack(self) -> None:
        connected = asyncio.ensure_future(self._connected.wait())
        over = asyncio.ensure_future(self._session_over.wait())
        try:
            await asyncio.wait({connected, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            over.cancel()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None and not self._connecting:
                self._client.loop_misc()

    # -- publishing and subscribing --------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        """Queue a message; the future resolves when the broker acknowledges it (QoS 1).

        While disconnected, paho keeps QoS 1 messages and resends them after reconnecting; the
        future then resolves late rather than failing.
        """
        loop = self._loop or asyncio.get_running_loop()
        props = None
        if expiry is not None or response_topic is not None or correlation_data is not None:
            props = _properties(PacketTypes.PUBLISH)
            if expiry is not None:
                props.MessageExpiryInterval = expiry
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        future: asyncio.Future[None] = loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            future.set_exception(LinkError(f"publish to {topic} failed: {info.rc}"))
        elif qos == 0:
            future.set_result(None)
        else:
            self._pending[info.mid] = future
        return future

    async def subscribe(self, *filters: tuple[str, int | SubscribeOptions]) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS (or reason codes >= 0x80).
        A filter comes with its QoS, or with MQTT 5 subscription options."""
        loop = self._loop or asyncio.get_running_loop()
        options = [(topic, how if isinstance(how, SubscribeOptions) else SubscribeOptions(how))
                   for topic, how in filters]
        result, mid = self._client.subscribe(options)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {result}")
        future: asyncio.Future[list[int]] = loop.create_future()
        self._subscribing[mid] = future
        async with asyncio.timeout(self.settings.connect_timeout):
            return await future

    def reload_certificate(self) -> None:
        """Use the certificate and key files as they are now from the next connection on (a
        renewed certificate); the connection that is up stays as it is."""
        tls = self.settings.tls
        if self._tls is None or tls is None or tls.cert_file is None:
            return
        try:
            self._tls.load_cert_chain(str(tls.cert_file),
                                      str(tls.key_file) if tls.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"TLS material unusable ({tls.cert_file}): {exc}") from None

    def ack(self, message: Inbound) -> None:
        """Acknowledge a QoS 1 message once it is safely handled (manual-ack links only)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- paho callbacks (all on the loop) ---------------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error(
                "mqtt_connect_refused client=%s reason=%s", self.settings.client_id, reason
            )
            return
        self.connects += 1
        self._connected.set()
        log.info(
            "mqtt_connected client=%s host=%s port=%d session_present=%s",
            self.settings.client_id, self.settings.host, self.settings.port,
            flags.session_present,
        )
        if self._on_connect_cb is not None:
            result = self._on_connect_cb(flags.session_present)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_task_failure)

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._session_over.set()
        if was_connected:
            level = logging.INFO if self._stop_event.is_set() else logging.WARNING
            log.log(level, "mqtt_disconnected client=%s reason=%s", self.settings.client_id,
                    reason)
            if self._on_disconnect_cb is not None:
                self._on_disconnect_cb()
        for future in self._subscribing.values():
            if not future.done():
                future.set_exception(LinkError("disconnected before SUBACK"))
        self._subscribing.clear()

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        inbound = Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            mid=msg.mid,
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
            expiry=getattr(props, "MessageExpiryInterval", None),
        )
        try:
            self._on_message(inbound)
        except Exception:
            # A handler bug must not take the connection down; the message is logged and acked.
            log.exception("mqtt_handler_failed topic=%s", msg.topic[:200])
            self.ack(inbound)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(LinkError(f"broker refused publish: {reason}"))
        else:
            future.set_result(None)

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        future = self._subscribing.pop(mid, None)
        if future is not None and not future.done():
            future.set_result([r.value for r in reasons])

    def _handle_log(self, client: paho.Client, userdata: object, level: int, buf: str) -> None:
        # Only here does paho say why a connection broke, e.g. the broker's TLS alert
        # "certificate revoked" arriving after a TLS 1.3 handshake; its debug chatter is dropped.
        if level == paho.MQTT_LOG_ERR:
            log.warning("mqtt_client_error client=%s error=%s", self.settings.client_id,
                        buf.replace("\n", " ")[:300])

    # -- socket plumbing --------------------------------------------------------------------------
    # paho announces a socket right after opening it and right before closing it. On the loop
    # thread we act at once (a deferred removal would meet a closed descriptor); from the
    # connect worker we hand over to the loop.

    def _on_loop(self, action: Callable[[socket.socket], None], sock: socket.socket) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            action(sock)
        else:
            self._loop.call_soon_threadsafe(action, sock)

    def _socket_open(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._on_loop(self._add_socket, sock)  # type: ignore[arg-type]

    def _add_socket(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() < 0:
            return
        # paho leaves Nagle on; with delayed ACKs every request/response then stalls ~40 ms.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        # Read until the socket (and, with TLS, the SSL buffer) is empty: a readable event can
        # carry many packets, and TLS may hold decrypted bytes the socket no longer signals.
        self._client.loop_read(max_packets=1000)

    def _socket_close(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._on_loop(self._remove_socket, sock)  # type: ignore[arg-type]

    def _remove_socket(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None

    def _socket_register_write(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._on_loop(self._add_writer, sock)  # type: ignore[arg-type]

    def _add_writer(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, self._client.loop_write)

    def _socket_unregister_write(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._on_loop(self._remove_writer, sock)  # type: ignore[arg-type]

    def _remove_writer(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _drop_socket(self) -> None:
        sock = self._sock
        if sock is not None and self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._sock = None
        self._connected.clear()
        # paho has no public way to drop a socket without sending DISCONNECT, which would
        # cancel the Last Will; a failed attempt must keep it armed.
        with contextlib.suppress(Exception):
            self._client._sock_close()

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkStopped("link stopped before the broker acknowledged"))
        self._pending.clear()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Raises LinkError naming the missing or unusable file (a box not yet enrolled, say)."""
    for path in (tls.ca_file, tls.cert_file, tls.key_file):
        if path is not None and not path.is_file():
            raise LinkError(f"TLS file {path} does not exist: has this box enrolled "
                            "(tiepdan-enroll)?")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file),
                                    str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise LinkError(f"TLS material unusable ({tls.ca_file}, {tls.cert_file}, "
                        f"{tls.key_file}): {exc}") from None
    return context


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def _log_task_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("mqtt_on_connect_failed error=%s", _describe(task.exception()))  # type: ignore[arg-type]
