"""Bounded mailboxes: the only queue an actor reads from.

A mailbox is an anyio memory object stream with a *finite* buffer. When it is full,
:meth:`Mailbox.put` waits, and that wait is the backpressure that travels from a slow store-writer
back to the bus reader. There is no unbounded variant on purpose: an unbounded queue turns overload
into memory growth (trio deprecated its own for that reason).

Closing has two flavours, kept apart like trio's ``ClosedResourceError``/``BrokenResourceError``:

* :meth:`Mailbox.close` - the owner closed it. Later puts and gets raise :class:`ClosedMailbox`.
* :meth:`Mailbox.close_receiving` - the consumer is gone (its actor stopped or crashed). Later puts,
  and puts already waiting for room, raise :class:`BrokenMailbox`, so no sender hangs on a mailbox
  nobody will ever drain.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn, TypeVar, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ctxplane.runtime.exceptions import BrokenMailbox, ClosedMailbox, MailboxFull

__all__ = ("Mailbox", "MailboxStatistics", "NoPublicConstructor", "open_mailbox")

_T = TypeVar("_T")

# The anyio errors a stream operation raises once either end is closed. Which one surfaces depends
# on the close order and on where the waiter was parked, so the mailbox reports its *own* record of
# why it closed instead of trusting the anyio type.
_STREAM_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class NoPublicConstructor(type):
    """Metaclass for kernel objects that only a factory may build (after ``trio._util``).

    ``Cls(...)`` raises TypeError; the factory calls ``Cls._create(...)``. This keeps invariants
    (a mailbox always has a validated capacity and both stream ends) out of the caller's hands.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "use its factory (open_mailbox, Registry.ref, ...)"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


