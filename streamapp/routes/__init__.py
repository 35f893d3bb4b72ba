"""HTTP routes, one blueprint (``bp``) per module."""
