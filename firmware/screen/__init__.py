"""What the hall sees and hears: screens on the HDMI display and the box's sounds (issue 11)."""
