"""The staff console: a Starlette app of server-rendered pages (Jinja2 + htmx) whose every read
and write is a call to the gRPC services, made with the signed-in staff member's token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.date_pb2 import Date
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.common.v1 import money_pb2
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.reports.v1 import reports_pb2 as rpb
from cinema.screening.v1 import screening_pb2 as spb
from cinema_grpc.console import charts
from cinema_grpc.console.backend import Backend, CallFailed, FormErrors, Metadata, call, failure_of
from cinema_grpc.console.layouts import (
    KIND_NAMES,
    KINDS,
    LayoutSyntaxError,
    hall_rows,
    layout_text,
    parse_layout,
    preview_rows,
)
from cinema_grpc.console.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    STAFF_ROLES,
    NotSignedIn,
    SessionStore,
    StaffSession,
    refresh,
    set_cookie,
    valid_token,
)
from cinema_grpc.services.access import PROXY_KEY_HEADER

HERE = Path(__file__).parent
R = TypeVar("R")
SEAT_STATES = {
    bpb.SEAT_STATE_FREE: "free",
    bpb.SEAT_STATE_HELD: "held",
    bpb.SEAT_STATE_SOLD: "sold",
    bpb.SEAT_STATE_OUT_OF_SERVICE: "out of service",
}
# Currencies whose minor unit is the unit itself (ISO 4217 exponent 0); the rest use cents.
ZERO_DECIMAL = frozenset({"JPY", "KRW", "CLP", "ISK", "VND", "XAF", "XOF", "UGX", "PYG"})
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def exponent(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL else 2


def money_text(money: money_pb2.Money) -> str:
    if not money.currency_code:
        return "-"
    places = exponent(money.currency_code)
    value = Decimal(money.amount_minor).scaleb(-places)
    return f"{value:,.{places}f} {money.currency_code}"


def parse_money(text: str, currency: str) -> money_pb2.Money:
    """'11.50' in EUR -> 1150 minor units; ValueError with a readable message otherwise."""
    try:
        amount = Decimal(text.strip().replace(",", "."))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount like 11.50") from None
    minor = amount.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency} amounts have at most {exponent(currency)} decimals")
    return money_pb2.Money(amount_minor=int(minor), currency_code=currency)


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def when(stamp: Timestamp, zone: ZoneInfo | None = None) -> datetime:
    moment = stamp.ToDatetime(UTC)
    return moment.astimezone(zone) if zone else moment


def pb_date(day: date) -> Date:
    return Date(year=day.year, month=day.month, day=day.day)


class SecurityHeaders:
    """Adds the console's security headers (a strict CSP: scripts and styles only from /static)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class CsrfRefused(Exception):
    pass


@dataclass
class Page:
    """What one request handler works with: the session, the form, and calls with its token."""

    console: Console
    request: Request
    session: StaffSession
    form: FormData | None = None

    @property
    def backend(self) -> Backend:
        return self.console.backend

    @property
    def forwarded(self) -> Metadata:
        """The browser's address for the server, which believes it from its own proxies only
        (the proxy key of `serve --console`, or CINEMA_TRUSTED_PROXIES for a separate console),
        so throttles and stream budgets count each browser, not the console as one client."""
        if self.request.client is None:
            return ()
        metadata: Metadata = (("x-forwarded-for", self.request.client.host),)
        if self.backend.proxy_key:
            metadata += ((PROXY_KEY_HEADER, self.backend.proxy_key),)
        return metadata

    async def call(self, method: Callable[..., Awaitable[R]], message: Any) -> R:
        token = await valid_token(self.backend, self.session)
        try:
            return await call(method, message, token, self.forwarded)
        except CallFailed as failure:
            if failure.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        # The access token was refused before its expiry (revoked, or a new signing key): one
        # refresh, one retry; a refused refresh signs the session out.
        await refresh(self.backend, self.session, token)
        return await call(method, message, self.session.access_token, self.forwarded)

    def value(self, name: str) -> str:
        raw = self.form.get(name) if self.form is not None else self.request.query_params.get(name)
        return raw.strip() if isinstance(raw, str) else ""

    def values(self, name: str) -> list[str]:
        if self.form is None:
            return [v for v in self.request.query_params.getlist(name) if v]
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]

    def render(self, template: str, status_code: int = 200, **context: Any) -> Response:
        # Only whole pages show (and so use up) the notices; fragments (_*.html) leave them.
        flash: list[str] = []
        if not template.startswith("_"):
            flash, self.session.flash = self.session.flash, []
        return self.console.templates.TemplateResponse(
            self.request,
            template,
            {
                "session": self.session,
                "csrf": self.session.csrf_token,
                "flash": flash,
                "errors": FormErrors(),
                **context,
            },
            status_code=status_code,
        )

    def redirect(self, url: str, message: str = "") -> Response:
        if message:
            self.session.flash.append(message)
        if self.request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": url})
        return RedirectResponse(url, status_code=303)


Handler = Callable[[Page], Awaitable[Response]]


