"""The staff console over HTTP (no browser): sign-in policy, CSRF, cookies, and gRPC refusals
shown on the form fields they concern, against the real server through its gRPC API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import httpx
import psycopg
import pytest
from starlette.routing import Route

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.console.runner import ConsoleConfig, ConsoleServer
from cinema_grpc.console.sessions import COOKIE
from cinema_grpc.settings import Settings
from tests.booking_data import customer, hold, open_sale, states
from tests.conftest import RunningServer
from tests.console_client import account, csrf_of, running_console, signed_in_client
from tests.screening_data import (
    CINEMA_TIME_ZONE,
    grid,
    make_cinema,
    make_hall,
    make_movie,
    showtime_request,
    tomorrow_at,
)
from tests.tls_files import self_signed_certificate

Db = psycopg.Connection[tuple[object, ...]]
ZONE = ZoneInfo(CINEMA_TIME_ZONE)


@pytest.fixture(scope="module")
def console(server: RunningServer) -> Iterator[ConsoleServer]:
    with running_console(server) as running:
        yield running


@pytest.fixture
def staff(console: ConsoleServer, channel: grpc.Channel, db: Db) -> Iterator[httpx.Client]:
    """A staff member signed in to the console, on an emptied database."""
    user, password = account(channel, db, "STAFF")
    client = signed_in_client(console.url, user.email, password)
    yield client
    client.close()


def test_a_customer_is_refused_with_a_clear_message_and_gets_no_session(
    console: ConsoleServer, channel: grpc.Channel, db: Db
) -> None:
    customer, password = account(channel, db)
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        refused = client.post("/login", data={"email": customer.email, "password": password, "csrf_token": token})
        assert refused.status_code == 403
        assert "Customer accounts cannot sign in here" in refused.text
        assert client.get("/cinemas").headers["location"].startswith("/login")


def test_a_wrong_password_shows_the_identity_services_refusal_on_the_form(
    console: ConsoleServer, channel: grpc.Channel, db: Db
) -> None:
    user, _ = account(channel, db, "STAFF")
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        refused = client.post("/login", data={"email": user.email, "password": "not it at all", "csrf_token": token})
        assert refused.status_code == 403
        assert "INVALID_CREDENTIALS" in refused.text
        assert "Traceback" not in refused.text


def test_the_session_cookie_is_http_only_and_same_site_strict_and_sign_out_ends_it(
    console: ConsoleServer, channel: grpc.Channel, db: Db
) -> None:
    user, password = account(channel, db, "STAFF")
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        before = client.cookies[COOKIE]
        signed_in = client.post("/login", data={"email": user.email, "password": password, "csrf_token": token})
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain HTTP here
        assert client.cookies[COOKIE] != before, "signing in must issue a new session id"
        page = client.get("/cinemas")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        client.post("/logout", data={"csrf_token": csrf_of(page.text)})
        assert client.get("/cinemas").headers["location"].startswith("/login")


def test_every_form_post_without_its_csrf_token_is_refused_and_changes_nothing(
    console: ConsoleServer, staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    cinema = make_cinema(screening)
    posts = [
        route.path
        for route in console.app.routes
        if isinstance(route, Route) and route.methods is not None and "POST" in route.methods
    ]
    assert len(posts) >= 15
    for path in posts:
        url = path.replace("{cinema_id}", cinema.id)
        for name in ("hall_id", "seat_id", "movie_id", "showtime_id", "hold_id", "booking_id", "payment_id"):
            url = url.replace("{" + name + "}", "00000000-0000-0000-0000-000000000000")
        data = {"name": "Sneaky", "layout": "A 5", "csrf_token": "forged"}
        refused = staff.post(url, data=data)
        assert refused.status_code == 403, url
        assert "security token" in refused.text
        assert staff.post(url, data={"name": "Sneaky", "layout": "A 5"}).status_code == 403, url
    assert list(screening.ListHalls(spb.ListHallsRequest(cinema_id=cinema.id)).halls) == []


def test_a_refused_layout_shows_the_servers_field_violation_on_the_layout_field_and_creates_nothing(
    staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    cinema = make_cinema(screening)
    form = staff.get(f"/cinemas/{cinema.id}/halls/new")
    refused = staff.post(
        f"/cinemas/{cinema.id}/halls",
        data={"name": "Hall 9", "layout": "A 10 gap=12\nB 8", "csrf_token": csrf_of(form.text)},
    )
    assert refused.status_code == 400
    assert 'id="err-layout"' in refused.text
    assert "row 1, gap columns: columns [12] are outside 1..10" in refused.text
    assert 'aria-invalid="true"' in refused.text
    assert "Traceback" not in refused.text
    assert list(screening.ListHalls(spb.ListHallsRequest(cinema_id=cinema.id)).halls) == []


def test_an_empty_hall_name_is_shown_on_the_name_field(staff: httpx.Client, screening: ScreeningServiceStub) -> None:
    cinema = make_cinema(screening)
    form = staff.get(f"/cinemas/{cinema.id}/halls/new")
    refused = staff.post(
        f"/cinemas/{cinema.id}/halls", data={"name": "", "layout": "A 10", "csrf_token": csrf_of(form.text)}
    )
    assert refused.status_code == 400
    error = refused.text.split('id="err-name"', 1)[1].split("</p>", 1)[0]
    assert error.strip(">").strip(), "the name field carries the server's message"


def test_the_layout_preview_draws_kinds_and_aisles(staff: httpx.Client, screening: ScreeningServiceStub) -> None:
    cinema = make_cinema(screening)
    token = csrf_of(staff.get(f"/cinemas/{cinema.id}/halls/new").text)
    preview = staff.post(
        "/layout-preview", data={"layout": "A 5 premium gap=3\nB 4 wheelchair=1"}, headers={"X-CSRF-Token": token}
    )
    assert preview.status_code == 200
    assert "8 seats" in preview.text
    assert preview.text.count('class="gap"') == 1
    assert 'title="A4 premium"' in preview.text  # column 5 is seat 4: the aisle is not numbered
    assert 'title="B1 wheelchair"' in preview.text


def test_an_overlapping_showtime_shows_the_blocking_one_and_the_free_halls(
    staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    cinema = make_cinema(screening)
    busy = make_hall(screening, cinema.id, "Hall 1", grid("AB", 6))
    make_hall(screening, cinema.id, "Hall 2", grid("AB", 8))
    movie = make_movie(screening, 100)
    start = tomorrow_at(16)
    first = screening.CreateShowtime(showtime_request(busy, movie, start))
    local = start.astimezone(ZONE)
    page = staff.get(f"/halls/{busy.id}/schedule?week={local.date().isoformat()}")
    assert first.id in page.text, page.text.split("<main", 1)[1]
    refused = staff.post(
        f"/halls/{busy.id}/showtimes",
        data={
            "movie_id": movie.id,
            "day": local.date().isoformat(),
            "start": (local + timedelta(minutes=45)).strftime("%H:%M"),
            "price_standard": "11.50",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert refused.status_code == 409
    assert "SHOWTIME_OVERLAP" in refused.text
    assert f'href="/showtimes/{first.id}"' in refused.text
    assert "Schedule in Hall 2 (16 seats) instead" in refused.text
    assert "This hall is busy then" in refused.text.split('id="err-start_time"', 1)[1]
    assert len(screening.ListShowtimes(spb.ListShowtimesRequest(hall_id=busy.id)).showtimes) == 1


def test_a_price_with_too_many_decimals_is_shown_on_its_field_and_nothing_is_scheduled(
    staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id)
    movie = make_movie(screening)
    page = staff.get(f"/halls/{hall.id}/schedule")
    refused = staff.post(
        f"/halls/{hall.id}/showtimes",
        data={
            "movie_id": movie.id,
            "day": "2031-05-05",
            "start": "18:00",
            "price_standard": "11.505",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert refused.status_code == 400
    assert "EUR amounts have at most 2 decimals" in refused.text.split('id="err-price_standard"', 1)[1]
    assert list(screening.ListShowtimes(spb.ListShowtimesRequest(hall_id=hall.id)).showtimes) == []


def test_an_access_token_about_to_expire_is_refreshed_once_through_the_identity_service(
    console: ConsoleServer, staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    store = console.app.state.console.sessions
    session = store._sessions[staff.cookies[COOKIE]]
    old_access, old_refresh = session.access_token, session.refresh_token
    cinema = make_cinema(screening)
    session.access_expires = datetime.now(session.last_seen.tzinfo) - timedelta(seconds=1)
    # The cinema page starts with two calls at once: one refresh serves both (a second use of
    # the same refresh token would look stolen and end the session).
    assert staff.get(f"/cinemas/{cinema.id}").status_code == 200
    assert session.access_token != old_access and session.refresh_token != old_refresh
    assert staff.get("/movies").status_code == 200


def test_an_unknown_hall_is_a_readable_not_found_page(staff: httpx.Client) -> None:
    page = staff.get("/halls/00000000-0000-0000-0000-000000000000")
    assert page.status_code == 404
    assert "HALL_NOT_FOUND" in page.text and "Traceback" not in page.text


def test_the_console_reaches_a_tls_grpc_port_when_it_trusts_the_certificate(
    server_settings: Settings, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    running = RunningServer(server_settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key}))
    console = ConsoleServer(f"127.0.0.1:{running.port}", ConsoleConfig("127.0.0.1", 0), grpc_ca=cert)
    try:
        running.run(console.start())
        with httpx.Client(base_url=console.url) as client:
            token = csrf_of(client.get("/login").text)
            data = {"email": "nobody@example.com", "password": "not a password", "csrf_token": token}
            assert "INVALID_CREDENTIALS" in client.post("/login", data=data).text  # the server answered
    finally:
        running.run(console.stop())
        running.stop()


def test_a_counter_sale_of_free_seats_books_them_and_a_taken_seat_is_refused_on_the_seats_field(
    staff: httpx.Client, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    sale = open_sale(screening)
    page = staff.get(f"/showtimes/{sale.showtime.id}")
    token = csrf_of(page.text)
    sold = staff.post(
        f"/showtimes/{sale.showtime.id}/counter-sale", data={"seats": "c4 C5", "payment": "cash", "csrf_token": token}
    )
    assert sold.status_code == 303 and sold.headers["location"].startswith("/bookings/")
    booking = staff.get(sold.headers["location"])
    assert "C4" in booking.text and "C5" in booking.text and "counter (cash)" in booking.text
    hold(customer(channel, db), sale, "D1")
    refused = staff.post(
        f"/showtimes/{sale.showtime.id}/counter-sale", data={"seats": "D1 D2", "payment": "card", "csrf_token": token}
    )
    assert refused.status_code == 409
    assert "SEAT_ALREADY_TAKEN" in refused.text
    seat_map = BookingServiceStub(channel).GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))
    assert states(seat_map, sale) == {"C4": bpb.SEAT_STATE_SOLD, "C5": bpb.SEAT_STATE_SOLD, "D1": bpb.SEAT_STATE_HELD}


def test_a_seat_taken_out_of_service_shows_so_on_the_hall(staff: httpx.Client, screening: ScreeningServiceStub) -> None:
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id, "Hall 1", grid("AB", 4))
    seat = hall.seats[2]
    page = staff.get(f"/halls/{hall.id}")
    refused = staff.post(
        f"/halls/{hall.id}/seats/{seat.id}/service", data={"in_service": "false", "csrf_token": csrf_of(page.text)}
    )
    assert (refused.status_code == 400 and 'id="err-reason"' not in refused.text) or "reason" in refused.text
    done = staff.post(
        f"/halls/{hall.id}/seats/{seat.id}/service",
        data={"in_service": "false", "reason": "broken armrest", "csrf_token": csrf_of(page.text)},
    )
    assert done.status_code == 303
    shown = staff.get(f"/halls/{hall.id}").text
    assert f"{seat.row_label}{seat.number}, standard, out of service: broken armrest" in shown
    assert not screening.GetHall(spb.GetHallRequest(hall_id=hall.id)).seats[2].in_service


def test_a_showtime_moves_ten_minutes_in_its_hall_keeping_its_id(
    staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    sale = open_sale(screening)
    start = sale.showtime.start_time.ToDatetime(UTC).astimezone(ZONE)
    later = start + timedelta(minutes=10)
    form = staff.get(f"/showtimes/{sale.showtime.id}/move")
    assert form.status_code == 200 and 'id="move-showtime"' in form.text
    moved = staff.post(
        f"/showtimes/{sale.showtime.id}/move",
        data={"day": later.date().isoformat(), "start": later.strftime("%H:%M"), "csrf_token": csrf_of(form.text)},
        follow_redirects=True,
    )
    assert f"Showtime moved to {later:%a %d %b %H:%M} in Main." in moved.text
    listed = screening.ListShowtimes(spb.ListShowtimesRequest(hall_id=sale.hall.id, include_cancelled=True))
    assert [(s.id, s.start_time.ToDatetime(UTC)) for s in listed.showtimes] == [
        (sale.showtime.id, later.astimezone(UTC))
    ]


def test_a_move_into_a_busy_slot_offers_the_free_halls_and_one_click_moves_it_there(
    staff: httpx.Client, screening: ScreeningServiceStub
) -> None:
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id, "Hall 1", grid("AB", 6))
    spare = make_hall(screening, cinema.id, "Hall 2", grid("AB", 8))
    movie = make_movie(screening, 100)
    start = tomorrow_at(14)
    first = screening.CreateShowtime(showtime_request(hall, movie, start))
    second = screening.CreateShowtime(showtime_request(hall, movie, start + timedelta(hours=3)))
    target = (start + timedelta(hours=2)).astimezone(ZONE)
    form = staff.get(f"/showtimes/{first.id}/move")
    refused = staff.post(
        f"/showtimes/{first.id}/move",
        data={"day": target.date().isoformat(), "start": target.strftime("%H:%M"), "csrf_token": csrf_of(form.text)},
    )
    assert refused.status_code == 409
    assert "SHOWTIME_OVERLAP" in refused.text and f'href="/showtimes/{second.id}"' in refused.text
    assert "Move to Hall 2 (16 seats) instead" in refused.text
    assert screening.GetShowtime(spb.GetShowtimeRequest(showtime_id=first.id)) == first
    alternative = staff.post(
        f"/showtimes/{first.id}/move",
        data={
            "hall_id": spare.id,
            "day": target.date().isoformat(),
            "start": target.strftime("%H:%M"),
            "csrf_token": csrf_of(refused.text),
        },
        follow_redirects=True,
    )
    assert f"Showtime moved to {target:%a %d %b %H:%M} in Hall 2." in alternative.text
    moved = screening.GetShowtime(spb.GetShowtimeRequest(showtime_id=first.id))
    assert (moved.hall_id, moved.start_time.ToDatetime(UTC)) == (spare.id, target.astimezone(UTC))


def test_a_showtime_with_held_seats_is_not_moved_and_says_why(
    staff: httpx.Client, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    busy = open_sale(screening, cinema_name="Rex")
    hold(customer(channel, db), busy, "C3")
    form = staff.get(f"/showtimes/{busy.showtime.id}/move")
    assert "1 held: a showtime with" in form.text.replace("\n", " ")
    later = busy.showtime.start_time.ToDatetime(UTC).astimezone(ZONE) + timedelta(hours=4)
    refused = staff.post(
        f"/showtimes/{busy.showtime.id}/move",
        data={"day": later.date().isoformat(), "start": later.strftime("%H:%M"), "csrf_token": csrf_of(form.text)},
    )
    assert refused.status_code == 409 and "[SHOWTIME_HAS_SALES]" in refused.text
    assert screening.GetShowtime(spb.GetShowtimeRequest(showtime_id=busy.showtime.id)) == busy.showtime


def test_admins_see_who_holds_a_seat_by_name_and_e_mail(
    console: ConsoleServer, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    sale = open_sale(screening)
    ana = customer(channel, db)
    held = hold(ana, sale, "B2")
    admin, password = account(channel, db, "ADMIN")
    client = signed_in_client(console.url, admin.email, password)
    panel = client.get(f"/showtimes/{sale.showtime.id}/seats/{sale.seat('B2')}").text
    client.close()
    assert ana.user.email in panel and ana.user.id in panel and held.id in panel
    assert 'id="force-release"' in panel


def test_a_card_payment_shows_its_audit_trail_and_takes_a_partial_refund(
    staff: httpx.Client, screening: ScreeningServiceStub, admin_channel: grpc.Channel
) -> None:
    sale = open_sale(screening)
    held = BookingServiceStub(admin_channel).HoldSeats(
        bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("E1", "E2"))
    )
    payment = PaymentServiceStub(admin_channel).ChargeAtTerminal(
        ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa")
    )
    found = staff.get("/payments", params={"payment_id": payment.id}, follow_redirects=True)
    assert "paid" in found.text and "24.00 EUR" in found.text
    refused = staff.post(
        f"/payments/{payment.id}/refund", data={"amount": "5.001", "reason": "x", "csrf_token": csrf_of(found.text)}
    )
    assert "EUR amounts have at most 2 decimals" in refused.text.split('id="err-amount"', 1)[1]
    refunded = staff.post(
        f"/payments/{payment.id}/refund",
        data={"amount": "5.00", "reason": "goodwill", "csrf_token": csrf_of(found.text)},
        follow_redirects=True,
    )
    assert "Refund requested." in refunded.text
    booking_page = staff.get(f"/bookings/{payment.booking_id}").text
    assert f'href="/payments/{payment.id}"' in booking_page.split('id="payments"', 1)[1]
    events = PaymentServiceStub(admin_channel).ListPaymentEvents(ppb.ListPaymentEventsRequest(payment_id=payment.id))
    assert all(event.hash[:12] in refunded.text for event in events.events)
    assert any("goodwill" in event.note for event in events.events)


def test_audit_verification_is_for_admins(
    console: ConsoleServer, staff: httpx.Client, channel: grpc.Channel, db: Db
) -> None:
    page = staff.get("/audit")
    refused = staff.post("/audit", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403 and "Your role may not do this." in refused.text
    admin, password = account(channel, db, "ADMIN")
    client = signed_in_client(console.url, admin.email, password)
    page = client.get("/audit")
    verdict = client.post("/audit", data={"csrf_token": csrf_of(page.text)})
    client.close()
    assert verdict.status_code == 200 and "Intact:" in verdict.text


@pytest.mark.parametrize("target", ["//evil.example/x", "/\\evil.example", "/\t/evil.example", "https://evil.example"])
def test_signing_in_never_sends_staff_to_another_site(
    console: ConsoleServer, channel: grpc.Channel, db: Db, target: str
) -> None:
    user, password = account(channel, db, "STAFF")
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        data = {"email": user.email, "password": password, "csrf_token": token, "next": target}
        assert client.post("/login", data=data).headers["location"] == "/"


def test_signing_in_returns_to_the_page_that_asked_for_it(
    console: ConsoleServer, channel: grpc.Channel, db: Db
) -> None:
    user, password = account(channel, db, "STAFF")
    with httpx.Client(base_url=console.url) as client:
        asked = client.get("/movies?q=x")
        assert asked.headers["location"] == "/login?next=%2Fmovies"
        token = csrf_of(client.get(asked.headers["location"]).text)
        data = {"email": user.email, "password": password, "csrf_token": token, "next": "/movies"}
        assert client.post("/login", data=data).headers["location"] == "/movies"


def first_event(
    client: httpx.Client, path: str, address: str, opened: contextlib.ExitStack, reading: list[Iterator[str]]
) -> str:
    """Opens a seat-map event stream as a browser at ``address`` and returns its first event
    name; the stream stays open until ``opened`` closes (its line reader is kept in ``reading``:
    a reader dropped half-way closes the connection)."""
    response = opened.enter_context(client.stream("GET", path, headers={"x-forwarded-for": address}))
    lines = response.iter_lines()
    reading.append(lines)
    for line in lines:
        if line.startswith("event: "):
            return line.removeprefix("event: ")
    raise AssertionError("the stream ended without an event")


def test_the_server_counts_each_browser_of_the_console_apart_for_its_stream_budget(
    server_settings: Settings, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    sale = open_sale(screening)
    running = RunningServer(server_settings.model_copy(update={"max_streams_per_address": 1}))
    assert running.server is not None
    console = ConsoleServer(
        f"127.0.0.1:{running.port}", ConsoleConfig("127.0.0.1", 0), proxy_key=running.server.gateway_proxy_key
    )
    user, password = account(channel, db, "STAFF")
    try:
        running.run(console.start())
        client = signed_in_client(console.url, user.email, password)
        events = f"/showtimes/{sale.showtime.id}/events"
        reading: list[Iterator[str]] = []
        with contextlib.ExitStack() as opened:
            assert first_event(client, events, "198.51.100.7", opened, reading) == "seats"
            assert first_event(client, events, "198.51.100.8", opened, reading) == "seats"  # another browser
            assert first_event(client, events, "198.51.100.7", opened, reading) == "ended"  # its second stream
        client.close()
    finally:
        running.run(console.stop())
        running.stop()


def test_the_session_cookie_is_secure_when_the_console_is_reached_over_https(console: ConsoleServer) -> None:
    # A TLS proxy on this machine in front of the console says so with X-Forwarded-Proto.
    with httpx.Client(base_url=console.url) as client:
        page = client.get("/login", headers={"x-forwarded-proto": "https"})
        assert "Secure" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
