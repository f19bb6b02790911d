"""SLA policies and the clock arithmetic over a branch's business calendar."""
