"""Client-side privacy mechanisms (differential privacy on what leaves the device)."""
