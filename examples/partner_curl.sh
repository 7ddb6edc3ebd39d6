#!/usr/bin/env bash
# A partner system buying seats over REST/JSON through the gateway, with curl only:
# register and sign in, find a showtime, look at its seats, hold two, pay by card, see the
# booking, then refund it.
#
#   examples/partner_curl.sh GATEWAY_URL CINEMA_ID [STRIPE_API]
#
# STRIPE_API (a local Stripe test server, e.g. http://127.0.0.1:18420) plays the partner's
# card form: it confirms the PaymentIntent with a test card, as Stripe.js would. Without it
# the script stops once the payment waits for the card, and says how to go on.
set -euo pipefail
R=${1:?gateway URL, e.g. http://127.0.0.1:8080}
CINEMA=${2:?cinema id}
STRIPE=${3:-}
J='Content-Type: application/json'
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }

EMAIL="partner-$RANDOM$RANDOM@example.com"
curl -sf -H "$J" -X POST "$R/v1/users:register" \
  -d "{\"email\": \"$EMAIL\", \"password\": \"a good long password\", \"display_name\": \"Partner\"}" >/dev/null
TOKEN=$(curl -sf -H "$J" -X POST "$R/v1/sessions" \
  -d "{\"email\": \"$EMAIL\", \"password\": \"a good long password\"}" | json 'd["access_token"]')
A="Authorization: Bearer $TOKEN"
echo "signed in as $EMAIL"

SHOWTIME=$(curl -sf "$R/v1/showtimes?cinema_id=$CINEMA&page_size=1" | json 'd["showtimes"][0]["id"]')
SEATS=$(curl -sf "$R/v1/showtimes/$SHOWTIME/seats" \
  | json '",".join(["\"%s\"" % s["seat_id"] for s in d["seats"] if s["state"] == "SEAT_STATE_FREE" and s["kind"] == "SEAT_KIND_STANDARD"][:2])')
echo "showtime $SHOWTIME, free seats picked"

HOLD=$(curl -sf -H "$J" -H "$A" -X POST "$R/v1/showtimes/$SHOWTIME/holds" \
  -d "{\"seat_ids\": [$SEATS], \"request_id\": \"$(python3 -c 'import uuid; print(uuid.uuid4())')\"}")
HOLD_ID=$(echo "$HOLD" | json 'd["id"]')
echo "HOLD $HOLD_ID total $(echo "$HOLD" | json 'd["total"]["amount_minor"]') $(echo "$HOLD" | json 'd["total"]["currency_code"]')"

PAYMENT=$(curl -sf -H "$J" -H "$A" -X POST "$R/v1/holds/$HOLD_ID/payments" -d '{}')
PAYMENT_ID=$(echo "$PAYMENT" | json 'd["id"]')
INTENT=$(echo "$PAYMENT" | json 'd["intent_id"]')
echo "PAYMENT $PAYMENT_ID $(echo "$PAYMENT" | json 'd["state"]')"

if [ -z "$STRIPE" ]; then
  # No card form to play: the partner's customer confirms the card with Stripe.js and the
  # client secret; the hold stays theirs while the payment is in flight.
  echo "WAITING FOR CARD: confirm PaymentIntent $INTENT with Stripe.js (client_secret in the answer above)"
  echo "  (against a local test server: pass its URL as the third argument, or run: cinema-grpc dev pay $PAYMENT_ID)"
  exit 0
fi
curl -sf -u sk_test_local: "$STRIPE/v1/payment_intents/$INTENT" -d payment_method=pm_card_visa >/dev/null
curl -sf -u sk_test_local: -X POST "$STRIPE/v1/payment_intents/$INTENT/confirm" >/dev/null
for _ in $(seq 1 50); do
  STATE=$(curl -sf -H "$A" "$R/v1/payments/$PAYMENT_ID" | json 'd["state"]')
  [ "$STATE" = "PAYMENT_STATE_INITIALIZED" ] || break
  sleep 0.2
done
BOOKING_ID=$(curl -sf -H "$A" "$R/v1/payments/$PAYMENT_ID" | json 'd["booking_id"]')
echo "PAID $STATE booking $BOOKING_ID"
curl -sf -H "$A" "$R/v1/bookings/$BOOKING_ID" | json '"TICKETS " + " ".join(t["seat"]["row_label"] + str(t["seat"]["number"]) for t in d["tickets"])'

REFUND=$(curl -sf -H "$J" -H "$A" -X POST "$R/v1/payments/$PAYMENT_ID:refund" -d '{"reason": "plans changed"}')
echo "REFUNDED $(echo "$REFUND" | json 'd["state"]') $(echo "$REFUND" | json 'd["refunded"]["amount_minor"]')"
