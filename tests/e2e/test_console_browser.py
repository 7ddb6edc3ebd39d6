"""The staff console in a real headless Chromium (Debian's chromium + chromium-driver): one
browser for the module, a staff member signed in once; a screenshot of each main screen goes to
test-artifacts/console/ (git-ignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.console.runner import ConsoleServer
from tests.auth_client import sign_in, with_token
from tests.conftest import RunningServer
from tests.console_client import account, running_console
from tests.screening_data import (
    CINEMA_TIME_ZONE,
    grid,
    make_cinema,
    make_hall,
    make_movie,
    showtime_request,
    tomorrow_at,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
ZONE = ZoneInfo(CINEMA_TIME_ZONE)
Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = f"{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/install-browser-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console(server: RunningServer) -> Iterator[ConsoleServer]:
    with running_console(server) as running:
        yield running


class Screen:
    """The browser on the console: open a page, wait for a condition, keep a screenshot."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base = base_url.rstrip("/")

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, condition: Callable[[WebDriver], object], seconds: float = 10) -> None:
        try:
            # htmx swaps elements while a condition reads them: a stale one is read again.
            WebDriverWait(
                self.driver, seconds, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
            ).until(condition)
        except TimeoutException:
            self.shot("timeout")
            raise

    def find(self, css: str) -> webdriver.remote.webelement.WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str = "main") -> str:
        return str(self.find(css).text)

    def fill(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def set_value(self, css: str, value: str) -> None:
        """Date and time inputs take keys in the locale's order; their value is set directly."""
        self.driver.execute_script("arguments[0].value = arguments[1]", self.find(css), value)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def sign_in_page(screen: Screen, email: str, password: str) -> None:
    screen.driver.delete_all_cookies()
    screen.open("/login")
    screen.fill("#f-email", email)
    screen.fill("#f-password", password)
    screen.find("#sign-in").click()


@pytest.fixture(scope="module")
def staff_screen(browser: WebDriver, console: ConsoleServer, channel: grpc.Channel, db_admin: Db) -> Screen:
    screen = Screen(browser, console.url)
    customer, password = account(channel, db_admin)
    sign_in_page(screen, customer.email, password)
    screen.wait(lambda d: "Customer accounts cannot sign in here" in d.page_source)
    screen.shot("01-sign-in-refused-for-a-customer")
    staff, password = account(channel, db_admin, "STAFF")
    sign_in_page(screen, staff.email, password)
    screen.wait(lambda d: d.current_url.endswith("/cinemas"))
    return screen


def test_a_customer_sign_in_is_refused_and_staff_get_in(staff_screen: Screen) -> None:
    assert (ARTIFACTS / "01-sign-in-refused-for-a-customer.png").is_file()
    assert "Sign out" in staff_screen.text("header")


def test_staff_create_a_hall_with_the_layout_editor_and_its_live_preview(
    staff_screen: Screen, screening: ScreeningServiceStub
) -> None:
    screen = staff_screen
    cinema = make_cinema(screening, "Savoy")
    screen.open("/cinemas")
    screen.shot("02-cinemas")
    screen.driver.find_element(By.LINK_TEXT, "Savoy").click()
    screen.find("#new-hall").click()
    screen.fill("#f-name", "Studio 5")
    screen.fill("#f-layout", "A 8 premium\nB 9 gap=5 wheelchair=1 companion=2\nC 9 gap=5")
    screen.wait(lambda d: "24 seats" in d.find_element(By.ID, "layout-preview").text)
    assert len(screen.driver.find_elements(By.CSS_SELECTOR, "#layout-preview td.gap")) == 2
    screen.shot("03-hall-layout-editor")
    screen.find("#create-hall").click()
    screen.wait(lambda d: "Hall Studio 5 created with 24 seats." in d.page_source)
    screen.shot("04-hall-seats")
    halls = screening.ListHalls(spb.ListHallsRequest(cinema_id=cinema.id)).halls
    assert [(h.name, h.seat_count) for h in halls] == [("Studio 5", 24)]


def test_an_overlapping_showtime_is_refused_with_the_free_halls_one_click_away(
    staff_screen: Screen, screening: ScreeningServiceStub
) -> None:
    screen = staff_screen
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id, "Hall 1", grid("ABC", 8))
    spare = make_hall(screening, cinema.id, "Hall 2", grid("ABCD", 10))
    screen.open("/movies")
    screen.fill("#f-title", "Nosferatu")
    screen.fill("#f-duration_minutes", "95")
    screen.find("#add-movie").click()
    screen.wait(lambda d: "Movie Nosferatu added." in d.page_source)
    screen.shot("05-movies")
    day = tomorrow_at(12).astimezone(ZONE).date()
    screen.open(f"/halls/{hall.id}/schedule?week={day.isoformat()}")

    def schedule(start: str) -> None:
        screen.find("#f-movie_id").send_keys("Nosferatu")
        screen.set_value("#f-day", day.isoformat())
        screen.set_value("#f-start", start)
        screen.fill("#f-price_standard", "9.50")
        screen.find("#schedule-showtime").click()

    schedule("18:00")
    screen.wait(lambda d: "Showtime scheduled" in d.page_source)
    assert "18:00 Nosferatu" in screen.text(".timeline")
    screen.shot("06-week-schedule")
    schedule("19:30")  # 95 minutes + 30 of cleaning: busy until 20:05
    screen.wait(lambda d: d.find_elements(By.ID, "overlap"))
    overlap = screen.text("#overlap")
    assert "SHOWTIME_OVERLAP" in overlap and "busy until 20:05" in overlap
    assert "This hall is busy then" in screen.text("#err-start_time")
    screen.shot("07-overlap-refused-with-free-halls")
    alternative = screen.driver.find_element(By.XPATH, "//button[contains(., 'Schedule in Hall 2 (40 seats) instead')]")
    alternative.click()
    screen.wait(lambda d: "Showtime scheduled" in d.page_source and "Hall 2" in d.find_element(By.TAG_NAME, "h1").text)
    assert "19:30 Nosferatu" in screen.text(".timeline")
    moved = screening.ListShowtimes(spb.ListShowtimesRequest(hall_id=spare.id)).showtimes
    assert len(moved) == 1 and moved[0].movie_id


