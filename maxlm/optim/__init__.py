"""The optimizer (AdamW, schedules) and the update step every gradient task shares."""
