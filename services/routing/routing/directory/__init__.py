"""The organisation directory: branches, departments, staff, escalation chains."""
