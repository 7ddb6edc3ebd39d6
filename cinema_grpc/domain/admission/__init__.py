"""Admission at the door: signed ticket codes, passes, scans and check-in."""
