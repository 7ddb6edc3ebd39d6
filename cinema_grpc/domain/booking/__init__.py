"""Seat holds, bookings with tickets, and the seat availability they produce."""
