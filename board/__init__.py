"""The box's hardware seam: board profiles, panel, sensors, camera and audio.

Every part has a real backend and a simulated one, so the firmware runs unchanged on a desk
or in CI.
"""