@dataclasses.dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A point-in-time view of one mailbox, for metrics and tests.

    Attributes:
        name: the mailbox (actor) name.
        depth: messages buffered and not yet taken by the receiver.
        capacity: the most messages the buffer holds before ``put`` waits.
        waiting_senders: tasks parked in ``put`` because the buffer is full.
        waiting_receivers: tasks parked in ``get`` because the buffer is empty.
    """

    name: str
    depth: int
    capacity: int
    waiting_senders: int
    waiting_receivers: int


def open_mailbox(capacity: int, name: str) -> Mailbox:
    """Create a bounded mailbox.

    Args:
        capacity: how many messages may wait in the buffer; required and at least 1. Choose it
            from the consumer's batch size: big enough to keep the consumer busy between
            producer wake-ups, small enough that memory stays flat under a producer burst.
        name: shown in statistics and error messages (normally the actor's name).

    Returns:
        An open :class:`Mailbox`.

    Raises:
        TypeError: ``capacity`` is not an int (``math.inf`` is refused on purpose).
        ValueError: ``capacity`` is less than 1.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(
            f"mailbox {name!r}: capacity must be an int, got {capacity!r}; "
            "mailboxes are always bounded"
        )
    if capacity < 1:
        raise ValueError(
            f"mailbox {name!r}: capacity must be >= 1, got {capacity}; a bounded buffer is "
            "what turns overload into backpressure"
        )
    send, receive = anyio.create_memory_object_stream[object](capacity)
    return Mailbox._create(name, capacity, send, receive)


@final
class Mailbox(metaclass=NoPublicConstructor):
    """A bounded FIFO of messages. Build it with :func:`open_mailbox`.

    Every waiting operation has a non-waiting twin, and the waiting one tries the fast path
    first: a ``put`` into a mailbox with room, or a ``get`` from a non-empty one, completes
    without a scheduling point (so it is also not a cancellation point).

    Invariant: ``_gone`` is None while open, else the exception type every later operation
    raises; it is set once and never changes back.
    """

    __slots__ = ("_capacity", "_gone", "_receive", "_send", "name")

    def __init__(
        self,
        name: str,
        capacity: int,
        send: MemoryObjectSendStream[object],
        receive: MemoryObjectReceiveStream[object],
    ) -> None:
        self.name = name
        self._capacity = capacity
        self._send = send
        self._receive = receive
        self._gone: type[ClosedMailbox] | type[BrokenMailbox] | None = None

    def __repr__(self) -> str:
        state = "open" if self._gone is None else self._gone.__name__
        return f"<Mailbox {self.name!r} {state} capacity={self._capacity}>"

    @property
    def capacity(self) -> int:
        """The most messages the buffer holds."""
        return self._capacity

    @property
    def is_open(self) -> bool:
        """False once :meth:`close` or :meth:`close_receiving` was called."""
        return self._gone is None

    # -- sending ------------------------------------------------------------------------------

    async def put(self, item: object) -> None:
        """Append ``item``, waiting while the mailbox is full (backpressure).

        Raises:
            ClosedMailbox: the owner closed the mailbox, before or while we waited.
            BrokenMailbox: the receiving side is gone, before or while we waited; the item was
                not delivered.
        """
        try:
            self._send.send_nowait(item)
            return
        except anyio.WouldBlock:
            pass  # full: fall through to the waiting path below
        except _STREAM_GONE:
            self._raise_gone()
        try:
            await self._send.send(item)
        except _STREAM_GONE:
            self._raise_gone()

    def put_nowait(self, item: object) -> None:
        """Append ``item`` if there is room right now.

        Raises:
            MailboxFull: the buffer holds ``capacity`` messages.
            ClosedMailbox: the owner closed the mailbox.
            BrokenMailbox: the receiving side is gone.
        """
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            raise MailboxFull(
                f"mailbox {self.name!r} is full ({self._capacity} messages); "
                "use put() to wait for room, or shed the message"
            ) from None
        except _STREAM_GONE:
            self._raise_gone()

    def try_put(self, item: object) -> bool:
        """Append ``item`` if there is room right now; return False when full.

        The cheap twin of :meth:`put_nowait` for callers that treat "full" as a normal outcome
        (load shedding), so no exception object is built per refused message.

        Raises:
            ClosedMailbox: the owner closed the mailbox.
            BrokenMailbox: the receiving side is gone.
        """
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            return False
        except _STREAM_GONE:
            self._raise_gone()
        return True

    # -- receiving ----------------------------------------------------------------------------

    async def get(self) -> object:
        """Take the oldest message, waiting while the mailbox is empty.

        Raises:
            ClosedMailbox: the mailbox was closed (by either method) before or while we waited.
        """
        try:
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass  # empty: fall through to the waiting path below
        except _STREAM_GONE:
            self._raise_closed_for_get()
        try:
            return await self._receive.receive()
        except _STREAM_GONE:
            self._raise_closed_for_get()

    def get_nowait(self) -> object:
        """Take the oldest message if there is one.

        Raises:
            anyio.WouldBlock: the mailbox is empty.
            ClosedMailbox: the mailbox was closed.
        """
        try:
            return self._receive.receive_nowait()
        except _STREAM_GONE:
            self._raise_closed_for_get()

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the mailbox as its owner. Idempotent; the first close decides the error type.

        Afterwards ``put``/``put_nowait``/``get``/``get_nowait`` raise :class:`ClosedMailbox`;
        tasks waiting in ``put`` or ``get`` are woken and raise it too. Buffered messages are
        dropped.
        """
        if self._gone is None:
            self._gone = ClosedMailbox
            # Send side first: that wakes parked receivers (end of stream) and withdraws parked
            # senders; then the receive side, releasing anything left.
            self._send.close()
            self._receive.close()

    def close_receiving(self) -> None:
        """Declare the consumer gone (its actor stopped or crashed). Idempotent.

        Afterwards puts raise :class:`BrokenMailbox`, and so do senders already parked in
        ``put`` waiting for room: nobody hangs on a mailbox that will never be drained.
        ``get`` raises :class:`ClosedMailbox`. Buffered messages are dropped.
        """
        if self._gone is None:
            self._gone = BrokenMailbox
            # Receive side first: closing it wakes every parked sender with "broken".
            self._receive.close()
            self._send.close()

    def statistics(self) -> MailboxStatistics:
        """Return the current depth, capacity and waiting tasks.

        A closed mailbox reports depth 0 and no waiters: its buffered messages were dropped and
        every parked task was released by the close.
        """
        if self._gone is not None:
            return MailboxStatistics(self.name, 0, self._capacity, 0, 0)
        s = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            depth=s.current_buffer_used,
            capacity=self._capacity,
            waiting_senders=s.tasks_waiting_send,
            waiting_receivers=s.tasks_waiting_receive,
        )

    # -- errors -------------------------------------------------------------------------------

    def _raise_gone(self) -> NoReturn:
        if self._gone is BrokenMailbox:
            raise BrokenMailbox(
                f"mailbox {self.name!r}: the receiver is gone (its actor stopped or crashed); "
                "the message was not delivered"
            ) from None
        raise ClosedMailbox(f"mailbox {self.name!r} is closed") from None

    def _raise_closed_for_get(self) -> NoReturn:
        raise ClosedMailbox(
            f"mailbox {self.name!r} is closed; nothing more can be received"
        ) from None
