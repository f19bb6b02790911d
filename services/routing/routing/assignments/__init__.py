"""The assignment, routing's aggregate per complaint: routing, owners, clocks, escalation."""
