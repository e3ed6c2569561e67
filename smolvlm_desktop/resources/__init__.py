"""Run-time resources: style sheet and icons (package data)."""
