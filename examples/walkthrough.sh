#!/usr/bin/env bash
# The README's walk-through, runnable: look at the demo cinema, bootstrap an admin, create a hall
# and a showtime (and see an overlap refused), sell two seats to a customer by card, look at the
# bookings and this month's reports, then use the staff overrides.
#
#   make serve                      # in another terminal: demo data, then the server
#   examples/walkthrough.sh [ADDRESS]    # default 127.0.0.1:50051
#
# Run it from the project directory with the server's environment (CINEMA_DATA_DIR or
# DATABASE_URL): it runs `cinema-grpc create-admin` and `cinema-grpc dev pay`, which confirms the
# card at the local Stripe test server `serve` starts when no Stripe key is configured.
# GRPCURL and CINEMA_GRPC name other binaries; ADMIN_EMAIL, ADMIN_PASSWORD, CUSTOMER_EMAIL and
# CUSTOMER_PASSWORD other accounts. Safe to run again: it reuses what an earlier run created.
set -euo pipefail
ADDR=${1:-127.0.0.1:50051}
GRPCURL=${GRPCURL:-.venv/bin/grpcurl}
CINEMA_GRPC=${CINEMA_GRPC:-.venv/bin/cinema-grpc}
ADMIN_EMAIL=${ADMIN_EMAIL:-boss@example.com}
ADMIN_PASSWORD=${ADMIN_PASSWORD:-a long admin password}
CUSTOMER_EMAIL=${CUSTOMER_EMAIL:-ana@example.com}
CUSTOMER_PASSWORD=${CUSTOMER_PASSWORD:-a good long password}

# json EXPR: evaluates a Python expression over the JSON document on stdin (named d).
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
step() { printf '\n== %s\n' "$*"; }
new_id() { python3 -c 'import uuid; print(uuid.uuid4())'; }
# Dates from today (UTC): tomorrow, a day three days ahead, this month's first and last day.
read -r TOMORROW_Y TOMORROW_M TOMORROW_D < <(python3 -c 'import datetime as t; d = t.date.today() + t.timedelta(days=1); print(d.year, d.month, d.day)')
DAY=$(python3 -c 'import datetime as t; print(t.date.today() + t.timedelta(days=3))')
read -r YEAR MONTH LAST_DAY < <(python3 -c 'import calendar, datetime as t; d = t.date.today(); print(d.year, d.month, calendar.monthrange(d.year, d.month)[1])')

# grpcurl's arguments as a bash array: a header with spaces stays one argument.
G=("$GRPCURL" -plaintext)

step "services and health"
"${G[@]}" "$ADDR" list
"${G[@]}" -d '{"service": ""}' "$ADDR" grpc.health.v1.Health/Check

step "the demo cinema, its halls, the movies and tomorrow's showtimes"
CINEMAS=$("${G[@]}" -d '{}' "$ADDR" cinema.screening.v1.ScreeningService/ListCinemas)
echo "$CINEMAS"
CINEMA=$(echo "$CINEMAS" | json '[c for c in d["cinemas"] if c["name"] == "Demo Cinema"][0]["id"]')
"${G[@]}" -d "{\"cinema_id\": \"$CINEMA\"}" "$ADDR" cinema.screening.v1.ScreeningService/ListHalls \
  | json '"\n".join(h["name"] + ": " + str(h["seat_count"]) + " seats, id " + h["id"] for h in d["halls"])'
MOVIES=$("${G[@]}" -d '{}' "$ADDR" cinema.screening.v1.ScreeningService/ListMovies)
echo "$MOVIES"
MOVIE=$(echo "$MOVIES" | json 'd["movies"][0]["id"]')
"${G[@]}" -d @ "$ADDR" cinema.screening.v1.ScreeningService/ListShowtimes <<EOF
{"cinema_id": "$CINEMA", "date": {"year": $TOMORROW_Y, "month": $TOMORROW_M, "day": $TOMORROW_D}}
EOF

step "the first admin, signed in"
printf '%s\n' "$ADMIN_PASSWORD" | "$CINEMA_GRPC" create-admin --email "$ADMIN_EMAIL" --password-stdin
TOKEN=$("${G[@]}" -d @ "$ADDR" cinema.identity.v1.IdentityService/Login <<EOF | json 'd["access_token"]'
{"email": "$ADMIN_EMAIL", "password": "$ADMIN_PASSWORD"}
EOF
)
ADMIN=("${G[@]}" -H "authorization: Bearer $TOKEN")

