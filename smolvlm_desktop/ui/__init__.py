"""The Qt window: views (layout and styling) and controllers (wiring to the worker)."""
