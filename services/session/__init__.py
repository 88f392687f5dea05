"""What a session records and shows: its state, the run recorder, the report and the console views."""