step "a new hall: its seat grid is generated with it (row B has an aisle at column 5)"
HALL=$("${ADMIN[@]}" -d @ "$ADDR" cinema.screening.v1.ScreeningService/CreateHall <<EOF | json 'd["id"]'
{"cinema_id": "$CINEMA", "name": "Hall 4", "request_id": "walkthrough-hall-4",
 "layout": {"rows": [{"label": "A", "columns": 10, "kind": "SEAT_KIND_PREMIUM"},
                     {"label": "B", "columns": 11, "gap_columns": [5]}]}}
EOF
)
echo "hall $HALL"

step "a showtime on $DAY at 19:00 UTC"
SHOWTIME=$("${ADMIN[@]}" -d @ "$ADDR" cinema.screening.v1.ScreeningService/CreateShowtime <<EOF | json 'd["id"]'
{"hall_id": "$HALL", "movie_id": "$MOVIE", "start_time": "${DAY}T19:00:00Z", "request_id": "walkthrough-$DAY",
 "prices": [{"kind": "SEAT_KIND_STANDARD", "price": {"amount_minor": 1150, "currency_code": "EUR"}},
            {"kind": "SEAT_KIND_PREMIUM",  "price": {"amount_minor": 1490, "currency_code": "EUR"}}]}
EOF
)
echo "showtime $SHOWTIME"

step "another one an hour later overlaps (cleaning buffer included): refused"
if OVERLAP=$("${ADMIN[@]}" -d @ "$ADDR" cinema.screening.v1.ScreeningService/CreateShowtime 2>&1 <<EOF
{"hall_id": "$HALL", "movie_id": "$MOVIE", "start_time": "${DAY}T20:00:00Z",
 "prices": [{"kind": "SEAT_KIND_STANDARD", "price": {"amount_minor": 1150, "currency_code": "EUR"}},
            {"kind": "SEAT_KIND_PREMIUM",  "price": {"amount_minor": 1490, "currency_code": "EUR"}}]}
EOF
); then
  echo "an overlapping showtime was accepted" >&2
  exit 1
fi
echo "$OVERLAP"
grep -q SHOWTIME_OVERLAP <<<"$OVERLAP"

step "a customer account and its token"
REGISTERED=$("${G[@]}" -d @ "$ADDR" cinema.identity.v1.IdentityService/Register 2>&1 <<EOF || true
{"email": "$CUSTOMER_EMAIL", "password": "$CUSTOMER_PASSWORD", "display_name": "Ana"}
EOF
)
echo "$REGISTERED"
grep -q -e '"id"' -e EMAIL_TAKEN <<<"$REGISTERED"  # a new account, or the one an earlier run made
ANA=$("${G[@]}" -d @ "$ADDR" cinema.identity.v1.IdentityService/Login <<EOF | json 'd["access_token"]'
{"email": "$CUSTOMER_EMAIL", "password": "$CUSTOMER_PASSWORD"}
EOF
)
CUSTOMER=("${G[@]}" -H "authorization: Bearer $ANA")

step "the seat map (-emit-defaults shows version 0 and other zero values)"
SEAT_MAP=$("${G[@]}" -emit-defaults -d "{\"showtime_id\": \"$SHOWTIME\"}" "$ADDR" cinema.booking.v1.BookingService/GetSeatMap)
echo "$SEAT_MAP" | json '"version " + d["version"] + ", " + str(len(d["seats"])) + " seats"'
read -r SEAT_1 SEAT_2 < <(echo "$SEAT_MAP" | json '" ".join([s["seat_id"] for s in d["seats"] if s["state"] == "SEAT_STATE_FREE" and s["kind"] == "SEAT_KIND_STANDARD"][:2])')

step "the customer holds two seats for 10 minutes (prices frozen now)"
HOLD=$("${CUSTOMER[@]}" -d @ "$ADDR" cinema.booking.v1.BookingService/HoldSeats <<EOF
{"showtime_id": "$SHOWTIME", "seat_ids": ["$SEAT_1", "$SEAT_2"], "request_id": "$(new_id)"}
EOF
)
echo "$HOLD"
HOLD_ID=$(echo "$HOLD" | json 'd["id"]')

step "and pays by card: a PaymentIntent for the frozen total"
PAYMENT=$("${CUSTOMER[@]}" -d "{\"hold_id\": \"$HOLD_ID\", \"request_id\": \"$(new_id)\"}" "$ADDR" cinema.payment.v1.PaymentService/CreatePayment)
echo "$PAYMENT"
PAYMENT_ID=$(echo "$PAYMENT" | json 'd["id"]')

step "the card form confirms the card (development: the local Stripe test server)"
"$CINEMA_GRPC" dev pay "$PAYMENT_ID" --card pm_card_visa

