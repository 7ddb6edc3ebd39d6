"""Cinemas and movies over a real channel: creation, validation, pagination, idempotent retries."""

from __future__ import annotations

import uuid

import grpc
import psycopg
from google.protobuf import field_mask_pb2

from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.rpc_errors import call_fails
from tests.screening_data import make_cinema, make_movie

Db = psycopg.Connection[tuple[object, ...]]


def count(db: Db, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_a_cinema_is_created_and_read_back(screening: ScreeningServiceStub) -> None:
    cinema = make_cinema(screening, "  Odeon Leicester Square ", "Europe/London")
    assert cinema.name == "Odeon Leicester Square"
    assert uuid.UUID(cinema.id)
    assert cinema.create_time.seconds > 0
    assert screening.GetCinema(pb.GetCinemaRequest(cinema_id=cinema.id)) == cinema


def test_bad_cinema_fields_are_all_named_and_nothing_is_written(screening: ScreeningServiceStub, db: Db) -> None:
    request = pb.CreateCinemaRequest(cinema=pb.Cinema(name="", time_zone="Mars/Olympus", currency_code="euro"))
    failed = call_fails(screening.CreateCinema, request)
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.reason == "VALIDATION_FAILED"
    assert failed.fields == {
        "cinema.name": "REQUIRED",
        "cinema.time_zone": "UNKNOWN_TIME_ZONE",
        "cinema.currency_code": "INVALID_FORMAT",
    }
    assert count(db, "screening.cinemas") == 0


def test_cinema_names_are_unique_regardless_of_case(screening: ScreeningServiceStub) -> None:
    make_cinema(screening, "Odeon")
    failed = call_fails(
        screening.CreateCinema,
        pb.CreateCinemaRequest(cinema=pb.Cinema(name="ODEON", time_zone="UTC", currency_code="EUR")),
    )
    assert failed.code is grpc.StatusCode.ALREADY_EXISTS
    assert failed.reason == "CINEMA_NAME_TAKEN"


def test_a_retry_with_the_same_request_id_returns_the_first_result(screening: ScreeningServiceStub, db: Db) -> None:
    request = pb.CreateCinemaRequest(
        cinema=pb.Cinema(name="Rex", time_zone="Europe/Paris", currency_code="EUR"), request_id=str(uuid.uuid4())
    )
    first = screening.CreateCinema(request)
    again = screening.CreateCinema(request)
    assert again == first
    assert count(db, "screening.cinemas") == 1


def test_a_request_id_reused_for_another_request_is_refused(screening: ScreeningServiceStub) -> None:
    request_id = str(uuid.uuid4())
    screening.CreateCinema(
        pb.CreateCinemaRequest(
            cinema=pb.Cinema(name="Rex", time_zone="UTC", currency_code="EUR"), request_id=request_id
        )
    )
    failed = call_fails(
        screening.CreateCinema,
        pb.CreateCinemaRequest(
            cinema=pb.Cinema(name="Roxy", time_zone="UTC", currency_code="EUR"), request_id=request_id
        ),
    )
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.reason == "REQUEST_ID_REUSED"
    assert failed.fields == {"request_id": "REQUEST_ID_REUSED"}


def test_unknown_and_malformed_ids(screening: ScreeningServiceStub) -> None:
    missing = call_fails(screening.GetCinema, pb.GetCinemaRequest(cinema_id=str(uuid.uuid4())))
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert missing.reason == "CINEMA_NOT_FOUND"
    malformed = call_fails(screening.GetCinema, pb.GetCinemaRequest(cinema_id="'; DROP TABLE cinemas; --"))
    assert malformed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.fields == {"cinema_id": "INVALID_FORMAT"}


def test_cinemas_are_listed_by_name_page_by_page(screening: ScreeningServiceStub) -> None:
    for name in ["delta", "Alpha", "charlie", "Bravo", "echo"]:
        make_cinema(screening, name)
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = screening.ListCinemas(pb.ListCinemasRequest(page_size=2, page_token=token))
        names += [c.name for c in page.cinemas]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert names == ["Alpha", "Bravo", "charlie", "delta", "echo"]
    assert pages == 3


def test_a_bad_page_token_is_refused(screening: ScreeningServiceStub) -> None:
    failed = call_fails(screening.ListCinemas, pb.ListCinemasRequest(page_token="not-a-token"))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == {"page_token": "INVALID_PAGE_TOKEN"}


def test_a_page_token_of_another_list_is_refused(screening: ScreeningServiceStub) -> None:
    for title in ["A", "B"]:
        make_movie(screening, title=title)
    token = screening.ListMovies(pb.ListMoviesRequest(page_size=1)).next_page_token
    assert token
    failed = call_fails(screening.ListCinemas, pb.ListCinemasRequest(page_token=token))
    assert failed.fields == {"page_token": "INVALID_PAGE_TOKEN"}


def test_movies_are_filtered_by_activity_and_title(screening: ScreeningServiceStub) -> None:
    make_movie(screening, title="The 100% Solution")
    make_movie(screening, title="Solaris", active=False)
    make_movie(screening, title="Stalker")
    active = screening.ListMovies(pb.ListMoviesRequest(active_only=True))
    assert [m.title for m in active.movies] == ["Stalker", "The 100% Solution"]
    found = screening.ListMovies(pb.ListMoviesRequest(title_contains="SOL"))
    assert [m.title for m in found.movies] == ["Solaris", "The 100% Solution"]
    percent = screening.ListMovies(pb.ListMoviesRequest(title_contains="%"))
    assert [m.title for m in percent.movies] == ["The 100% Solution"]


def test_bad_movie_fields_are_refused(screening: ScreeningServiceStub, db: Db) -> None:
    request = pb.CreateMovieRequest(movie=pb.Movie(title="x" * 201, duration_minutes=0, rating="r" * 21))
    failed = call_fails(screening.CreateMovie, request)
    assert failed.fields == {
        "movie.title": "TOO_LONG",
        "movie.duration_minutes": "OUT_OF_RANGE",
        "movie.rating": "TOO_LONG",
    }
    assert count(db, "screening.movies") == 0


def test_update_movie_changes_only_the_masked_fields(screening: ScreeningServiceStub) -> None:
    movie = make_movie(screening, minutes=100, title="Alien")
    updated = screening.UpdateMovie(
        pb.UpdateMovieRequest(
            movie=pb.Movie(id=movie.id, title="Aliens", duration_minutes=137, rating="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "duration_minutes"]),
        )
    )
    assert (updated.title, updated.duration_minutes, updated.rating, updated.active) == ("Aliens", 137, "PG", True)
    assert screening.GetMovie(pb.GetMovieRequest(movie_id=movie.id)) == updated


def test_update_movie_needs_a_mask_of_known_fields(screening: ScreeningServiceStub) -> None:
    movie = make_movie(screening)
    empty = call_fails(screening.UpdateMovie, pb.UpdateMovieRequest(movie=pb.Movie(id=movie.id)))
    assert empty.fields == {"update_mask": "REQUIRED"}
    unknown = call_fails(
        screening.UpdateMovie,
        pb.UpdateMovieRequest(movie=pb.Movie(id=movie.id), update_mask=field_mask_pb2.FieldMask(paths=["id"])),
    )
    assert unknown.fields == {"update_mask": "UNKNOWN_FIELD"}


def test_text_with_nul_characters_is_refused_by_field(screening: ScreeningServiceStub, db: Db) -> None:
    request = pb.CreateCinemaRequest(cinema=pb.Cinema(name="Od\x00eon", time_zone="UTC", currency_code="EUR"))
    failed = call_fails(screening.CreateCinema, request)
    assert (failed.code, failed.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"cinema.name": "INVALID_CHARACTERS"})
    assert count(db, "screening.cinemas") == 0
