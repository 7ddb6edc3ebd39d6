"""A door scanner on the generated stubs: sign in with a scanner account, fetch the scanner
configuration (public keys, today's showtimes, revoked tickets), verify each scanned code
offline, check it in online, and when the server cannot be reached keep the scan in a queue
that is uploaded (UploadScans) the next time it can.

    python examples/door_scanner.py --server 127.0.0.1:50051 --email door1@example.com \
        --password-stdin --cinema-id <id> --showtime-id <id> --door hall-1 --device tablet-7 \
        --state-dir ./scanner-state CODE [CODE ...] < password.txt

The state dir keeps the last configuration (so codes are still verified while offline) and
the queue of scans waiting to be uploaded.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format, timestamp_pb2

from cinema.admission.v1 import admission_pb2 as apb
from cinema.admission.v1.admission_pb2_grpc import AdmissionServiceStub
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub

# What the server cannot answer in this time, the scanner treats as unreachable.
TIMEOUT = 3.0
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
SIGNED_PREFIX = b"cinema-ticket-code:"


def verify_offline(config: apb.ScannerConfig, showtime_id: str, code: str) -> tuple[bool, str]:
    """(admits, why) from the code alone: signature by a known key, this door's showtime, the
    time window, and the revoked tickets of the configuration. Whether the ticket was already
    used is known only online."""
    text = code.strip().upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
        payload, signature = raw[:-64], raw[-64:]
        key = next((k for k in config.keys if k.key_id == payload[1:5].hex()), None)
        if payload[0] != 1 or key is None:
            return False, "FORGED (unknown key or format)"
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, SIGNED_PREFIX + payload)
    except (ValueError, IndexError, InvalidSignature):
        return False, "FORGED"
    ticket_id, code_showtime = str(uuid.UUID(bytes=payload[5:21])), str(uuid.UUID(bytes=payload[21:37]))
    issue, seat = int.from_bytes(payload[37:39], "big"), payload[40 : 40 + payload[39]].decode()
    if code_showtime != showtime_id:
        return False, f"WRONG_SHOWTIME (seat {seat})"
    revoked = {r.ticket_id: r.valid_issue for r in config.revoked_tickets}
    if ticket_id in revoked and revoked[ticket_id] != issue:
        return False, "CANCELLED" if revoked[ticket_id] == 0 else "SUPERSEDED"
    showtime = next((s for s in config.showtimes if s.showtime_id == showtime_id), None)
    now = datetime.now(UTC)
    if showtime is not None and now < showtime.doors_open_time.ToDatetime(tzinfo=UTC):
        return False, f"TOO_EARLY (seat {seat})"
    if showtime is not None and now >= showtime.end_time.ToDatetime(tzinfo=UTC):
        return False, f"ENDED (seat {seat})"
    return True, f"seat {seat}"


class Scanner:
    def __init__(self, args: argparse.Namespace, channel: grpc.Channel) -> None:
        self.args = args
        self.channel = channel
        self.state = Path(args.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.online = False

    @property
    def admission(self) -> AdmissionServiceStub:
        return AdmissionServiceStub(self.channel)

    def sign_in(self, password: str) -> None:
        try:
            login = IdentityServiceStub(self.channel).Login(
                ipb.LoginRequest(email=self.args.email, password=password), timeout=TIMEOUT
            )
        except grpc.RpcError as error:
            if error.code() not in UNREACHABLE:  # type: ignore[attr-defined]
                raise
            print("server unreachable: working offline")
            return
        self.metadata = (("authorization", f"Bearer {login.access_token}"),)
        self.online = True
        print(f"signed in as {login.user.email}")

    def config(self) -> apb.ScannerConfig:
        """The configuration from the server, kept for offline use; the kept one when offline."""
        path = self.state / "config.json"
        if self.online:
            config = self.admission.GetScannerConfig(
                apb.GetScannerConfigRequest(cinema_id=self.args.cinema_id), metadata=self.metadata, timeout=TIMEOUT
            )
            path.write_text(json_format.MessageToJson(config))
            print(f"config: {len(config.keys)} keys, {len(config.showtimes)} showtimes today")
            return config
        if not path.exists():
            raise SystemExit("offline and no configuration kept yet: connect once first")
        return json_format.Parse(path.read_text(), apb.ScannerConfig())

    def _queue(self) -> list[dict[str, str]]:
        path = self.state / "queue.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def upload_queue(self) -> None:
        queued = self._queue()
        if not queued or not self.online:
            return
        scans = []
        for item in queued:
            scan_time = timestamp_pb2.Timestamp()
            scan_time.FromJsonString(item["scan_time"])
            scans.append(
                apb.OfflineScan(
                    client_scan_id=item["client_scan_id"],
                    showtime_id=item["showtime_id"],
                    code=item["code"],
                    door_id=item["door_id"],
                    scan_time=scan_time,
                )
            )
        try:
            result = self.admission.UploadScans(
                apb.UploadScansRequest(device_id=self.args.device, scans=scans), metadata=self.metadata, timeout=TIMEOUT
            )
        except grpc.RpcError as error:
            if error.code() not in UNREACHABLE:  # type: ignore[attr-defined]
                raise
            print(f"upload failed, {len(queued)} scans stay queued")
            return
        for scan in result.scans:
            line = f"UPLOADED {scan.client_scan_id} {apb.ScanVerdict.Name(scan.verdict)} seat {scan.seat_label}"
            if scan.verdict == apb.SCAN_VERDICT_ALREADY_USED:
                first = scan.first_admission
                line += f" (DUPLICATE: first admitted at door {first.door_id} by {first.device_id})"
            print(line)
        print(f"uploaded {len(result.scans)} scans: {result.admitted} admitted, {result.duplicates} duplicates")
        (self.state / "queue.jsonl").unlink()

    def scan(self, config: apb.ScannerConfig, code: str) -> None:
        admits, why = verify_offline(config, self.args.showtime_id, code)
        print(f"OFFLINE {'OK' if admits else 'REFUSED'} {why}")
        client_scan_id = str(uuid.uuid4())
        if self.online:
            try:
                scan = self.admission.CheckInTicket(
                    apb.CheckInTicketRequest(
                        showtime_id=self.args.showtime_id,
                        code=code,
                        door_id=self.args.door,
                        device_id=self.args.device,
                        client_scan_id=client_scan_id,
                    ),
                    metadata=self.metadata,
                    timeout=TIMEOUT,
                )
            except grpc.RpcError as error:
                if error.code() not in UNREACHABLE:  # type: ignore[attr-defined]
                    raise
                self.online = False
            else:
                line = f"ONLINE {apb.ScanVerdict.Name(scan.verdict)} seat {scan.seat_label}"
                if scan.verdict == apb.SCAN_VERDICT_ALREADY_USED:
                    first = scan.first_admission
                    line += f" (first at door {first.door_id}, {first.admit_time.ToJsonString()})"
                print(line)
                return
        # Offline: the door goes by the offline verdict; every scan is queued, so the server
        # records it (and judges whether the ticket was used elsewhere) once it is reachable.
        item = {
            "client_scan_id": client_scan_id,
            "showtime_id": self.args.showtime_id,
            "code": code,
            "door_id": self.args.door,
            "scan_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        with (self.state / "queue.jsonl").open("a") as queue:
            queue.write(json.dumps(item) + "\n")
        print(f"QUEUED {client_scan_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")
    parser.add_argument("--cinema-id", required=True)
    parser.add_argument("--showtime-id", required=True)
    parser.add_argument("--door", default="main")
    parser.add_argument("--device", default="scanner-1")
    parser.add_argument("--state-dir", default="scanner-state")
    parser.add_argument("codes", nargs="*", help="scanned codes (as a QR reader types them)")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")

    with grpc.insecure_channel(args.server) as channel:
        scanner = Scanner(args, channel)
        scanner.sign_in(password)
        config = scanner.config()
        scanner.upload_queue()
        for code in args.codes:
            scanner.scan(config, code)
        scanner.upload_queue()
    return 0


if __name__ == "__main__":
    sys.exit(main())