step "SyncPayment: the payment succeeded and the hold became a booking"
PAID=$("${CUSTOMER[@]}" -d "{\"payment_id\": \"$PAYMENT_ID\"}" "$ADDR" cinema.payment.v1.PaymentService/SyncPayment)
echo "$PAID"
BOOKING=$(echo "$PAID" | json 'd["booking_id"]')
echo "$PAID" | json '"payment " + d["state"] + ", booking " + d["booking_id"]'

step "the customer's bookings, newest first"
"${CUSTOMER[@]}" -d '{"page_size": 5}' "$ADDR" cinema.booking.v1.BookingService/ListBookings

step "box office (staff): the best 2 adjacent seats held for a customer, sold at the counter for cash"
BEST=$("${CUSTOMER[@]}" -d "{\"showtime_id\": \"$SHOWTIME\", \"count\": 2}" "$ADDR" cinema.booking.v1.BookingService/HoldBestAvailable | json 'd["id"]')
CASH_SALE=$("${ADMIN[@]}" -d "{\"hold_id\": \"$BEST\", \"payment\": \"COUNTER_PAYMENT_CASH\"}" "$ADDR" cinema.booking.v1.BookingService/SellHoldAtCounter)
echo "$CASH_SALE"
CASH_BOOKING=$(echo "$CASH_SALE" | json 'd["id"]')

step "a POS terminal (staff) charges a card-present payment method server-side"
AT_TERMINAL=$("${CUSTOMER[@]}" -d "{\"showtime_id\": \"$SHOWTIME\", \"count\": 1}" "$ADDR" cinema.booking.v1.BookingService/HoldBestAvailable | json 'd["id"]')
"${ADMIN[@]}" -d "{\"hold_id\": \"$AT_TERMINAL\", \"payment_method\": \"pm_card_visa\"}" "$ADDR" cinema.payment.v1.PaymentService/ChargeAtTerminal

step "a partial refund (staff), the payment's audit trail, the whole trail's integrity (admin)"
"${ADMIN[@]}" -d "{\"payment_id\": \"$PAYMENT_ID\", \"amount\": {\"amount_minor\": 500, \"currency_code\": \"EUR\"}, \"reason\": \"goodwill\"}" "$ADDR" cinema.payment.v1.PaymentService/RefundPayment
"${ADMIN[@]}" -d "{\"payment_id\": \"$PAYMENT_ID\"}" "$ADDR" cinema.payment.v1.PaymentService/ListPaymentEvents
"${ADMIN[@]}" -d '{}' "$ADDR" cinema.payment.v1.PaymentService/VerifyAuditTrail

step "reports: the showtime's occupancy, this month's top movies and revenue per day"
"${ADMIN[@]}" -d "{\"showtime_id\": \"$SHOWTIME\"}" "$ADDR" cinema.reports.v1.ReportsService/GetShowtimeOccupancy
MONTH_RANGE="\"start_date\": {\"year\": $YEAR, \"month\": $MONTH, \"day\": 1}, \"end_date\": {\"year\": $YEAR, \"month\": $MONTH, \"day\": $LAST_DAY}"
"${ADMIN[@]}" -d "{\"cinema_id\": \"$CINEMA\", $MONTH_RANGE, \"ranking\": \"RANKING_REVENUE\"}" "$ADDR" cinema.reports.v1.ReportsService/ListTopMovies
"${ADMIN[@]}" -d "{\"cinema_id\": \"$CINEMA\", $MONTH_RANGE}" "$ADDR" cinema.reports.v1.ReportsService/GetRevenueByDay

step "staff overrides: release a customer's hold, cancel a booking (actor and reason recorded)"
HOLD_2=$("${CUSTOMER[@]}" -d "{\"showtime_id\": \"$SHOWTIME\", \"count\": 1}" "$ADDR" cinema.booking.v1.BookingService/HoldBestAvailable | json 'd["id"]')
"${ADMIN[@]}" -d "{\"hold_id\": \"$HOLD_2\", \"reason\": \"customer left the queue\"}" "$ADDR" cinema.booking.v1.BookingService/ForceReleaseHold
"${ADMIN[@]}" -d "{\"booking_id\": \"$BOOKING\", \"reason\": \"sound failure\"}" "$ADDR" cinema.booking.v1.BookingService/ForceCancelBooking

step "a cancelled cash sale is paid back over the counter, and that is recorded"
"${ADMIN[@]}" -d "{\"booking_id\": \"$CASH_BOOKING\", \"reason\": \"customer changed plans\"}" "$ADDR" cinema.booking.v1.BookingService/ForceCancelBooking
"${ADMIN[@]}" -d "{\"booking_id\": \"$CASH_BOOKING\", \"note\": \"cash from till 2\"}" "$ADDR" cinema.booking.v1.BookingService/RecordCounterRefund

step "walk-through complete"
