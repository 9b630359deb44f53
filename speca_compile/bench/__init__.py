"""``speca bench``: speed and quality of speculation, measured in one process."""
