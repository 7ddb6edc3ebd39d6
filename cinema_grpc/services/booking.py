"""cinema.booking.v1.BookingService: holds, counter sales, bookings and the seat stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from cinema.booking.v1 import booking_pb2 as pb
from cinema.booking.v1 import booking_pb2_grpc
from cinema_grpc.domain.booking import use_cases as uc
from cinema_grpc.domain.booking.counter_refunds import record_counter_refund
from cinema_grpc.domain.booking.model import (
    Booking,
    BookingRules,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldState,
    RefundState,
    SaleChannel,
    SeatEvent,
    SeatMap,
    SeatState,
    SeatStatus,
)
from cinema_grpc.domain.errors import Violations, invalid
from cinema_grpc.domain.pagination import page_request
from cinema_grpc.domain.payment import use_cases as payment_uc
from cinema_grpc.domain.payment.use_cases import PaymentRules
from cinema_grpc.domain.ports import AvailabilityBus, BookingFilter, Clock, HoldFilter, PaymentGateway, UnitOfWork
from cinema_grpc.domain.screening.model import Seat, SeatKind
from cinema_grpc.services.access import current_caller
from cinema_grpc.services.convert import Context, money, parse_id, request_key_of, require_id, timestamp
from cinema_grpc.services.screening import KIND_NUMBERS, seat_kind

_SEAT_STATES = {
    SeatState.FREE: pb.SEAT_STATE_FREE,
    SeatState.HELD: pb.SEAT_STATE_HELD,
    SeatState.SOLD: pb.SEAT_STATE_SOLD,
    SeatState.OUT_OF_SERVICE: pb.SEAT_STATE_OUT_OF_SERVICE,
}
_HOLD_STATES = {
    HoldState.ACTIVE: pb.HOLD_STATE_ACTIVE,
    HoldState.RELEASED: pb.HOLD_STATE_RELEASED,
    HoldState.EXPIRED: pb.HOLD_STATE_EXPIRED,
    HoldState.CONVERTED: pb.HOLD_STATE_CONVERTED,
}
_BOOKING_STATES = {
    BookingState.CONFIRMED: pb.BOOKING_STATE_CONFIRMED,
    BookingState.CANCELLED: pb.BOOKING_STATE_CANCELLED,
}
_CHANNELS = {SaleChannel.COUNTER: pb.SALE_CHANNEL_COUNTER, SaleChannel.ONLINE: pb.SALE_CHANNEL_ONLINE}
_PAYMENTS = {CounterPayment.CASH: pb.COUNTER_PAYMENT_CASH, CounterPayment.CARD_PRESENT: pb.COUNTER_PAYMENT_CARD_PRESENT}
_PAYMENT_OF = {number: payment for payment, number in _PAYMENTS.items()}
_REFUNDS = {
    RefundState.NONE: pb.REFUND_STATE_NONE,
    RefundState.PENDING: pb.REFUND_STATE_PENDING,
    RefundState.REFUNDED: pb.REFUND_STATE_REFUNDED,
}


def claimed_seat_message(seat: ClaimedSeat) -> pb.ClaimedSeat:
    return pb.ClaimedSeat(
        seat_id=str(seat.seat_id),
        row_label=seat.row_label,
        number=seat.number,
        kind=KIND_NUMBERS[seat.kind],
        price=money(seat.price),
    )


def hold_message(hold: Hold, rules: BookingRules, clock: Clock) -> pb.Hold:
    state = hold.shown_state(clock.now())
    message = pb.Hold(
        id=str(hold.id),
        showtime_id=str(hold.showtime_id),
        customer_id=str(hold.customer_id),
        seats=[claimed_seat_message(seat) for seat in hold.seats],
        total=money(hold.total),
        state=_HOLD_STATES[state],
        expire_time=timestamp(hold.expires_at),
        extensions_left=max(rules.max_extensions - hold.extensions_used, 0),
        create_time=timestamp(hold.created_at),
        ended_by=str(hold.ended_by) if hold.ended_by else "",
        end_reason=hold.end_reason,
        seat_map_version=hold.seat_map_version,
    )
    # The deadlines that still mean something: only while the hold keeps its seats.
    if state is HoldState.ACTIVE:
        message.keep_until.CopyFrom(timestamp(hold.kept_until))
        if hold.payment_deadline is not None:
            message.payment_deadline.CopyFrom(timestamp(hold.payment_deadline))
    return message


def booking_message(booking: Booking) -> pb.Booking:
    message = pb.Booking(
        id=str(booking.id),
        showtime_id=str(booking.showtime_id),
        customer_id=str(booking.customer_id),
        hold_id=str(booking.hold_id),
        tickets=[pb.Ticket(id=str(t.id), seat=claimed_seat_message(t.seat), valid=t.valid) for t in booking.tickets],
        total=money(booking.total),
        state=_BOOKING_STATES[booking.state],
        channel=_CHANNELS[booking.channel],
        counter_payment=_PAYMENTS[booking.counter_payment]
        if booking.counter_payment
        else pb.COUNTER_PAYMENT_UNSPECIFIED,
        refund_state=_REFUNDS[booking.refund_state],
        create_time=timestamp(booking.created_at),
        cancel_reason=booking.cancel_reason,
        cancelled_by=str(booking.cancelled_by) if booking.cancelled_by else "",
    )
    if booking.cancelled_at is not None:
        message.cancel_time.CopyFrom(timestamp(booking.cancelled_at))
    return message


def _seat_message(status: SeatStatus) -> pb.SeatAvailability:
    return pb.SeatAvailability(
        seat_id=str(status.seat.id),
        row_label=status.seat.row_label,
        number=status.seat.number,
        column=status.seat.column,
        kind=KIND_NUMBERS[status.seat.kind],
        state=_SEAT_STATES[status.state],
        holder_id=str(status.holder_id) if status.holder_id else "",
        hold_id=str(status.hold_id) if status.hold_id else "",
    )


class _SeatPieces:
    """Each seat's part of a serialized SeatMap (its field of the seat map: tag, length and
    the SeatAvailability), made once per seat and state. Serialized messages concatenated are
    one message with their repeated fields concatenated, so a seat map is its head and the
    pieces of its seats.

    Statuses are known by identity: the storage keeps a hall's unclaimed statuses (and their
    seats) between reads, so most are found by their id; a claimed seat's status is new with
    each read and found by its seat and state. Whatever is known here is kept with its piece,
    so its id is not reused meanwhile. A seat shown with its holder (to staff) is made each time.
    """

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._statuses: dict[int, tuple[SeatStatus, bytes]] = {}
        self._claimed: dict[tuple[int, int], tuple[Seat, bytes]] = {}

    def message(self, seat_map: SeatMap) -> pb.SeatMap:
        head = pb.SeatMap(showtime_id=str(seat_map.showtime_id), version=seat_map.version).SerializeToString()
        statuses = self._statuses
        pieces = [head]
        for status in seat_map.seats:
            known = statuses.get(id(status))
            pieces.append(known[1] if known is not None and known[0] is status else self._piece(status))
        return pb.SeatMap.FromString(b"".join(pieces))

    def _piece(self, status: SeatStatus) -> bytes:
        if status.holder_id is not None or status.hold_id is not None:
            return pb.SeatMap(seats=[_seat_message(status)]).SerializeToString()
        state = _SEAT_STATES[status.state]
        if status.state is SeatState.FREE or status.state is SeatState.OUT_OF_SERVICE:
            # As the storage keeps them: known by this very status from now on.
            piece = pb.SeatMap(seats=[_seat_message(status)]).SerializeToString()
            self._keep(self._statuses, id(status), (status, piece))
            return piece
        key = (id(status.seat), state)
        claimed = self._claimed.get(key)
        if claimed is not None and claimed[0] is status.seat:
            return claimed[1]
        piece = pb.SeatMap(seats=[_seat_message(status)]).SerializeToString()
        self._keep(self._claimed, key, (status.seat, piece))
        return piece

    def _keep(self, known: dict[Any, Any], key: Any, value: Any) -> None:
        if len(known) >= self._size:
            known.clear()
        known[key] = value


_PIECES = _SeatPieces()


def seat_map_message(seat_map: SeatMap) -> pb.SeatMap:
    return _PIECES.message(seat_map)


def seat_changes_message(event: SeatEvent) -> pb.SeatChanges:
    message = pb.SeatChanges(
        showtime_id=str(event.showtime_id),
        version=event.version,
        changes=[pb.SeatChange(seat_id=str(c.seat_id), state=_SEAT_STATES[c.state]) for c in event.changes],
    )
    if event.recorded_at is not None:
        message.change_time.CopyFrom(timestamp(event.recorded_at))
    return message


class _StreamMessages:
    """Watchers of a showtime receive the very same seat maps and events: each is turned into a
    message and serialized once, not once per watcher. The bytes are written as they are (the
    stream's serializer passes bytes through, see services.interceptors)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._recent: dict[int, tuple[SeatMap | SeatEvent, bytes]] = {}

    def get(self, item: SeatMap | SeatEvent) -> bytes:
        known = self._recent.get(id(item))
        if known is not None and known[0] is item:
            return known[1]
        if isinstance(item, SeatMap):
            message = pb.SeatAvailabilityEvent(snapshot=seat_map_message(item))
        else:
            message = pb.SeatAvailabilityEvent(changes=seat_changes_message(item))
        serialized = message.SerializeToString()
        if len(self._recent) >= self._size:
            self._recent.clear()
        # The item is kept with its bytes, so its id cannot be reused while it is here.
        self._recent[id(item)] = (item, serialized)
        return serialized


class BookingServicer(booking_pb2_grpc.BookingServiceServicer):
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        clock: Clock,
        rules: BookingRules,
        bus: AvailabilityBus,
        gateway: PaymentGateway,
        payment_rules: PaymentRules,
    ) -> None:
        self._uow = unit_of_work
        self._clock = clock
        self._rules = rules
        self._bus = bus
        self._gateway = gateway
        self._payment_rules = payment_rules
        self._seat_maps = uc.SharedSeatMapReads(unit_of_work, clock)
        self._stream_messages = _StreamMessages()

    def _hold(self, hold: Hold) -> pb.Hold:
        return hold_message(hold, self._rules, self._clock)

    async def HoldSeats(self, request: pb.HoldSeatsRequest, context: Context) -> pb.Hold:
        violations = Violations()
        showtime_id = parse_id(violations, "showtime_id", request.showtime_id)
        if not request.seat_ids:
            violations.add("seat_ids", "REQUIRED", "name at least one seat")
        seat_ids = [parse_id(violations, f"seat_ids[{i}]", value) for i, value in enumerate(request.seat_ids[:1000])]
        if len(set(request.seat_ids)) != len(request.seat_ids):
            violations.add("seat_ids", "DUPLICATE", "a seat is named twice")
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert showtime_id is not None
        cmd = uc.HoldSeats(showtime_id, tuple(s for s in seat_ids if s is not None), key)
        return self._hold(await uc.hold_seats(self._uow(), self._clock, self._rules, caller, cmd))

    async def HoldBestAvailable(self, request: pb.HoldBestAvailableRequest, context: Context) -> pb.Hold:
        violations = Violations()
        showtime_id = parse_id(violations, "showtime_id", request.showtime_id)
        if request.count < 1:
            violations.add("count", "OUT_OF_RANGE", "must be at least 1")
        kind = seat_kind(violations, "kind", request.kind, default=SeatKind.STANDARD)
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert showtime_id is not None
        cmd = uc.HoldBestAvailable(showtime_id, request.count, kind, key)
        return self._hold(await uc.hold_seats(self._uow(), self._clock, self._rules, caller, cmd))

    async def GetHold(self, request: pb.GetHoldRequest, context: Context) -> pb.Hold:
        hold_id = require_id("hold_id", request.hold_id)
        return self._hold(await uc.get_hold(self._uow(), current_caller(), hold_id))

    async def ListHolds(self, request: pb.ListHoldsRequest, context: Context) -> pb.ListHoldsResponse:
        violations = Violations()
        showtime_id = parse_id(violations, "showtime_id", request.showtime_id, required=False)
        customer_id = parse_id(violations, "customer_id", request.customer_id, required=False)
        violations.raise_if_any()
        caller = current_caller()
        wanted = HoldFilter(customer_id=customer_id, showtime_id=showtime_id)
        page = page_request(request.page_size, request.page_token, "ListHolds", wanted, caller.owner_key())
        result = await uc.list_holds(self._uow(), self._clock, caller, wanted, page)
        return pb.ListHoldsResponse(
            holds=[self._hold(h) for h in result.items], next_page_token=result.next_page_token(page)
        )

    async def ExtendHold(self, request: pb.ExtendHoldRequest, context: Context) -> pb.Hold:
        hold_id = require_id("hold_id", request.hold_id)
        return self._hold(await uc.extend_hold(self._uow(), self._clock, self._rules, current_caller(), hold_id))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Context) -> pb.Hold:
        hold_id = require_id("hold_id", request.hold_id)
        hold = await payment_uc.release_hold(
            self._uow, self._gateway, self._clock, self._payment_rules, current_caller(), hold_id
        )
        return self._hold(hold)

    async def SellHoldAtCounter(self, request: pb.SellHoldAtCounterRequest, context: Context) -> pb.Booking:
        violations = Violations()
        hold_id = parse_id(violations, "hold_id", request.hold_id)
        payment = _PAYMENT_OF.get(request.payment)
        if payment is None:
            violations.add("payment", "INVALID_ENUM", "must be COUNTER_PAYMENT_CASH or COUNTER_PAYMENT_CARD_PRESENT")
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert hold_id is not None and payment is not None
        booking = await uc.sell_hold_at_counter(
            self._uow(), self._clock, caller, uc.SellAtCounter(hold_id, payment, key)
        )
        return booking_message(booking)

    async def GetBooking(self, request: pb.GetBookingRequest, context: Context) -> pb.Booking:
        booking_id = require_id("booking_id", request.booking_id)
        return booking_message(await uc.get_booking(self._uow(), current_caller(), booking_id))

    async def ListBookings(self, request: pb.ListBookingsRequest, context: Context) -> pb.ListBookingsResponse:
        violations = Violations()
        showtime_id = parse_id(violations, "showtime_id", request.showtime_id, required=False)
        customer_id = parse_id(violations, "customer_id", request.customer_id, required=False)
        violations.raise_if_any()
        caller = current_caller()
        wanted = BookingFilter(customer_id=customer_id, showtime_id=showtime_id)
        page = page_request(request.page_size, request.page_token, "ListBookings", wanted, caller.owner_key())
        result = await uc.list_bookings(self._uow(), caller, wanted, page)
        return pb.ListBookingsResponse(
            bookings=[booking_message(b) for b in result.items], next_page_token=result.next_page_token(page)
        )

    async def CancelBooking(self, request: pb.CancelBookingRequest, context: Context) -> pb.Booking:
        booking_id = require_id("booking_id", request.booking_id)
        booking = await uc.cancel_booking(
            self._uow(), self._clock, self._rules, current_caller(), booking_id, request.reason
        )
        return booking_message(booking)

    async def ForceReleaseHold(self, request: pb.ForceReleaseHoldRequest, context: Context) -> pb.Hold:
        hold_id = require_id("hold_id", request.hold_id)
        hold = await payment_uc.release_hold(
            self._uow,
            self._gateway,
            self._clock,
            self._payment_rules,
            current_caller(),
            hold_id,
            override_reason=request.reason,
        )
        return self._hold(hold)

    async def ForceCancelBooking(self, request: pb.ForceCancelBookingRequest, context: Context) -> pb.Booking:
        booking_id = require_id("booking_id", request.booking_id)
        booking = await uc.cancel_booking(
            self._uow(), self._clock, self._rules, current_caller(), booking_id, request.reason, force=True
        )
        return booking_message(booking)

    async def RecordCounterRefund(self, request: pb.RecordCounterRefundRequest, context: Context) -> pb.Booking:
        booking_id = require_id("booking_id", request.booking_id)
        booking = await record_counter_refund(self._uow(), self._clock, current_caller(), booking_id, request.note)
        return booking_message(booking)

    async def GetSeatMap(self, request: pb.GetSeatMapRequest, context: Context) -> pb.SeatMap:
        showtime_id = require_id("showtime_id", request.showtime_id)
        return seat_map_message(await uc.seat_map(self._uow(), self._clock, current_caller(), showtime_id))

    async def WatchSeatAvailability(  # type: ignore[override]  # serialized SeatAvailabilityEvents
        self, request: pb.WatchSeatAvailabilityRequest, context: Context
    ) -> AsyncIterator[bytes]:
        showtime_id = require_id("showtime_id", request.showtime_id)
        if request.since_version < 0:
            raise invalid("since_version", "OUT_OF_RANGE", "must not be negative")
        stream = uc.watch_seats(
            self._uow, self._bus, self._seat_maps, current_caller(), showtime_id, request.since_version
        )
        async for item in stream:
            yield self._stream_messages.get(item)