def test_the_seat_map_shows_a_customers_hold_live_and_staff_force_release_it(
    staff_screen: Screen, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    screen = staff_screen
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id, "Hall 1", grid("ABCDE", 10))
    showtime = screening.CreateShowtime(showtime_request(hall, make_movie(screening), tomorrow_at(15)))
    screen.open(f"/showtimes/{showtime.id}")
    screen.wait(lambda d: "version" in d.find_element(By.ID, "live-status").text)  # the snapshot arrived
    customer, pair = sign_in(channel, db)
    booking = BookingServiceStub(with_token(channel, pair.access_token))
    seats = {f"{s.row_label}{s.number}": s.id for s in hall.seats}
    held = booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=showtime.id, seat_ids=[seats["C4"], seats["C5"]]))
    seat = f"#seat-{seats['C4']}"
    screen.wait(lambda d: "state-held" in d.find_element(By.CSS_SELECTOR, seat).get_attribute("class"))
    label = screen.find(seat).get_attribute("aria-label")
    assert label is not None and "held" in label and customer.id[:8] in label
    assert screen.text(seat).replace("\n", "") == "C4H"  # the state is in the text too, not only in colour
    screen.shot("08-live-seat-map-held")
    screen.find(seat).click()
    screen.wait(lambda d: d.find_elements(By.ID, "force-release"))
    assert held.id in screen.text("#seat-panel") and customer.id in screen.text("#seat-panel")
    screen.fill("#f-release-reason", "customer left the queue")
    screen.shot("09-seat-details")
    screen.find("#force-release button").click()
    screen.wait(lambda d: "Hold released" in d.page_source)
    screen.wait(lambda d: "state-free" in d.find_element(By.CSS_SELECTOR, seat).get_attribute("class"))
    after = booking.GetHold(bpb.GetHoldRequest(hold_id=held.id))
    assert after.state == bpb.HOLD_STATE_RELEASED and after.end_reason == "customer left the queue"
    screen.driver.set_window_size(820, 1180)  # a tablet, upright
    screen.shot("10-seat-map-tablet")
    screen.driver.set_window_size(1280, 800)


def test_reports_show_occupancy_top_movies_and_revenue_with_charts(
    staff_screen: Screen, screening: ScreeningServiceStub, admin_channel: grpc.Channel
) -> None:
    screen = staff_screen
    cinema = make_cinema(screening)
    hall = make_hall(screening, cinema.id, "Hall 1", grid("AB", 10))
    start = tomorrow_at(15)
    showtime = screening.CreateShowtime(showtime_request(hall, make_movie(screening, title="Vertigo"), start))
    staff_booking = BookingServiceStub(admin_channel)
    seats = [s.id for s in hall.seats[:4]]
    hold = staff_booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=showtime.id, seat_ids=seats))
    sale = staff_booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=hold.id, payment=bpb.COUNTER_PAYMENT_CASH)
    )
    today = start.astimezone(ZONE).date() - timedelta(days=1)
    screen.open(
        f"/reports?cinema_id={cinema.id}&start={today.isoformat()}&end={(today + timedelta(days=1)).isoformat()}"
        f"&showtime_id={showtime.id}"
    )
    screen.wait(lambda d: d.find_elements(By.ID, "occupancy"))
    assert "4 sold (20.0%)" in screen.text("#occupancy")
    assert "Vertigo" in screen.text("#top-movies")
    assert "48.00 EUR" in screen.text("#revenue")  # 4 seats at 12.00
    assert len(screen.driver.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    screen.shot("11-reports")
    screen.open(f"/bookings/{sale.id}")
    assert "counter (cash)" in screen.text()
    screen.shot("12-booking")
