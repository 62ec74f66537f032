"""Load, SLO and soak tools for `reasonrec serve` (run by hand; loopback targets by default)."""
