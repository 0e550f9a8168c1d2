"""Radiance fields: hash-grid encoding, the field's MLPs and volume rendering.

This package knows nothing of cameras' sampling, teachers or training; it turns rays into a
render dict and points into densities and colours.
"""