class Console:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sessions = SessionStore()
        self.streams: set[grpc.aio.UnaryStreamCall[Any, Any]] = set()
        self.closing = False
        self.templates = Jinja2Templates(directory=HERE / "templates")
        env = self.templates.env
        env.globals.update(money=money_text, kind_names=KIND_NAMES, seat_states=SEAT_STATES)
        env.filters["local"] = lambda stamp, zone=None, fmt="%a %d %b %H:%M": when(stamp, zone).strftime(fmt)

    def close(self) -> None:
        """Ends the seat-map streams, so a stop does not wait for browsers to go away."""
        self.closing = True
        for stream in list(self.streams):
            stream.cancel()

    def page(self, handler: Handler, *, signed_in: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """Wraps a handler: session, CSRF check of every POST, sign-in, and refusals as pages."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.of(request)
            page = Page(self, request, session)
            try:
                if request.method == "POST":
                    page.form = await request.form()
                    offered = page.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                    if not session.csrf_matches(offered if isinstance(offered, str) else None):
                        raise CsrfRefused
                if signed_in and not session.signed_in:
                    raise NotSignedIn
                response = await handler(page)
            except CsrfRefused:
                response = page.render(
                    "error.html",
                    403,
                    title="Form expired",
                    message="This form was not sent from a current console page (its security token is missing "
                    "or old). Reload the page and send it again.",
                )
            except NotSignedIn:
                back = urlencode({"next": request.url.path}) if request.method == "GET" else ""
                response = page.redirect(f"/login?{back}" if back else "/login", "Please sign in.")
            except CallFailed as failure:
                response = page.render(
                    "error.html", _http_status(failure.code), title="The server refused", message=failure.summary
                )
            set_cookie(request, response, page.session)
            return response

        return endpoint


def _http_status(code: grpc.StatusCode) -> int:
    return {
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.UNAVAILABLE: 503,
    }.get(code, 502)


_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/_.~%=&?-]*")


def request_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- sign-in


async def login_form(page: Page) -> Response:
    if page.session.signed_in:
        return page.redirect("/")
    return page.render("login.html", next=page.value("next"), email="")


async def login(page: Page) -> Response:
    email, password = page.value("email"), page.form.get("password") if page.form else ""
    errors = FormErrors()
    if not email:
        errors.add("email", "Enter your e-mail address.")
    if not password:
        errors.add("password", "Enter your password.")
    pair: ipb.TokenPair | None = None
    if not errors:
        try:
            pair = await call(
                page.backend.identity.Login,
                ipb.LoginRequest(email=email, password=str(password)),
                extra=page.forwarded,
            )
        except CallFailed as failure:
            errors = FormErrors.of(failure, {"email": "email", "password": "password"})
    if pair is not None and not STAFF_ROLES & set(pair.user.roles):
        # A customer's valid sign-in: refused here, and its fresh session revoked at once.
        with contextlib.suppress(CallFailed):
            await call(page.backend.identity.Logout, ipb.LogoutRequest(), pair.access_token, page.forwarded)
        pair = None
        errors.general.append(
            "This console is for cinema staff and administrators. Customer accounts cannot sign in here."
        )
    if pair is None:
        return page.render(
            "login.html", 400 if errors.fields else 403, errors=errors, email=email, next=page.value("next")
        )
    page.session = page.console.sessions.renew(page.session)
    page.session.take(pair)
    target = page.value("next")
    return page.redirect(target if _same_site_path(target) else "/")


def _same_site_path(target: str) -> bool:
    """Whether ``next`` is a plain path of this site, so a crafted sign-in link cannot send
    staff elsewhere: ``//host``, ``/\\host`` and paths with blanks or control characters (which
    browsers strip, making ``//host`` of them) are refused."""
    return _PLAIN_PATH.fullmatch(target) is not None and not target.startswith("//")


async def logout(page: Page) -> Response:
    if page.session.signed_in:
        # An expired token needs no revoking; the session is forgotten either way.
        with contextlib.suppress(CallFailed):
            await call(page.backend.identity.Logout, ipb.LogoutRequest(), page.session.access_token, page.forwarded)
    page.console.sessions.forget(page.session)
    page.session = page.console.sessions.of(page.request)
    page.session.flash.append("You are signed out.")
    return page.redirect("/login")


# ---------------------------------------------------------------- cinemas, halls, movies


async def home(page: Page) -> Response:
    return page.redirect("/cinemas")


async def cinemas(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    listed = await page.call(page.backend.screening.ListCinemas, spb.ListCinemasRequest(page_size=100))
    return page.render("cinemas.html", status, cinemas=listed.cinemas, errors=errors or FormErrors(), form=page.form)


async def create_cinema(page: Page) -> Response:
    cinema = spb.Cinema(
        name=page.value("name"), time_zone=page.value("time_zone"), currency_code=page.value("currency_code").upper()
    )
    try:
        created = await page.call(
            page.backend.screening.CreateCinema, spb.CreateCinemaRequest(cinema=cinema, request_id=request_id())
        )
    except CallFailed as failure:
        fields = {"cinema.name": "name", "cinema.time_zone": "time_zone", "cinema.currency_code": "currency_code"}
        return await cinemas(page, FormErrors.of(failure, fields), 400)
    return page.redirect(f"/cinemas/{created.id}", f"Cinema {created.name} created.")


async def cinema_detail(page: Page) -> Response:
    cinema_id = page.request.path_params["cinema_id"]
    cinema, halls = await asyncio.gather(
        page.call(page.backend.screening.GetCinema, spb.GetCinemaRequest(cinema_id=cinema_id)),
        page.call(page.backend.screening.ListHalls, spb.ListHallsRequest(cinema_id=cinema_id, page_size=100)),
    )
    return page.render("cinema.html", cinema=cinema, halls=halls.halls)


EXAMPLE_LAYOUT = "A 10 premium\nB 12 gap=6\nC 12 gap=6 wheelchair=1 companion=2"


async def new_hall(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    cinema_id = page.request.path_params["cinema_id"]
    cinema = await page.call(page.backend.screening.GetCinema, spb.GetCinemaRequest(cinema_id=cinema_id))
    text = page.value("layout") or EXAMPLE_LAYOUT
    return page.render(
        "hall_new.html",
        status,
        cinema=cinema,
        name=page.value("name"),
        layout=text,
        errors=errors or FormErrors(),
        **_preview(text),
    )


def _preview(text: str) -> dict[str, Any]:
    try:
        layout = parse_layout(text)
    except LayoutSyntaxError as error:
        return {"preview": [], "preview_error": str(error), "seat_total": 0}
    rows = preview_rows(layout)
    return {"preview": rows, "preview_error": "", "seat_total": sum(not c.is_gap for _, cells in rows for c in cells)}


async def layout_preview(page: Page) -> Response:
    return page.render("_layout_preview.html", **_preview(page.value("layout")))


async def create_hall(page: Page) -> Response:
    cinema_id = page.request.path_params["cinema_id"]
    try:
        layout = parse_layout(page.value("layout"))
    except LayoutSyntaxError as error:
        errors = FormErrors()
        errors.add("layout", str(error))
        return await new_hall(page, errors, 400)
    try:
        hall = await page.call(
            page.backend.screening.CreateHall,
            spb.CreateHallRequest(cinema_id=cinema_id, name=page.value("name"), layout=layout, request_id=request_id()),
        )
    except CallFailed as failure:
        return await new_hall(page, FormErrors.of(failure, {"name": "name", "layout": "layout"}), 400)
    return page.redirect(f"/halls/{hall.id}", f"Hall {hall.name} created with {hall.seat_count} seats.")


async def hall_detail(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    hall = await page.call(
        page.backend.screening.GetHall, spb.GetHallRequest(hall_id=page.request.path_params["hall_id"])
    )
    cinema = await page.call(page.backend.screening.GetCinema, spb.GetCinemaRequest(cinema_id=hall.cinema_id))
    text = page.value("layout") or layout_text(hall.layout)
    return page.render(
        "hall.html",
        status,
        hall=hall,
        cinema=cinema,
        grid=hall_rows(hall),
        layout=text,
        errors=errors or FormErrors(),
        **_preview(text),
    )


async def replace_layout(page: Page) -> Response:
    hall_id = page.request.path_params["hall_id"]
    try:
        layout = parse_layout(page.value("layout"))
        await page.call(
            page.backend.screening.ReplaceHallLayout, spb.ReplaceHallLayoutRequest(hall_id=hall_id, layout=layout)
        )
    except LayoutSyntaxError as error:
        errors = FormErrors()
        errors.add("layout", str(error))
        return await hall_detail(page, errors, 400)
    except CallFailed as failure:
        return await hall_detail(page, FormErrors.of(failure, {"layout": "layout"}), 400)
    return page.redirect(f"/halls/{hall_id}", "Layout replaced; the seats were generated anew.")


async def set_seat_service(page: Page) -> Response:
    hall_id, seat_id = page.request.path_params["hall_id"], page.request.path_params["seat_id"]
    in_service = page.value("in_service") == "true"
    try:
        seat = await page.call(
            page.backend.screening.SetSeatService,
            spb.SetSeatServiceRequest(
                hall_id=hall_id, seat_id=seat_id, in_service=in_service, reason=page.value("reason")
            ),
        )
    except CallFailed as failure:
        # The reason field sits in the seat's own small form: the message goes on top of the page.
        return await hall_detail(page, FormErrors.of(failure, {}), 400)
    state = "back in service" if seat.in_service else "out of service"
    return page.redirect(f"/halls/{hall_id}", f"Seat {seat.row_label}{seat.number} is {state}.")


async def movies(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    listed = await page.call(
        page.backend.screening.ListMovies, spb.ListMoviesRequest(page_size=100, title_contains=page.value("q"))
    )
    return page.render("movies.html", status, movies=listed.movies, errors=errors or FormErrors(), form=page.form)


_MOVIE_FIELDS = {"movie.title": "title", "movie.duration_minutes": "duration_minutes", "movie.rating": "rating"}


def _minutes(page: Page, errors: FormErrors) -> int:
    text = page.value("duration_minutes")
    if not text.isdigit():
        errors.add("duration_minutes", "Enter the running time in whole minutes, like 118.")
        return 0
    return int(text)


async def create_movie(page: Page) -> Response:
    errors = FormErrors()
    movie = spb.Movie(
        title=page.value("title"), duration_minutes=_minutes(page, errors), rating=page.value("rating"), active=True
    )
    if errors:
        return await movies(page, errors, 400)
    try:
        created = await page.call(
            page.backend.screening.CreateMovie, spb.CreateMovieRequest(movie=movie, request_id=request_id())
        )
    except CallFailed as failure:
        return await movies(page, FormErrors.of(failure, _MOVIE_FIELDS), 400)
    return page.redirect("/movies", f"Movie {created.title} added.")


async def update_movie(page: Page) -> Response:
    errors = FormErrors()
    movie = spb.Movie(
        id=page.request.path_params["movie_id"],
        title=page.value("title"),
        duration_minutes=_minutes(page, errors),
        rating=page.value("rating"),
        active=page.value("active") == "true",
    )
    if errors:
        return await movies(page, errors, 400)
    mask = FieldMask(paths=["title", "duration_minutes", "rating", "active"])
    try:
        await page.call(page.backend.screening.UpdateMovie, spb.UpdateMovieRequest(movie=movie, update_mask=mask))
    except CallFailed as failure:
        return await movies(page, FormErrors.of(failure, _MOVIE_FIELDS), 400)
    return page.redirect("/movies", f"Movie {movie.title} saved.")


# ---------------------------------------------------------------- the week schedule of a hall


@dataclass
class HallWeek:
    hall: spb.Hall
    cinema: spb.Cinema
    zone: ZoneInfo
    monday: date


async def _hall_week(page: Page, hall_id: str) -> HallWeek:
    hall = await page.call(page.backend.screening.GetHall, spb.GetHallRequest(hall_id=hall_id))
    cinema = await page.call(page.backend.screening.GetCinema, spb.GetCinemaRequest(cinema_id=hall.cinema_id))
    zone = ZoneInfo(cinema.time_zone)
    try:
        day = date.fromisoformat(page.value("week"))
    except ValueError:
        day = datetime.now(zone).date()
    return HallWeek(hall, cinema, zone, day - timedelta(days=day.weekday()))


async def schedule(
    page: Page, errors: FormErrors | None = None, status: int = 200, conflict: dict[str, Any] | None = None
) -> Response:
    week = await _hall_week(page, page.request.path_params["hall_id"])
    days = [week.monday + timedelta(days=i) for i in range(7)]
    listed, movie_list, halls = await asyncio.gather(
        asyncio.gather(
            *(
                page.call(
                    page.backend.screening.ListShowtimes,
                    spb.ListShowtimesRequest(
                        cinema_id=week.cinema.id, hall_id=week.hall.id, date=pb_date(day), page_size=100
                    ),
                )
                for day in days
            )
        ),
        page.call(page.backend.screening.ListMovies, spb.ListMoviesRequest(page_size=100, active_only=True)),
        page.call(page.backend.screening.ListHalls, spb.ListHallsRequest(cinema_id=week.cinema.id, page_size=100)),
    )
    titles = {m.id: m.title for m in movie_list.movies}
    hours = (8, 26)  # the timeline runs from 08:00 to 02:00 the next morning
    columns = []
    for day, response in zip(days, listed, strict=True):
        opening = datetime.combine(day, time(hours[0]), week.zone)
        blocks = []
        for showtime in response.showtimes:
            start = when(showtime.start_time, week.zone)
            end = when(showtime.busy_until, week.zone)
            top = max(0.0, (start - opening).total_seconds() / 3600 / (hours[1] - hours[0]) * 100)
            height = max(2.0, (end - start).total_seconds() / 3600 / (hours[1] - hours[0]) * 100)
            blocks.append(
                {
                    "showtime": showtime,
                    "title": titles.get(showtime.movie_id, "(inactive movie)"),
                    "start": start,
                    "end": when(showtime.end_time, week.zone),
                    "busy": end,
                    "top": round(top, 2),
                    "height": round(height, 2),
                }
            )
        columns.append({"day": day, "blocks": blocks})
    form = page.form
    return page.render(
        "schedule.html",
        status,
        hall=week.hall,
        cinema=week.cinema,
        halls=halls.halls,
        week=week.monday,
        previous=week.monday - timedelta(days=7),
        following=week.monday + timedelta(days=7),
        columns=columns,
        hours=list(range(hours[0], hours[1])),
        movies=movie_list.movies,
        errors=errors or FormErrors(),
        conflict=conflict,
        kinds=list(KINDS),
        form={
            "movie_id": form.get("movie_id") if form else "",
            "day": (form.get("day") if form else "") or week.monday.isoformat(),
            "start": (form.get("start") if form else "") or "19:00",
            **{f"price_{k}": (form.get(f"price_{k}") if form else "") or "" for k in KINDS},
        },
    )


def _start_time(page: Page, zone: ZoneInfo, errors: FormErrors) -> datetime | None:
    try:
        day = date.fromisoformat(page.value("day"))
    except ValueError:
        errors.add("start_time", "Pick the day of the showtime.")
        return None
    try:
        clock = time.fromisoformat(page.value("start"))
    except ValueError:
        errors.add("start_time", "Enter the start time as HH:MM.")
        return None
    return datetime.combine(day, clock, zone)


def _prices(page: Page, currency: str, errors: FormErrors) -> list[spb.SeatPrice]:
    prices = []
    for name, kind in KINDS.items():
        text = page.value(f"price_{name}")
        if not text:
            continue
        try:
            prices.append(spb.SeatPrice(kind=kind, price=parse_money(text, currency)))
        except ValueError as error:
            errors.add(f"price_{name}", str(error))
    return prices


def _showtime_fields(prices: list[spb.SeatPrice]) -> dict[str, str]:
    fields = {"movie_id": "movie_id", "start_time": "start_time", "hall_id": "start_time", "prices": "price_standard"}
    for i, price in enumerate(prices):
        fields[f"prices[{i}]"] = f"price_{KIND_NAMES.get(price.kind, 'standard')}"
    return fields


async def create_showtime(page: Page) -> Response:
    """Schedules a movie; a SHOWTIME_OVERLAP shows the blocking showtime and the halls that are
    free for the same slot, each one click away (the form is sent again with that hall)."""
    hall_id = page.value("hall_id") or page.request.path_params["hall_id"]
    week = await _hall_week(page, hall_id)
    errors = FormErrors()
    start = _start_time(page, week.zone, errors)
    prices = _prices(page, week.cinema.currency_code, errors)
    if errors or start is None:
        return await schedule(page, errors, 400)
    request = spb.CreateShowtimeRequest(
        hall_id=hall_id,
        movie_id=page.value("movie_id"),
        start_time=ts(start),
        prices=prices,
        request_id=page.value("request_id") or request_id(),
    )
    try:
        created = await page.call(page.backend.screening.CreateShowtime, request)
    except CallFailed as failure:
        return await _refused_showtime(page, failure, week, prices)
    local = when(created.start_time, week.zone)
    return page.redirect(
        f"/halls/{created.hall_id}/schedule?week={local.date().isoformat()}",
        f"Showtime scheduled: {local:%a %d %b %H:%M} in {week.hall.name}.",
    )


async def _refused_showtime(page: Page, failure: CallFailed, week: HallWeek, prices: list[spb.SeatPrice]) -> Response:
    errors = FormErrors.of(failure, _showtime_fields(prices))
    conflict = _conflict(failure, week.zone)
    if conflict is not None:
        if not errors.fields.get("start_time"):
            errors.add("start_time", "This hall is busy then (cleaning time included).")
        errors.general = []  # the conflict panel says it, with the alternatives
    return await schedule(page, errors, 409 if conflict else 400, conflict)


def _conflict(failure: CallFailed, zone: ZoneInfo) -> dict[str, Any] | None:
    """A SHOWTIME_OVERLAP's blocking showtime and the halls free instead, for the page."""
    if failure.conflict is None:
        return None
    blocking = failure.conflict
    return {
        "reason": failure.reason,
        "showtime_id": blocking.conflicting_showtime_id,
        "start": when(blocking.conflicting_start_time, zone),
        "busy_until": when(blocking.conflicting_busy_until, zone),
        "free_halls": list(blocking.free_halls),
    }


_MOVE_FIELDS = {"start_time": "start_time", "hall_id": "hall_id"}


async def move_showtime_form(
    page: Page, errors: FormErrors | None = None, status: int = 200, conflict: dict[str, Any] | None = None
) -> Response:
    showtime = await page.call(
        page.backend.screening.GetShowtime, spb.GetShowtimeRequest(showtime_id=page.request.path_params["showtime_id"])
    )
    occupancy, week = await asyncio.gather(
        page.call(page.backend.reports.GetShowtimeOccupancy, rpb.GetShowtimeOccupancyRequest(showtime_id=showtime.id)),
        _hall_week(page, showtime.hall_id),
    )
    halls = await page.call(
        page.backend.screening.ListHalls, spb.ListHallsRequest(cinema_id=week.cinema.id, page_size=100)
    )
    start = when(showtime.start_time, week.zone)
    return page.render(
        "move.html",
        status,
        showtime=showtime,
        hall=week.hall,
        halls=halls.halls,
        start=start,
        occupancy=occupancy,
        errors=errors or FormErrors(),
        conflict=conflict,
        form={
            "day": page.value("day") or start.date().isoformat(),
            "start": page.value("start") or start.strftime("%H:%M"),
            "hall_id": page.value("hall_id") or showtime.hall_id,
        },
    )


async def move_showtime(page: Page) -> Response:
    """Moves the showtime in one call (RescheduleShowtime): a SHOWTIME_OVERLAP shows the
    blocking showtime and the halls free for the new slot, each one click away; a showtime with
    held or sold seats stays where it is."""
    showtime_id = page.request.path_params["showtime_id"]
    showtime = await page.call(page.backend.screening.GetShowtime, spb.GetShowtimeRequest(showtime_id=showtime_id))
    hall_id = page.value("hall_id") or showtime.hall_id
    week = await _hall_week(page, hall_id)
    errors = FormErrors()
    start = _start_time(page, week.zone, errors)
    if errors or start is None:
        return await move_showtime_form(page, errors, 400)
    request = spb.RescheduleShowtimeRequest(
        showtime_id=showtime_id,
        start_time=ts(start),
        hall_id=hall_id,
        request_id=page.value("request_id") or request_id(),
    )
    try:
        moved = await page.call(page.backend.screening.RescheduleShowtime, request)
    except CallFailed as failure:
        errors = FormErrors.of(failure, _MOVE_FIELDS)
        conflict = _conflict(failure, week.zone)
        if conflict is not None:
            errors.general = []  # the conflict panel says it, with the alternatives
        return await move_showtime_form(page, errors, _http_status(failure.code), conflict)
    local = when(moved.start_time, week.zone)
    return page.redirect(
        f"/halls/{moved.hall_id}/schedule?week={local.date().isoformat()}",
        f"Showtime moved to {local:%a %d %b %H:%M} in {week.hall.name}.",
    )


async def cancel_showtime(page: Page) -> Response:
    showtime_id = page.request.path_params["showtime_id"]
    try:
        showtime = await page.call(
            page.backend.screening.CancelShowtime,
            spb.CancelShowtimeRequest(showtime_id=showtime_id, reason=page.value("reason")),
        )
    except CallFailed as failure:
        return page.render("error.html", _http_status(failure.code), title="Not cancelled", message=failure.summary)
    return page.redirect(f"/halls/{showtime.hall_id}/schedule", "Showtime cancelled.")


# ---------------------------------------------------------------- the live seat map


async def _seat_map(page: Page, showtime_id: str) -> bpb.SeatMap:
    return await page.call(page.backend.booking.GetSeatMap, bpb.GetSeatMapRequest(showtime_id=showtime_id))


def seat_view(seat: bpb.SeatAvailability) -> dict[str, Any]:
    """A seat as the map draws it: text, state word and aria label, so colour is never the only cue."""
    state = SEAT_STATES.get(seat.state, "unknown")
    kind = KIND_NAMES.get(seat.kind, "standard")
    label = f"Row {seat.row_label} seat {seat.number}, {kind}, {state}"
    if seat.holder_id:
        label += f" (customer {seat.holder_id[:8]})"
    return {
        "id": seat.seat_id,
        "code": f"{seat.row_label}{seat.number}",
        "state": state.replace(" ", "-"),
        "state_text": state,
        "kind": kind,
        "label": label,
        "holder_id": seat.holder_id,
        "hold_id": seat.hold_id,
        "column": seat.column,
        "row": seat.row_label,
    }


async def showtime_detail(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    showtime_id = page.request.path_params["showtime_id"]
    showtime = await page.call(page.backend.screening.GetShowtime, spb.GetShowtimeRequest(showtime_id=showtime_id))
    hall, movie, seat_map, bookings = await asyncio.gather(
        page.call(page.backend.screening.GetHall, spb.GetHallRequest(hall_id=showtime.hall_id)),
        page.call(page.backend.screening.GetMovie, spb.GetMovieRequest(movie_id=showtime.movie_id)),
        _seat_map(page, showtime_id),
        page.call(page.backend.booking.ListBookings, bpb.ListBookingsRequest(showtime_id=showtime_id, page_size=100)),
    )
    cinema = await page.call(page.backend.screening.GetCinema, spb.GetCinemaRequest(cinema_id=showtime.cinema_id))
    rows: dict[str, list[dict[str, Any]]] = {}
    for seat in seat_map.seats:
        rows.setdefault(seat.row_label, []).append(seat_view(seat))
    return page.render(
        "showtime.html",
        status,
        showtime=showtime,
        hall=hall,
        movie=movie,
        cinema=cinema,
        zone=ZoneInfo(cinema.time_zone),
        rows=rows,
        version=seat_map.version,
        bookings=bookings.bookings,
        errors=errors or FormErrors(),
        selected=page.value("seats"),
    )


async def seat_panel(page: Page) -> Response:
    showtime_id, seat_id = page.request.path_params["showtime_id"], page.request.path_params["seat_id"]
    seat_map = await _seat_map(page, showtime_id)
    seat = next((s for s in seat_map.seats if s.seat_id == seat_id), None)
    if seat is None:
        return page.render("_seat_panel.html", 404, seat=None, showtime_id=showtime_id)
    hold = None
    if seat.hold_id:
        hold = await page.call(page.backend.booking.GetHold, bpb.GetHoldRequest(hold_id=seat.hold_id))
    holder = None
    if seat.holder_id and page.session.is_admin:  # GetUser (name, e-mail, phone) is for admins
        holder = await page.call(page.backend.identity.GetUser, ipb.GetUserRequest(user_id=seat.holder_id))
    return page.render("_seat_panel.html", seat=seat_view(seat), hold=hold, holder=holder, showtime_id=showtime_id)


def _ended(reason: str, message: str) -> str:
    return f"event: ended\ndata: {json.dumps({'reason': reason, 'message': message})}\n\n"


async def seat_events(page: Page) -> Response:
    """Server-sent events of a showtime's seats: the gRPC WatchSeatAvailability stream, with
    holder and hold ids added from a staff seat map read after each change. The event id is
    the version, so a browser that reconnects resumes where it was (Last-Event-ID)."""
    showtime_id = page.request.path_params["showtime_id"]
    token = await valid_token(page.backend, page.session)
    since = page.request.headers.get("last-event-id", "")
    request = bpb.WatchSeatAvailabilityRequest(
        showtime_id=showtime_id, since_version=int(since) if since.isdigit() else 0
    )

    async def events() -> AsyncIterator[str]:
        stream = page.backend.booking.WatchSeatAvailability(
            request, metadata=(("authorization", f"Bearer {token}"), *page.forwarded)
        )
        page.console.streams.add(stream)
        try:
            async for event in stream:
                if event.HasField("snapshot"):
                    version, changed = event.snapshot.version, {s.seat_id for s in event.snapshot.seats}
                else:
                    version, changed = event.changes.version, {c.seat_id for c in event.changes.changes}
                seat_map = await call(
                    page.backend.booking.GetSeatMap,
                    bpb.GetSeatMapRequest(showtime_id=showtime_id),
                    token,
                    page.forwarded,
                )
                seats = [seat_view(s) for s in seat_map.seats if s.seat_id in changed]
                yield f"id: {version}\nevent: seats\ndata: {json.dumps({'version': version, 'seats': seats})}\n\n"
        except grpc.aio.AioRpcError as error:
            failure = failure_of(error)
            yield _ended(failure.reason, failure.summary)
        except CallFailed as failure:
            yield _ended(failure.reason, failure.summary)
        except asyncio.CancelledError:
            if not page.console.closing:
                raise
            # The console is stopping and cancelled the gRPC stream: the browser reconnects later.
            yield _ended("CONSOLE_STOPPING", "The console stops.")
        finally:
            page.console.streams.discard(stream)
            stream.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


async def force_release(page: Page) -> Response:
    hold_id, showtime_id = page.request.path_params["hold_id"], page.value("showtime_id")
    try:
        await page.call(
            page.backend.booking.ForceReleaseHold,
            bpb.ForceReleaseHoldRequest(hold_id=hold_id, reason=page.value("reason")),
        )
    except CallFailed as failure:
        return page.render(
            "_form_errors.html", 200, errors=FormErrors.of(failure, {"reason": "reason"}), target="release"
        )
    return page.redirect(f"/showtimes/{showtime_id}", "Hold released; its seats are free again.")


_COUNTER_PAYMENTS = {"cash": bpb.COUNTER_PAYMENT_CASH, "card": bpb.COUNTER_PAYMENT_CARD_PRESENT}


async def sell_hold(page: Page) -> Response:
    hold_id = page.request.path_params["hold_id"]
    payment = _COUNTER_PAYMENTS.get(page.value("payment"), bpb.COUNTER_PAYMENT_UNSPECIFIED)
    try:
        booking = await page.call(
            page.backend.booking.SellHoldAtCounter,
            bpb.SellHoldAtCounterRequest(hold_id=hold_id, payment=payment, request_id=request_id()),
        )
    except CallFailed as failure:
        return page.render(
            "_form_errors.html", 200, errors=FormErrors.of(failure, {"payment": "payment"}), target="sell"
        )
    return page.redirect(f"/bookings/{booking.id}", "Sold at the counter.")


async def counter_sale(page: Page) -> Response:
    """Sells free seats at the box office: a hold of the seats, then the counter sale of that
    hold; if the sale is refused, the hold is released so nothing stays half-done."""
    showtime_id = page.request.path_params["showtime_id"]
    wanted = [code.upper() for code in page.value("seats").replace(",", " ").split()]
    seat_map = await _seat_map(page, showtime_id)
    by_code = {f"{s.row_label}{s.number}".upper(): s.seat_id for s in seat_map.seats}
    errors = FormErrors()
    unknown = [code for code in wanted if code not in by_code]
    if not wanted:
        errors.add("seats", "Name the seats to sell, like A3 A4.")
    elif unknown:
        errors.add("seats", f"No such seat in this hall: {', '.join(unknown)}.")
    payment = _COUNTER_PAYMENTS.get(page.value("payment"))
    if payment is None:
        errors.add("payment", "Choose cash or card.")
    if errors or payment is None:
        return await showtime_detail(page, errors, 400)
    try:
        hold = await page.call(
            page.backend.booking.HoldSeats,
            bpb.HoldSeatsRequest(
                showtime_id=showtime_id, seat_ids=[by_code[c] for c in wanted], request_id=request_id()
            ),
        )
    except CallFailed as failure:
        return await showtime_detail(page, FormErrors.of(failure, {"seat_ids": "seats"}), 409)
    try:
        booking = await page.call(
            page.backend.booking.SellHoldAtCounter,
            bpb.SellHoldAtCounterRequest(hold_id=hold.id, payment=payment, request_id=request_id()),
        )
    except CallFailed as failure:
        await page.call(page.backend.booking.ReleaseHold, bpb.ReleaseHoldRequest(hold_id=hold.id))
        return await showtime_detail(page, FormErrors.of(failure, {"payment": "payment"}), 409)
    return page.redirect(f"/bookings/{booking.id}", f"Sold {len(booking.tickets)} seat(s) at the counter.")


# ---------------------------------------------------------------- bookings, payments, audit


async def bookings(page: Page) -> Response:
    showtime_id, customer_id = page.value("showtime_id"), page.value("customer_id")
    listed = None
    errors = FormErrors()
    if showtime_id or customer_id:
        try:
            listed = await page.call(
                page.backend.booking.ListBookings,
                bpb.ListBookingsRequest(showtime_id=showtime_id, customer_id=customer_id, page_size=100),
            )
        except CallFailed as failure:
            errors = FormErrors.of(failure, {"showtime_id": "showtime_id", "customer_id": "customer_id"})
    return page.render(
        "bookings.html",
        400 if errors else 200,
        bookings=listed.bookings if listed else None,
        errors=errors,
        showtime_id=showtime_id,
        customer_id=customer_id,
    )


async def booking_detail(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    booking_id = page.request.path_params["booking_id"]
    booking, paid = await asyncio.gather(
        page.call(page.backend.booking.GetBooking, bpb.GetBookingRequest(booking_id=booking_id)),
        # Every card attempt for the booking's hold (a booking rarely has more than a few).
        page.call(page.backend.payment.ListPayments, ppb.ListPaymentsRequest(booking_id=booking_id, page_size=100)),
    )
    return page.render(
        "booking.html",
        status,
        booking=booking,
        payments=paid.payments,
        more_payments=bool(paid.next_page_token),
        errors=errors or FormErrors(),
    )


async def force_cancel(page: Page) -> Response:
    booking_id = page.request.path_params["booking_id"]
    try:
        await page.call(
            page.backend.booking.ForceCancelBooking,
            bpb.ForceCancelBookingRequest(booking_id=booking_id, reason=page.value("reason")),
        )
    except CallFailed as failure:
        return await booking_detail(page, FormErrors.of(failure, {"reason": "reason"}), 400)
    return page.redirect(f"/bookings/{booking_id}", "Booking cancelled.")


async def payments(page: Page) -> Response:
    payment_id = page.value("payment_id")
    if payment_id:
        return page.redirect(f"/payments/{payment_id}")
    return page.render("payments.html")


async def payment_detail(page: Page, errors: FormErrors | None = None, status: int = 200) -> Response:
    payment_id = page.request.path_params["payment_id"]
    payment, events = await asyncio.gather(
        page.call(page.backend.payment.GetPayment, ppb.GetPaymentRequest(payment_id=payment_id)),
        page.call(page.backend.payment.ListPaymentEvents, ppb.ListPaymentEventsRequest(payment_id=payment_id)),
    )
    return page.render("payment.html", status, payment=payment, events=events.events, errors=errors or FormErrors())


async def refund(page: Page) -> Response:
    payment_id = page.request.path_params["payment_id"]
    payment = await page.call(page.backend.payment.GetPayment, ppb.GetPaymentRequest(payment_id=payment_id))
    errors = FormErrors()
    request = ppb.RefundPaymentRequest(payment_id=payment_id, reason=page.value("reason"), request_id=request_id())
    if page.value("amount"):
        try:
            request.amount.CopyFrom(parse_money(page.value("amount"), payment.amount.currency_code))
        except ValueError as error:
            errors.add("amount", str(error))
    if errors:
        return await payment_detail(page, errors, 400)
    try:
        await page.call(page.backend.payment.RefundPayment, request)
    except CallFailed as failure:
        return await payment_detail(page, FormErrors.of(failure, {"amount": "amount", "reason": "reason"}), 400)
    return page.redirect(f"/payments/{payment_id}", "Refund requested.")


async def audit(page: Page) -> Response:
    verdict = None
    if page.form is not None:
        verdict = await page.call(page.backend.payment.VerifyAuditTrail, ppb.VerifyAuditTrailRequest())
    return page.render("audit.html", verdict=verdict)


# ---------------------------------------------------------------- reports


async def reports(page: Page) -> Response:
    listed = await page.call(page.backend.screening.ListCinemas, spb.ListCinemasRequest(page_size=100))
    cinema_id = page.value("cinema_id") or (listed.cinemas[0].id if listed.cinemas else "")
    today = datetime.now(UTC).date()
    errors = FormErrors()
    try:
        start = date.fromisoformat(page.value("start")) if page.value("start") else today - timedelta(days=13)
        end = date.fromisoformat(page.value("end")) if page.value("end") else today
    except ValueError:
        errors.add("start", "Dates are written YYYY-MM-DD.")
        start, end = today - timedelta(days=13), today
    context: dict[str, Any] = {"cinemas": listed.cinemas, "cinema_id": cinema_id, "start": start, "end": end}
    showtime_id = page.value("showtime_id")
    if showtime_id:
        try:
            occupancy = await page.call(
                page.backend.reports.GetShowtimeOccupancy, rpb.GetShowtimeOccupancyRequest(showtime_id=showtime_id)
            )
            context["occupancy"] = occupancy
            context["occupancy_chart"] = charts.stacked_bar(
                f"Occupancy: {occupancy.sold} sold, {occupancy.held} held, {occupancy.free} free",
                [
                    ("sold", occupancy.sold_percent, "bar-sold"),
                    ("held", occupancy.held_percent, "bar-held"),
                    ("free", occupancy.free_percent, "bar-free"),
                ],
            )
        except CallFailed as failure:
            errors.fields.update(
                FormErrors.of(failure, {"showtime_id": "showtime_id"}).fields or {"showtime_id": [failure.summary]}
            )
    if cinema_id and not errors:
        first, last = pb_date(start), pb_date(end)
        try:
            top, revenue = await asyncio.gather(
                page.call(
                    page.backend.reports.ListTopMovies,
                    rpb.ListTopMoviesRequest(
                        cinema_id=cinema_id, start_date=first, end_date=last, limit=10, ranking=rpb.RANKING_REVENUE
                    ),
                ),
                page.call(
                    page.backend.reports.GetRevenueByDay,
                    rpb.GetRevenueByDayRequest(cinema_id=cinema_id, start_date=first, end_date=last),
                ),
            )
        except CallFailed as failure:
            errors = FormErrors.of(failure, {"start_date": "start", "end_date": "end", "cinema_id": "cinema_id"})
        else:
            context["top"] = top.movies
            context["days"] = revenue.days
            context["top_chart"] = charts.horizontal_bars(
                "Top movies by revenue",
                [
                    (m.title, m.revenue.amount_minor, f"{money_text(m.revenue)} ({m.tickets} tickets)")
                    for m in top.movies
                ],
            )
            context["revenue_chart"] = charts.vertical_bars(
                "Revenue per day",
                [(f"{d.date.day}/{d.date.month}", d.revenue.amount_minor, money_text(d.revenue)) for d in revenue.days],
            )
    return page.render("reports.html", 400 if errors else 200, errors=errors, showtime_id=showtime_id, **context)


def create_app(backend: Backend) -> Starlette:
    console = Console(backend)
    page = console.page
    routes = [
        Route("/login", page(login_form, signed_in=False), methods=["GET"]),
        Route("/login", page(login, signed_in=False), methods=["POST"]),
        Route("/logout", page(logout, signed_in=False), methods=["POST"]),
        Route("/", page(home)),
        Route("/cinemas", page(cinemas), methods=["GET"]),
        Route("/cinemas", page(create_cinema), methods=["POST"]),
        Route("/cinemas/{cinema_id}", page(cinema_detail)),
        Route("/cinemas/{cinema_id}/halls/new", page(new_hall)),
        Route("/cinemas/{cinema_id}/halls", page(create_hall), methods=["POST"]),
        Route("/layout-preview", page(layout_preview), methods=["POST"]),
        Route("/halls/{hall_id}", page(hall_detail)),
        Route("/halls/{hall_id}/layout", page(replace_layout), methods=["POST"]),
        Route("/halls/{hall_id}/seats/{seat_id}/service", page(set_seat_service), methods=["POST"]),
        Route("/halls/{hall_id}/schedule", page(schedule), methods=["GET"]),
        Route("/halls/{hall_id}/showtimes", page(create_showtime), methods=["POST"]),
        Route("/movies", page(movies), methods=["GET"]),
        Route("/movies", page(create_movie), methods=["POST"]),
        Route("/movies/{movie_id}", page(update_movie), methods=["POST"]),
        Route("/showtimes/{showtime_id}", page(showtime_detail)),
        Route("/showtimes/{showtime_id}/move", page(move_showtime_form)),
        Route("/showtimes/{showtime_id}/move", page(move_showtime), methods=["POST"]),
        Route("/showtimes/{showtime_id}/cancel", page(cancel_showtime), methods=["POST"]),
        Route("/showtimes/{showtime_id}/events", page(seat_events)),
        Route("/showtimes/{showtime_id}/seats/{seat_id}", page(seat_panel)),
        Route("/showtimes/{showtime_id}/counter-sale", page(counter_sale), methods=["POST"]),
        Route("/holds/{hold_id}/release", page(force_release), methods=["POST"]),
        Route("/holds/{hold_id}/sell", page(sell_hold), methods=["POST"]),
        Route("/bookings", page(bookings)),
        Route("/bookings/{booking_id}", page(booking_detail)),
        Route("/bookings/{booking_id}/cancel", page(force_cancel), methods=["POST"]),
        Route("/payments", page(payments)),
        Route("/payments/{payment_id}", page(payment_detail)),
        Route("/payments/{payment_id}/refund", page(refund), methods=["POST"]),
        Route("/audit", page(audit), methods=["GET", "POST"]),
        Route("/reports", page(reports)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    app.state.console = console
    return app
